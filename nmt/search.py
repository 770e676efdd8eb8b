"""Greedy and beam search over a whole batch of sources at once.

Beam search keeps all live hypotheses of all sentences in one (sentences x beam) batch, keeps
2 x beam candidates per step so that hypotheses ending in EOS do not shrink the live beam, puts
finished hypotheses aside, and drops sentences from the batch once they have `beam` finished ones.
The K hypotheses of a sentence share one row of encoder memory. Each step takes the top 2K of
every row first (a sentence's best 2K candidates are among them) and adds the running scores to
those alone. With a shortlist, all of it happens over the candidates' columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nmt.batching import Batch
from nmt.decoder import DecoderState, Memory
from nmt.ensemble import Ensemble, EnsembleMemory, EnsembleState
from nmt.model import OutputSubset, Seq2Seq
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # target ids, without BOS/EOS
    score: float  # sum of log-probabilities, EOS included
    normalized_score: float  # score / length_penalty(len(tokens) + 1)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty (Wu et al., 2016): ((5 + length) / 6) ** alpha; alpha 0 turns it off."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(src_lengths: torch.Tensor, ratio: float, cap: int) -> list[int]:
    """Target tokens allowed before EOS is forced: min(cap, ceil(ratio * source tokens) + 5)."""
    return [min(cap, math.ceil(ratio * int(n)) + 5) for n in src_lengths]


@dataclass(frozen=True)
class _Columns:
    """What the columns of a step's scores stand for: every token, or a shortlist's candidates."""

    subset: OutputSubset | None
    eos: int  # the column of EOS
    forbidden: torch.Tensor  # columns never chosen: PAD and BOS

    @classmethod
    def of(cls, subset: OutputSubset | None, device: torch.device) -> _Columns:
        if subset is None:
            return cls(None, EOS_ID, torch.tensor([PAD_ID, BOS_ID], device=device))
        eos = (subset.ids == EOS_ID).nonzero().view(-1)
        if eos.numel() == 0:
            raise ValueError("an output subset must contain EOS")
        forbidden = ((subset.ids == PAD_ID) | (subset.ids == BOS_ID)).nonzero().view(-1)
        return cls(subset, int(eos[0]), forbidden)

    def tokens(self, columns: torch.Tensor) -> torch.Tensor:
        return columns if self.subset is None else self.subset.ids[columns]


def top_k(values: torch.Tensor, k: int, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """values.topk(k, dim=-1) of an (N, C) tensor, sorted, in about half torch's time for C = 8000.

    The k largest values of a row lie in the k blocks of `block` columns with the largest maxima,
    and a block maximum (amax) is vectorised where topk and max-with-index are not: two small
    top-k's replace one over all C columns (on CPU; elsewhere this is torch.topk). Among tied
    values the column returned may differ.
    """
    n, c = values.shape
    if values.device.type != "cpu" or c % block or c < 4 * k * block:
        return values.topk(k, dim=-1)  # GPUs, small or ragged rows: torch's own is as fast
    blocks = values.view(n, c // block, block)
    chosen = blocks.amax(dim=-1).topk(k, dim=-1).indices  # (N, k) blocks
    inside = blocks.gather(1, chosen.unsqueeze(-1).expand(-1, -1, block)).view(n, k * block)
    top, where = inside.topk(k, dim=-1)  # (N, k)
    return top, chosen.gather(1, where // block) * block + where % block


# Rows of an int8 output layer scored at once. A step's (rows, V) blocks (the product, its int32
# accumulators, the log-probabilities) are int8 search's largest; glibc keeps the heap they grew,
# so peak RSS followed the hypotheses in a batch (README, Benchmarks) until they were bounded here.
OUTPUT_ROWS = 128


def _output_rows(model: Seq2Seq | Ensemble, n: int) -> int:
    """OUTPUT_ROWS for an int8 output layer; all n rows for fp32, whose (V, A) weight each slice
    would read again from memory: in slices of 128 its product and log_softmax took 21 ms per
    320 rows against 16 ms at once, while int8's took 4.8 against 4.6 (README, Benchmarks)."""
    return OUTPUT_ROWS if model.int8_output else max(n, 1)


