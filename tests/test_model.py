import pytest
import torch

from nmt.batching import make_batch
from nmt.errors import RecipeError
from nmt.model import build_model
from nmt.recipe import ModelConfig
from nmt.tokenizer import BOS_ID

from .conftest import synthetic_pairs, tiny_model

CONFIGS = [
    {"cell": cell, "attention": att, "input_feeding": feed}
    for cell in ("lstm", "gru", "rnn")
    for att in ("luong", "bahdanau")
    for feed in (True, False)
]


def _batch(tokenizer, n=4, seed=0):
    src, tgt = synthetic_pairs(n, seed)
    return make_batch(tokenizer.encode_source(src), tokenizer.encode_target(tgt))


@pytest.mark.parametrize("changes", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_teacher_forcing_equals_step_by_step(toy_tokenizer, changes) -> None:
    """forward() (looped or fused over time) must match decoding one step at a time."""
    model = tiny_model(toy_tokenizer, encoder_layers=2, decoder_layers=2, **changes)
    batch = _batch(toy_tokenizer)
    logits = model(batch)  # (B, T, V)
    assert logits.shape == (*batch.tgt_in.shape, toy_tokenizer.target_vocab_size)
    memory, state = model.encode(batch.src, batch.src_lengths)
    for t in range(batch.tgt_in.size(1)):
        step_logits, state, _ = model.decoder.step(batch.tgt_in[:, t], state, memory)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "changes", CONFIGS[::3], ids=lambda c: "-".join(str(v) for v in c.values())
)
def test_padding_does_not_change_results(toy_tokenizer, changes) -> None:
    model = tiny_model(toy_tokenizer, **changes)
    src, tgt = synthetic_pairs(6, seed=3)
    s_ids, t_ids = toy_tokenizer.encode_source(src), toy_tokenizer.encode_target(tgt)
    together = model(make_batch(s_ids, t_ids))
    for i in range(len(src)):
        alone = model(make_batch([s_ids[i]], [t_ids[i]]))[0]
        torch.testing.assert_close(together[i, : alone.size(0)], alone, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer, dropout=0.5, word_dropout=0.3)
    batch = _batch(toy_tokenizer)
    model.eval()
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    assert not torch.allclose(model(batch), model(batch))


def test_tied_weights(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer, tie_embeddings=True, tie_output=True)
    assert model.decoder.output.weight is model.decoder.embeddings.table.weight
    assert model.encoder.embeddings.table is model.decoder.embeddings.table
    untied = tiny_model(toy_tokenizer, tie_output=False)
    assert untied.decoder.output.weight is not untied.decoder.embeddings.table.weight


def test_gradients_reach_every_parameter(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer).train()
    batch = _batch(toy_tokenizer)
    model(batch).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_bad_architectures() -> None:
    with pytest.raises(RecipeError, match="luong_score"):
        build_model(
            ModelConfig(luong_score="dot", encoder_hidden_size=8, decoder_hidden_size=10), 50, 50
        )
    with pytest.raises(RecipeError, match="tie_embeddings"):
        build_model(ModelConfig(tie_embeddings=True), 50, 60)


def test_decode_step_gives_log_probabilities(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer)
    batch = _batch(toy_tokenizer)
    memory, state = model.encode(batch.src, batch.src_lengths)
    log_probs, _ = model.decode_step(torch.full((batch.size,), BOS_ID), state, memory)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(batch.size))


@pytest.mark.parametrize("layers", [1, 2])
def test_unrolled_lstm_matches_reference_loop(toy_tokenizer, layers) -> None:
    """The written-out LSTM of teacher forcing == nn.LSTM once per step: outputs and gradients."""
    model = tiny_model(toy_tokenizer, decoder_layers=layers, input_feeding=True).eval()
    batch = _batch(toy_tokenizer, n=5, seed=2)
    results = []
    for unrolled in (True, False):
        model.decoder.unrolled_lstm = unrolled
        model.zero_grad()
        logits = model(batch)
        logits.logsumexp(-1).sum().backward()
        results.append((logits, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4)


def test_unrolled_lstm_under_bf16_autocast_matches_reference_loop(toy_tokenizer) -> None:
    """Under bf16 autocast the written-out LSTM casts its step weights once per forward; outputs
    and gradients must still match nn.LSTM once per step to bf16 precision."""
    model = tiny_model(toy_tokenizer, decoder_layers=2, input_feeding=True).eval()
    batch = _batch(toy_tokenizer, n=5, seed=2)
    results = []
    for unrolled in (True, False):
        model.decoder.unrolled_lstm = unrolled
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch)
        logits.float().logsumexp(-1).sum().backward()
        results.append((logits.float(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast, ref, atol=0.05, rtol=0.02)
    for name in ref_grads:
        assert fast_grads[name].dtype == torch.float32
        scale = float(ref_grads[name].abs().max()) + 1e-6
        assert float((fast_grads[name] - ref_grads[name]).abs().max()) <= 0.05 * scale, name


@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_hypotheses_share_their_source_memory(toy_tokenizer, attention) -> None:
    """Beam search keeps one memory row per source for its K hypotheses: the step must equal
    the step over memory copied K times."""
    model = tiny_model(toy_tokenizer, attention=attention, seed=5)
    batch = _batch(toy_tokenizer, n=3, seed=4)
    k = 4
    memory, state = model.encode(batch.src, batch.src_lengths)
    tile = torch.arange(batch.size).repeat_interleave(k)
    state = state.select(tile)
    tokens = torch.randint(4, toy_tokenizer.target_vocab_size, (batch.size * k,))
    shared, _ = model.decode_step(tokens, state, memory)
    tiled, _ = model.decode_step(tokens, state, memory.select(tile))
    torch.testing.assert_close(shared, tiled)
