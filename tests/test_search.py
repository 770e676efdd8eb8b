import math
from itertools import chain
from typing import ClassVar

import pytest
import torch

from nmt import search
from nmt.batching import make_batch
from nmt.decoder import DecoderState, Memory
from nmt.model import OutputSubset
from nmt.quantize import quantize_int8
from nmt.search import beam_search, greedy, length_penalty, max_output_lengths, top_k
from nmt.tokenizer import BOS_ID, EOS_ID

from .conftest import synthetic_pairs, tiny_model

A, B = 4, 5  # two ordinary tokens of the scripted model


class ScriptedModel:
    """A fake model whose next-token probabilities depend on the prefix, so beams can be
    computed by hand. Unscripted prefixes end with probability 0.9."""

    vocab = 6
    int8_output = False
    script: ClassVar[dict[tuple[int, ...], dict[int, float]]] = {
        (): {A: 0.6, B: 0.3, EOS_ID: 0.1},
        (A,): {A: 0.4, B: 0.35, EOS_ID: 0.25},
        (B,): {A: 0.9, B: 0.05, EOS_ID: 0.05},
    }
    default: ClassVar[dict[int, float]] = {EOS_ID: 0.9, A: 0.05, B: 0.05}

    def encode(self, src, lengths):
        n = src.size(0)
        memory = Memory(
            torch.zeros(n, 1, 1), torch.zeros(n, 1, 1), torch.ones(n, 1, dtype=torch.bool)
        )
        return memory, DecoderState(torch.zeros(1, n, 32, dtype=torch.long), None)

    def decode_step_features(self, tokens, state, memory):
        """Its features are its scores (N, V): step_scores passes them through."""
        hidden = state.hidden.clone()  # (1, N, 32): [length, t1, t2, ...]
        out = torch.full((tokens.size(0), self.vocab), math.log(1e-9))
        for row, token in enumerate(tokens.tolist()):
            length = int(hidden[0, row, 0])
            if token != BOS_ID:
                hidden[0, row, 1 + length] = token
                length += 1
                hidden[0, row, 0] = length
            prefix = tuple(hidden[0, row, 1 : 1 + length].tolist())
            for tok, p in self.script.get(prefix, self.default).items():
                out[row, tok] = math.log(p)
        return out, DecoderState(hidden, None)

    def step_scores(self, features, subset=None):
        assert subset is None
        return features.clone()  # search overwrites the scores it is given


def _scripted_batch(n=1):
    return make_batch([[A, A, A, EOS_ID]] * n)


def test_scripted_beam_search_finds_what_greedy_misses() -> None:
    model = ScriptedModel()
    (hyps,) = beam_search(model, _scripted_batch(), beam_size=2, n_best=2, length_penalty_alpha=0.0)
    assert [h.tokens for h in hyps] == [[B, A], [A, A]]
    assert hyps[0].score == pytest.approx(math.log(0.3 * 0.9 * 0.9))
    assert hyps[1].score == pytest.approx(math.log(0.6 * 0.4 * 0.9))
    (g,) = greedy(model, _scripted_batch())
    assert g.tokens == [A, A]
    assert g.score == pytest.approx(math.log(0.6 * 0.4 * 0.9))


def test_first_step_scores_one_row_per_sentence(monkeypatch) -> None:
    """All beams start from BOS, so the first step runs the model on one row per sentence and
    the later steps on K; the scripted beams come out as computed by hand."""
    model = ScriptedModel()
    rows = []
    step = model.decode_step_features

    def counted(tokens, state, memory):
        rows.append(tokens.size(0))
        return step(tokens, state, memory)

    monkeypatch.setattr(model, "decode_step_features", counted)
    found = beam_search(model, _scripted_batch(3), beam_size=2, n_best=2, length_penalty_alpha=0)
    assert rows[0] == 3 and set(rows[1:]) == {6}
    for hyps in found:
        assert [h.tokens for h in hyps] == [[B, A], [A, A]]


def test_beam_wider_than_the_shortlist(toy_tokenizer) -> None:
    """A first step over fewer columns than beams fills the other beams with impossible
    hypotheses; the search still returns n-best lists of the shortlist's tokens."""
    model = tiny_model(toy_tokenizer, seed=4)
    ids = torch.tensor([EOS_ID, 7, 9])
    subset = OutputSubset(ids, model.decoder.output.weight[ids].detach())
    src, _ = synthetic_pairs(4, seed=3)
    batch = make_batch(toy_tokenizer.encode_source(src))
    for hyps in beam_search(model, batch, beam_size=5, n_best=5, subset=subset, max_length=6):
        assert len(hyps) == 5
        assert len({tuple(h.tokens) for h in hyps}) == 5
        assert all(set(h.tokens) <= {7, 9} for h in hyps)
        scores = [h.normalized_score for h in hyps]
        assert scores == sorted(scores, reverse=True) and math.isfinite(scores[0])


def test_scripted_length_penalty() -> None:
    (hyps,) = beam_search(
        ScriptedModel(), _scripted_batch(), beam_size=2, n_best=2, length_penalty_alpha=1.0
    )
    for h in hyps:
        assert h.normalized_score == pytest.approx(h.score / ((5 + len(h.tokens) + 1) / 6))
    assert length_penalty(3, 0.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)