def _next_candidates(
    model: Seq2Seq | Ensemble,
    tokens: torch.Tensor,
    state: DecoderState | EnsembleState,
    memory: Memory | EnsembleMemory,
    columns: _Columns,
    at_limit: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, DecoderState | EnsembleState]:
    """The `width` best next tokens of each row under search's rules: their log-probabilities
    (N, W) and columns (N, W), sorted, and the new state.

    PAD and BOS are never chosen; rows `at_limit` (N,) may only end. The output layer runs on
    _output_rows rows at a time. torch's fused log_softmax is one pass; a logsumexp
    of the raw scores (amax, sub, exp, sum: four passes) measured slower. On the CPU it overwrites
    the fp32 scores, which nothing reads again: one (rows, C) block less, the same values (the
    kernel reads a row before writing it; tested).
    """
    features, state = model.decode_step_features(tokens, state, memory)  # (N, F)
    rows = _output_rows(model, features.size(0))
    values, picked = [], []
    for start in range(0, features.size(0), rows):
        scores = model.step_scores(features[start : start + rows], columns.subset)
        if scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.is_contiguous():
            log_probs = torch.ops.aten._log_softmax.out(scores, 1, False, out=scores)
        else:
            log_probs = torch.log_softmax(scores, dim=-1)
        log_probs.index_fill_(1, columns.forbidden, float("-inf"))
        ending = at_limit[start : start + rows]
        if bool(ending.any()):
            eos = log_probs[ending, columns.eos].clone()
            log_probs[ending] = float("-inf")
            log_probs[ending, columns.eos] = eos
        top, where = top_k(log_probs, min(width, log_probs.size(-1)))
        values.append(top)
        picked.append(where)
    if len(values) == 1:
        return values[0], picked[0], state
    return torch.cat(values), torch.cat(picked), state


@torch.inference_mode()
def greedy(
    model: Seq2Seq | Ensemble,
    batch: Batch,
    *,
    max_length_ratio: float = 2.0,
    max_length: int = 256,
    length_penalty_alpha: float = 0.0,
    subset: OutputSubset | None = None,
) -> list[Hypothesis]:
    """Pick the most probable token at every step; the same result as beam search with beam 1."""
    memory, state = model.encode(batch.src, batch.src_lengths)
    size = batch.size
    device = batch.src.device
    limits = torch.tensor(
        max_output_lengths(batch.src_lengths, max_length_ratio, max_length), device=device
    )
    steps = int(limits.max()) + 1
    output = torch.full((size, steps), PAD_ID, dtype=torch.long, device=device)  # (B, T)
    scores = torch.zeros(size, device=device)
    lengths = torch.zeros(size, dtype=torch.long, device=device)
    active = torch.arange(size, device=device)  # rows still decoding; finished rows leave
    tokens = torch.full((size,), BOS_ID, dtype=torch.long, device=device)
    columns = _Columns.of(subset, device)
    for t in range(steps):
        best, column, state = _next_candidates(
            model, tokens, state, memory, columns, limits[active] <= t, 1
        )
        best, column = best.squeeze(1), column.squeeze(1)  # (N,)
        tokens = columns.tokens(column)
        output[active, t] = tokens
        scores[active] += best
        lengths[active] += 1
        ended = tokens == EOS_ID
        if bool(ended.any()):
            keep = (~ended).nonzero().view(-1)
            if keep.numel() == 0:
                break
            active, tokens = active[keep], tokens[keep]
            state, memory = state.select(keep), memory.select(keep)
    hypotheses = []
    for row, length, score in zip(output.tolist(), lengths.tolist(), scores.tolist(), strict=True):
        out = row[: length - 1]  # drop EOS
        hypotheses.append(
            Hypothesis(out, score, score / length_penalty(length, length_penalty_alpha))
        )
    return hypotheses


