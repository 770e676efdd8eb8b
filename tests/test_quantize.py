"""int8 inference: the written-out LSTM step against nn.LSTM, and what quantize_int8 returns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nmt.batching import make_batch
from nmt.quantize import LSTMStep, int8_rows, quantize_int8, tanh_via_sigmoid
from nmt.search import beam_search, greedy

from .conftest import synthetic_pairs, tiny_model


def test_tanh_via_sigmoid_is_tanh() -> None:
    x = torch.cat([torch.linspace(-30, 30, 10_001), torch.tensor([-1e4, 0.0, 1e4])])
    assert torch.allclose(tanh_via_sigmoid(x), torch.tanh(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_step_is_the_decoders_lstm(toy_tokenizer, input_feeding, layers) -> None:
    """Unquantized, the step must compute nn.LSTM's outputs and states for the same tokens,
    to the precision of its fp16 gate table."""
    model = tiny_model(toy_tokenizer, seed=7, input_feeding=input_feeding, decoder_layers=layers)
    decoder = model.decoder
    step = LSTMStep(decoder)
    batch = make_batch(toy_tokenizer.encode_source(synthetic_pairs(6, seed=2)[0]))
    with torch.inference_mode():
        memory, state = model.encode(batch.src, batch.src_lengths)
        tokens = torch.randint(4, toy_tokenizer.target_vocab_size, (batch.size,))
        for _ in range(4):
            x = decoder.embeddings(tokens.unsqueeze(1))
            if state.feed is not None:
                x = torch.cat([x, state.feed.unsqueeze(1)], dim=-1)
            expected, (h, c) = decoder.rnn(x, state.hidden)
            got, (h2, c2) = step(tokens, state.feed, state.hidden)
            for a, b in ((expected, got), (h, h2), (c, c2)):
                assert a.shape == b.shape
                assert torch.allclose(a, b, rtol=0, atol=2e-3)
            _, state, _ = decoder.step_attentional(tokens.unsqueeze(1), state, memory)
            tokens = torch.randint(4, toy_tokenizer.target_vocab_size, (batch.size,))


def test_quantize_int8_copies_and_steps_in_int8(toy_tokenizer) -> None:
    """The model given stays fp32; the copy runs its decoder steps through an int8 LSTMStep and
    searches like the int8 model that keeps torch's LSTM op (int8 outputs move with rounding, so
    scores are compared, not equal)."""
    model = tiny_model(toy_tokenizer, seed=4, decoder_layers=2)
    fast, reference = quantize_int8(model), quantize_int8(model, lstm_step=False)
    assert model.decoder.lstm_step is None and reference.decoder.lstm_step is None
    assert type(model.decoder.output) is nn.Linear
    assert isinstance(fast.decoder.lstm_step, LSTMStep)
    kinds = {type(m).__module__ for m in fast.decoder.lstm_step.modules()}
    assert any("quantized" in k for k in kinds) and nn.Linear not in map(type, fast.modules())
    batch = make_batch(toy_tokenizer.encode_source(synthetic_pairs(8, seed=3)[0]))
    for search in (greedy, lambda m, b: [h[0] for h in beam_search(m, b, beam_size=3)]):
        a, b = search(fast, batch), search(reference, batch)
        assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=2e-3)


def test_quantize_int8_in_place_converts_the_model_given(toy_tokenizer) -> None:
    """inplace=True (what load_translator uses, to hold one fp32 copy less) converts the model
    itself, and it searches exactly as the copy quantize_int8 makes of the same weights."""
    model = tiny_model(toy_tokenizer, seed=4)
    copied = quantize_int8(model)
    converted = quantize_int8(model, inplace=True)
    assert converted is model
    assert isinstance(model.decoder.lstm_step, LSTMStep)
    assert nn.Linear not in map(type, model.modules())
    batch = make_batch(toy_tokenizer.encode_source(synthetic_pairs(8, seed=3)[0]))
    a, b = beam_search(converted, batch, beam_size=3), beam_search(copied, batch, beam_size=3)
    assert [[h.tokens for h in n] for n in a] == [[h.tokens for h in n] for n in b]


def test_quantize_int8_keeps_the_gru_op(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer, seed=4, cell="gru")
    quantized = quantize_int8(model)
    assert quantized.decoder.lstm_step is None
    assert type(quantized.decoder.rnn).__module__.startswith("torch.ao.nn.quantized")
    batch = make_batch(toy_tokenizer.encode_source(synthetic_pairs(4, seed=3)[0]))
    assert len(greedy(quantized, batch)) == 4


def test_int8_rows_are_the_layers_columns_and_unpack_it_once(monkeypatch) -> None:
    """Rows cut from an int8 Linear score exactly as the full layer's columns; the packed weight
    is unpacked on the first cut only (a shortlist cuts rows for every batch)."""
    torch.manual_seed(0)
    layer = quantize_int8(nn.Sequential(nn.Linear(16, 40)))[0]
    x = torch.randn(5, 16)
    full = layer(x)
    unpack = layer.weight
    calls: list[int] = []

    def counted() -> torch.Tensor:
        calls.append(1)
        return unpack()

    monkeypatch.setattr(layer, "weight", counted)
    for ids in ([0, 5, 7], [3, 39], list(range(40))):
        rows = int8_rows(layer, torch.tensor(ids))
        assert torch.equal(rows(x), full[:, ids])
    assert len(calls) == 1