def test_max_length_forces_eos() -> None:
    model = ScriptedModel()
    model.default = {A: 0.95, EOS_ID: 0.05}  # type: ignore[misc]  # would go on for ever
    batch = _scripted_batch()
    limit = max_output_lengths(batch.src_lengths, 1.0, 6)[0]
    assert limit == 6
    (hyps,) = beam_search(model, batch, beam_size=3, max_length_ratio=1.0, max_length=6)
    assert len(hyps[0].tokens) <= 6
    (g,) = greedy(model, batch, max_length_ratio=1.0, max_length=6)
    assert len(g.tokens) == 6


@pytest.mark.parametrize(
    "changes", [{}, {"attention": "bahdanau", "cell": "gru"}, {"input_feeding": False}]
)
def test_beam_one_equals_greedy(toy_tokenizer, changes) -> None:
    model = tiny_model(toy_tokenizer, **changes)
    with torch.no_grad():  # make EOS likely enough that some sentences end early
        model.decoder.output.weight[EOS_ID] *= 3
    src, _ = synthetic_pairs(12, seed=4)
    batch = make_batch(toy_tokenizer.encode_source(src))
    for alpha in (0.0, 0.6):
        g = greedy(model, batch, length_penalty_alpha=alpha)
        b = beam_search(model, batch, beam_size=1, length_penalty_alpha=alpha)
        assert [h.tokens for h in g] == [h[0].tokens for h in b]
        for gh, (bh,) in zip(g, b, strict=True):
            assert gh.score == pytest.approx(bh.score, abs=1e-4)
            assert gh.normalized_score == pytest.approx(bh.normalized_score, abs=1e-4)


def test_n_best_sorted_and_distinct(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer, seed=1)
    src, _ = synthetic_pairs(5, seed=6)
    batch = make_batch(toy_tokenizer.encode_source(src))
    for hyps in beam_search(model, batch, beam_size=4, n_best=4):
        scores = [h.normalized_score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps) == 4


@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_batch_equals_one_by_one(toy_tokenizer, search) -> None:
    """Finished sentences (and greedy rows) leave the batch; the others must not notice."""
    model = tiny_model(toy_tokenizer, seed=2)
    with torch.no_grad():
        model.decoder.output.weight[EOS_ID] *= 3

    def run(batch):  # n-best lists
        if search == "greedy":
            return [[h] for h in greedy(model, batch, length_penalty_alpha=0.6)]
        return beam_search(model, batch, beam_size=3, n_best=2)

    src, _ = synthetic_pairs(9, seed=7)
    ids = toy_tokenizer.encode_source(src)
    together = run(make_batch(ids))
    assert len({len(h[0].tokens) for h in together}) > 1, "rows should end at different steps"
    for i, one in enumerate(ids):
        (alone,) = run(make_batch([one]))
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        for a, t in zip(alone, together[i], strict=True):
            assert a.score == pytest.approx(t.score, abs=1e-4)


@pytest.mark.parametrize("use_subset", [False, True])
def test_next_candidates_in_slices_of_rows_are_the_whole_top_k(
    toy_tokenizer, monkeypatch, use_subset
) -> None:
    """Scored a few rows at a time, with log_softmax written over the scores, a step's
    candidates are those of torch's log_softmax and topk over all rows at once; rows at their
    length limit may only end, and PAD and BOS are never chosen."""
    model = tiny_model(toy_tokenizer, seed=5).eval()
    src, _ = synthetic_pairs(10, seed=9)
    batch = make_batch(toy_tokenizer.encode_source(src))
    memory, state = model.encode(batch.src, batch.src_lengths)
    vocab = model.decoder.output.out_features
    tokens = torch.randint(4, vocab, (batch.size,))
    at_limit = torch.zeros(batch.size, dtype=torch.bool)
    at_limit[[1, 7]] = True
    subset = None
    if use_subset:
        subset = OutputSubset.of(
            model, torch.tensor([0, 1, EOS_ID, 5, 9, 11, vocab - 2, vocab - 1])
        )
    columns = search._Columns.of(subset, batch.src.device)
    with torch.inference_mode():
        expected = torch.log_softmax(model.decode_step_logits(tokens, state, memory, subset)[0], -1)
        expected[:, columns.forbidden] = float("-inf")
        expected[at_limit] = torch.where(
            torch.arange(expected.size(1)) == columns.eos, expected[at_limit], float("-inf")
        )
        want_values, want_columns = expected.topk(4, dim=-1)
        monkeypatch.setattr(search, "_output_rows", lambda model, n: 3)  # slices 3, 3, 3, 1
        values, picked, _ = search._next_candidates(
            model, tokens, state, memory, columns, at_limit, 4
        )
    assert values.shape == (batch.size, 4)
    torch.testing.assert_close(values, want_values, rtol=0, atol=1e-5)
    finite = torch.isfinite(want_values)
    assert torch.equal(picked[finite], want_columns[finite])
    assert picked[1, 0] == columns.eos and not torch.isfinite(values[1, 1:]).any()
    assert not torch.isin(picked[finite], columns.forbidden).any()


