"""Greedy and beam search over a whole batch of sources at once.

Beam search keeps all live hypotheses of all sentences in one (sentences x beam) batch, keeps
2 x beam candidates per step so that hypotheses ending in EOS do not shrink the live beam, puts
finished hypotheses aside, and drops sentences from the batch once they have `beam` finished ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nmt.batching import Batch
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


def _forbid_specials(log_probs: torch.Tensor) -> None:
    log_probs[:, PAD_ID] = float("-inf")
    log_probs[:, BOS_ID] = float("-inf")


def _force_eos(log_probs: torch.Tensor, rows: torch.Tensor) -> None:
    """Rows that reached their length limit may only end."""
    if rows.any():
        eos = log_probs[rows, EOS_ID].clone()
        log_probs[rows] = float("-inf")
        log_probs[rows, EOS_ID] = eos


@torch.inference_mode()
def greedy(
    model: Seq2Seq,
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
    for t in range(steps):
        log_probs, state = model.decode_step(tokens, state, memory, subset)  # (N, V)
        _forbid_specials(log_probs)
        _force_eos(log_probs, limits[active] <= t)
        best, tokens = log_probs.max(dim=-1)
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
    model: Seq2Seq,
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
    tile = torch.arange(batch.size, device=device).repeat_interleave(k)
    memory, state = memory.select(tile), state.select(tile)
    limits_all = torch.tensor(
        max_output_lengths(batch.src_lengths, max_length_ratio, max_length), device=device
    )

    active = torch.arange(batch.size, device=device)  # original index of each live sentence
    scores = torch.full((batch.size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    history = torch.empty((batch.size * k, 0), dtype=torch.long, device=device)  # (N*K, t)
    prev = torch.full((batch.size * k,), BOS_ID, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch.size)]

    for t in range(int(limits_all.max()) + 1):
        n = active.numel()
        log_probs, state = model.decode_step(prev, state, memory, subset)  # (N*K, V)
        vocab = log_probs.size(-1)
        _forbid_specials(log_probs)
        _force_eos(log_probs, (limits_all[active] <= t).repeat_interleave(k))
        candidates = (scores.view(-1, 1) + log_probs).view(n, k * vocab)  # (N, K*V)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # (N, 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = (top_token == EOS_ID) & torch.isfinite(top_scores)

        # Hypotheses ending here, among the first K candidates, are set aside.
        eos_rank_ok = is_eos.clone()
        eos_rank_ok[:, k:] = False
        for i, j in eos_rank_ok.nonzero().tolist():
            sentence = int(active[i])
            if len(finished[sentence]) < k:
                row = i * k + int(top_beam[i, j])
                score = float(top_scores[i, j])
                tokens = history[row].tolist()
                finished[sentence].append(
                    Hypothesis(
                        tokens, score, score / length_penalty(len(tokens) + 1, length_penalty_alpha)
                    )
                )

        # The best K candidates that do not end continue.
        alive_scores, pick = torch.where(is_eos, float("-inf"), top_scores).topk(
            k, dim=-1
        )  # (N, K)
        rows = (torch.arange(n, device=device).unsqueeze(1) * k + top_beam.gather(1, pick)).view(-1)
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
            state, memory = state.select(keep_rows), memory.select(keep_rows)

    empty = Hypothesis([], float("-inf"), float("-inf"))  # only if every candidate was impossible
    return [
        sorted(f, key=lambda h: h.normalized_score, reverse=True)[:n_best] or [empty]
        for f in finished
    ]
