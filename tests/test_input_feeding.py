"""The input-feeding decoder's hand-written backward (nmt.input_feeding) against autograd."""

import pytest
import torch

from nmt.batching import make_batch
from nmt.input_feeding import InputFeedingLSTM

from .conftest import synthetic_pairs, tiny_model


def _inputs(layers: int, masks: bool, seed: int = 0) -> tuple[list, torch.Tensor]:
    """Random float64 inputs of InputFeedingLSTM (T 3, B 2, S 4, H 3, A 5, M 6, E 2), the
    second source padded at its last position; dropout masks when asked."""
    gen = torch.Generator().manual_seed(seed)
    steps, batch, source, hidden, att, mem, emb = 3, 2, 4, 3, 5, 6, 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    def mask(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) > 0.3).double() / 0.7

    lstm = []
    for layer in range(layers):
        inputs = emb + att if layer == 0 else hidden
        lstm += [rand(4 * hidden, inputs), rand(4 * hidden, hidden)]
        lstm += [rand(4 * hidden), rand(4 * hidden)]
    floats = [
        rand(steps, batch, emb),
        rand(layers, batch, hidden),
        rand(layers, batch, hidden),
        rand(batch, att),
        rand(batch, source, hidden),
        rand(batch, source, mem),
        rand(att, mem + hidden),
        *lstm,
    ]
    source_mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out_masks = mask(steps, batch, att) if masks else None
    layer_masks = mask(layers - 1, steps, batch, hidden) if masks and layers > 1 else None
    return floats, (source_mask, out_masks, layer_masks)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("masks", [False, True])
def test_backward_matches_finite_differences(layers, masks) -> None:
    floats, (source_mask, out_masks, layer_masks) = _inputs(layers, masks)

    def run(emb, h0, c0, feed0, keys, memory, w_combine, *lstm):
        return InputFeedingLSTM.apply(
            torch.float64, emb, h0, c0, feed0, keys, memory, source_mask, w_combine,
            out_masks, layer_masks, *lstm,
        )  # fmt: skip

    assert torch.autograd.gradcheck(run, floats)


def _batch(tokenizer, n=5, seed=2):
    src, tgt = synthetic_pairs(n, seed)
    return make_batch(tokenizer.encode_source(src), tokenizer.encode_target(tgt))


def _outputs_and_grads(model, batch, manual: bool, dtype: torch.dtype | None):
    model.decoder.manual_backward = manual
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        attentional = model.attentional(batch)
    # the comparison means something only if the Function really ran (and the loop did not)
    assert ("InputFeedingLSTM" in type(attentional.grad_fn).__name__) == manual
    (attentional.float() * torch.linspace(-1, 1, attentional.size(-1))).sum().backward()
    return attentional.float(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("score", ["general", "dot"])
def test_model_gradients_match_the_autograd_loop(toy_tokenizer, layers, score) -> None:
    """Through the whole model (encoder, bridge, key projection, embeddings) the Function gives
    the outputs and parameter gradients of the written-out loop through autograd."""
    model = tiny_model(
        toy_tokenizer, decoder_layers=layers, input_feeding=True, luong_score=score,
        decoder_hidden_size=24,
    )  # fmt: skip
    batch = _batch(toy_tokenizer)
    fast, fast_grads = _outputs_and_grads(model, batch, True, None)
    ref, ref_grads = _outputs_and_grads(model, batch, False, None)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-6, rtol=1e-4)


def test_bf16_autocast_matches_the_autograd_loop(toy_tokenizer) -> None:
    """Under bf16 autocast the Function computes in bf16 and returns fp32 parameter gradients
    close to the autograd loop's (which rounds its per-step weight gradients more often)."""
    model = tiny_model(toy_tokenizer, decoder_layers=2, input_feeding=True)
    batch = _batch(toy_tokenizer)
    fast, fast_grads = _outputs_and_grads(model, batch, True, torch.bfloat16)
    ref, ref_grads = _outputs_and_grads(model, batch, False, torch.bfloat16)
    torch.testing.assert_close(fast, ref, atol=0.05, rtol=0.02)
    for name, ref_grad in ref_grads.items():
        assert fast_grads[name].dtype == torch.float32
        scale = float(ref_grad.abs().max()) + 1e-6
        assert float((fast_grads[name] - ref_grad).abs().max()) <= 0.05 * scale, name


def test_dropout_is_applied_in_training_only(toy_tokenizer) -> None:
    """Training draws masks (outputs differ from evaluation; some units are exactly zero);
    evaluation runs without them, as the autograd loop does."""
    model = tiny_model(toy_tokenizer, decoder_layers=2, input_feeding=True, dropout=0.3)
    batch = _batch(toy_tokenizer)
    evaluated = model.eval().attentional(batch)
    model.decoder.manual_backward = False
    torch.testing.assert_close(evaluated, model.attentional(batch), atol=1e-6, rtol=1e-5)
    model.decoder.manual_backward = True
    torch.manual_seed(0)
    trained = model.train().attentional(batch)
    assert not torch.allclose(trained, evaluated)
    assert float((trained == 0).float().mean()) > 0.1
    torch.manual_seed(0)
    torch.testing.assert_close(model.attentional(batch), trained, atol=0, rtol=0)