def test_search_in_slices_of_rows_equals_search_at_once(toy_tokenizer, monkeypatch) -> None:
    """Beam search and greedy find the same hypotheses however many rows are scored at once;
    only an int8 output layer is scored in slices."""
    assert search._output_rows(tiny_model(toy_tokenizer), 300) == 300
    assert search._output_rows(quantize_int8(tiny_model(toy_tokenizer)), 300) == search.OUTPUT_ROWS
    model = tiny_model(toy_tokenizer, seed=6)
    src, _ = synthetic_pairs(9, seed=8)
    batch = make_batch(toy_tokenizer.encode_source(src))
    found = {}
    for rows in (10_000, 4):
        monkeypatch.setattr(search, "_output_rows", lambda model, n, rows=rows: rows)
        found[rows] = (
            beam_search(model, batch, beam_size=3, n_best=3),
            [[h] for h in greedy(model, batch)],
        )
    for whole, sliced in zip(found[10_000], found[4], strict=True):
        assert [[h.tokens for h in n] for n in whole] == [[h.tokens for h in n] for n in sliced]
        for w, s in zip(chain(*whole), chain(*sliced), strict=True):
            assert w.score == pytest.approx(s.score, abs=1e-4)


def test_bad_arguments(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer)
    batch = make_batch(toy_tokenizer.encode_source(["der hund"]))
    with pytest.raises(ValueError, match="beam size"):
        beam_search(model, batch, beam_size=0)
    with pytest.raises(ValueError, match="n-best"):
        beam_search(model, batch, beam_size=2, n_best=3)


def _teacher_forced_score(model, source, tokens, subset=None) -> float:
    """log p(tokens + EOS | source) under the model, normalised over `subset` if given."""
    batch = make_batch([source], [tokens])
    with torch.no_grad():
        logits = model(batch)[0]  # (T, V)
    if subset is not None:
        allowed = torch.full_like(logits, float("-inf"))
        allowed[:, subset.ids] = 0.0
        logits = logits + allowed
    log_probs = torch.log_softmax(logits, dim=-1)
    return float(log_probs.gather(1, batch.tgt_out[0].unsqueeze(1)).sum())


@pytest.mark.parametrize("use_subset", [False, True])
@pytest.mark.parametrize("changes", [{}, {"attention": "bahdanau", "input_feeding": False}])
def test_hypothesis_scores_are_model_log_probabilities(toy_tokenizer, use_subset, changes) -> None:
    """Search picks per-row top-k before adding running scores and works in candidate space with
    a shortlist: each n-best score must still be the model's log-probability of the hypothesis,
    EOS included (normalised over the shortlist when there is one)."""
    model = tiny_model(toy_tokenizer, seed=3, **changes)
    with torch.no_grad():
        model.decoder.output.weight[EOS_ID] *= 3
    src, _ = synthetic_pairs(6, seed=8)
    ids = toy_tokenizer.encode_source(src)
    batch = make_batch(ids)
    subset = None
    if use_subset:
        keep = torch.arange(0, toy_tokenizer.target_vocab_size, 2)
        keep = torch.unique(torch.cat([keep, torch.tensor([EOS_ID])]))
        subset = OutputSubset(keep, model.decoder.output.weight[keep].detach())
    nbest = beam_search(model, batch, beam_size=3, n_best=3, subset=subset)
    greedy_hyps = greedy(model, batch, subset=subset)
    checked = 0
    for source, hyps, g in zip(ids, nbest, greedy_hyps, strict=True):
        for h in [*hyps, g]:
            if subset is not None:
                assert set(h.tokens) <= set(subset.ids.tolist())
            expected = _teacher_forced_score(model, source, h.tokens, subset)
            assert h.score == pytest.approx(expected, abs=1e-3)
            checked += 1
    assert checked == 6 * 4


def test_output_subset_without_eos_refused(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer)
    batch = make_batch(toy_tokenizer.encode_source(["der hund"]))
    ids = torch.tensor([10, 11, 12])
    with pytest.raises(ValueError, match="EOS"):
        greedy(model, batch, subset=OutputSubset(ids, model.decoder.output.weight[ids].detach()))


@pytest.mark.parametrize(
    "shape,k", [((7, 8000), 10), ((3, 8000), 1), ((5, 4096), 16), ((4, 300), 3)]
)
def test_top_k_equals_torch_topk(shape, k) -> None:
    """The blockwise top-k returns torch.topk's values, sorted, and columns that hold them."""
    gen = torch.Generator().manual_seed(sum(shape) + k)
    values = torch.randn(shape, generator=gen)
    values[0, :] = float("-inf")  # a row at its length limit: one finite value
    values[0, 17] = -3.0
    values[1, 128:192] = 50.0 + torch.arange(64.0)  # all of the best in one block
    expected, _ = values.topk(k, dim=-1)
    got, columns = top_k(values, k)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(values.gather(1, columns), got)
    assert all(len(set(row)) == k for row in columns.tolist())  # k distinct columns a row