@torch.inference_mode()
def beam_search(
    model: Seq2Seq | Ensemble,
    batch: Batch,
    *,
    beam_size: int = 5,
    n_best: int = 1,
    length_penalty_alpha: float = 0.6,
    max_length_ratio: float = 2.0,
    max_length: int = 256,
    subset: OutputSubset | None = None,
) -> list[list[Hypothesis]]:
    """The `n_best` hypotheses of every source in `batch`, best first by normalized score.

    `subset` restricts the output vocabulary (a shortlist); None scores every token.
    """
    if beam_size < 1:
        raise ValueError(f"beam size must be at least 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n-best must lie between 1 and the beam size ({beam_size}), got {n_best}")
    k = beam_size
    device = batch.src.device
    memory, state = model.encode(batch.src, batch.src_lengths)
    # Rows i*B .. i*B+B-1 are the B hypotheses of sentence i; they share its memory (N, S, M).
    # All K beams start as the same BOS, so the first step scores one row per sentence (B = 1)
    # and its best candidates fill the K beams: 1/K of a step's work where K copies did the same.
    limits_all = torch.tensor(
        max_output_lengths(batch.src_lengths, max_length_ratio, max_length), device=device
    )

    active = torch.arange(batch.size, device=device)  # original index of each live sentence
    scores = torch.zeros((batch.size, 1), device=device)  # (N, B): B = 1 beam at first
    history = torch.empty((batch.size, 0), dtype=torch.long, device=device)  # (N*B, t)
    prev = torch.full((batch.size,), BOS_ID, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch.size)]

    columns = _Columns.of(subset, device)
    for t in range(int(limits_all.max()) + 1):
        n, beams = scores.shape  # B = 1 at the first step, K after it
        # A sentence's best 2K continuations are among the best 2K of each of its K rows, so the
        # running scores are added to (N*K, 2K) values, not to (N*K, C).
        row_scores, row_columns, state = _next_candidates(
            model,
            prev,
            state,
            memory,
            columns,
            (limits_all[active] <= t).repeat_interleave(beams),
            2 * k,
        )  # (N*B, W)
        if beams * row_scores.size(-1) < k:  # a first step over fewer columns than beams:
            pad = k - row_scores.size(-1)  # impossible candidates fill the other beams
            row_scores = torch.nn.functional.pad(row_scores, (0, pad), value=float("-inf"))
            row_columns = torch.nn.functional.pad(row_columns, (0, pad), value=columns.eos)
        width = row_scores.size(-1)
        candidates = (scores.view(-1, 1) + row_scores).view(n, beams * width)
        top_scores, top_index = candidates.topk(min(2 * k, beams * width), dim=-1)  # (N, 2K)
        top_beam = top_index // width
        top_token = columns.tokens(row_columns.view(n, beams * width).gather(1, top_index))
        is_eos = (top_token == EOS_ID) & torch.isfinite(top_scores)

        # Hypotheses ending here, among the first K candidates, are set aside.
        # One transfer to Python per step, not four tensor reads per hypothesis that ends.
        ending_i, ending_j = is_eos[:, :k].nonzero().unbind(1)
        if ending_i.numel():
            ending_rows = ending_i * beams + top_beam[ending_i, ending_j]
            for sentence, score, tokens in zip(
                active[ending_i].tolist(),
                top_scores[ending_i, ending_j].tolist(),
                history.index_select(0, ending_rows).tolist(),
                strict=True,
            ):
                if len(finished[sentence]) < k:
                    normalized = score / length_penalty(len(tokens) + 1, length_penalty_alpha)
                    finished[sentence].append(Hypothesis(tokens, score, normalized))

        # The best K candidates that do not end continue.
        alive_scores, pick = torch.where(is_eos, float("-inf"), top_scores).topk(
            k, dim=-1
        )  # (N, K)
        rows = torch.arange(n, device=device).unsqueeze(1) * beams + top_beam.gather(1, pick)
        rows = rows.view(-1)  # (N*K,) the row each continuing hypothesis extends
        next_tokens = top_token.gather(1, pick).view(-1)
        history = torch.cat([history.index_select(0, rows), next_tokens.unsqueeze(1)], dim=1)
        state = state.select(rows)
        scores, prev = alive_scores, next_tokens

        still = torch.tensor(
            [len(finished[int(s)]) < k for s in active.tolist()], dtype=torch.bool, device=device
        ) & torch.isfinite(alive_scores).any(dim=1)
        if not bool(still.any()):
            break
        if not bool(still.all()):
            keep = still.nonzero().view(-1)
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            active, scores = active[keep], scores[keep]
            history, prev = history.index_select(0, keep_rows), prev.index_select(0, keep_rows)
            state, memory = state.select(keep_rows), memory.select(keep)

    empty = Hypothesis([], float("-inf"), float("-inf"))  # only if every candidate was impossible
    return [
        sorted(f, key=lambda h: h.normalized_score, reverse=True)[:n_best] or [empty]
        for f in finished
    ]
