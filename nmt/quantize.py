"""int8 inference on the CPU: dynamic quantization, and the decoder's LSTM step written out for it.

`quantize_int8` stores every Linear, LSTM and GRU weight in int8; activations are quantized per
product by their own range (torch.ao dynamic quantization). For an LSTM decoder it also replaces
torch's quantized LSTM op in search steps by `LSTMStep`, the same maths with two savings:

- layer 0's gates from the previous token's embedding come from a table, E W_ih^T + b_ih
  precomputed for every vocabulary entry (fp16; V x 4H, 33 MB for 8,000 x 2,048), so a step
  runs one int8 product fewer;
- tanh is computed as 2 sigmoid(2x) - 1: on the CPU, torch 2.13's tanh (Sleef, 1 ulp) measured
  5x slower than its sigmoid on a (128, 512) tensor, 94 against 19 us (benchmarks/kernels.py).

Against the LSTM op they measured x1.07-1.13 for greedy and x1.10-1.27 for beam-5 decoding of
test2016 in three benchmark runs, level in two others, and no gain with two decoding workers
of one thread each (README, Benchmarks).
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from nmt.decoder import Decoder, Hidden


@contextmanager
def _quiet_dynamic_quantization() -> Iterator[None]:
    """torch.ao.quantization is deprecated in favour of the separate torchao package, but still
    ships with torch 2.13 and needs nothing more; its deprecation warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def quantize_int8(model: nn.Module, lstm_step: bool = True, inplace: bool = False) -> nn.Module:
    """A copy of `model` (or, with inplace=True, `model` itself) with int8 Linear and LSTM/GRU
    weights, for CPU inference.

    lstm_step=False keeps torch's quantized LSTM op for decoder steps: the reference path that
    benchmarks/run.py compares against. inplace=True converts `model` itself instead of a copy:
    a translator loading a model for int8 alone saves a second fp32 copy of it (53 MB for the
    reference model) at its peak memory.
    """
    if not inplace:
        model = copy.deepcopy(model)
    decoder = getattr(model, "decoder", None)
    if lstm_step and isinstance(decoder, Decoder) and decoder.cell == "lstm":
        decoder.lstm_step = LSTMStep(decoder)  # its Linear layers are quantized below
    with _quiet_dynamic_quantization():
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8, inplace=True
        )


# Unpacked (weight, bias) of the int8 layers int8_rows has cut rows from. A layer keeps its
# weight packed for fbgemm; weight() and bias() unpack the whole of it on every call (4 ms each
# for the 8,000 x 256 output layer), which a shortlist would otherwise pay twice per batch.
_unpacked: weakref.WeakKeyDictionary[nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = (
    weakref.WeakKeyDictionary()
)


def int8_rows(layer: nn.Module, ids: torch.Tensor) -> nn.Module:
    """Rows `ids` of an int8 dynamic Linear as a layer of their own: the same int8 weights and
    scale, so its outputs equal the full layer's columns `ids`."""
    if layer not in _unpacked:
        _unpacked[layer] = (layer.weight(), layer.bias())
    full_weight, bias = _unpacked[layer]
    weight = full_weight.index_select(0, ids)  # (C, A) int8
    with _quiet_dynamic_quantization():
        rows = torch.ao.nn.quantized.dynamic.Linear(
            weight.size(1), weight.size(0), bias_=bias is not None
        )
        rows.set_weight_bias(weight, None if bias is None else bias.index_select(0, ids))
    return rows


def tanh_via_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1: within 1e-6 of torch.tanh, and several times faster on the
    CPU. Inference only: it writes into its intermediate results."""
    return torch.sigmoid(x * 2).mul_(2).sub_(1)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class LSTMStep(nn.Module):
    """One decoder step of a (multi-layer) LSTM from token ids, for inference.

    The maths of nn.LSTM in eval mode: gates = W_ih x + b_ih + W_hh h + b_hh, in the order
    i, f, g, o. Layer 0's input is [embedding; attentional vector] with input feeding, else the
    embedding alone; the embedding's share of its gates is a table row.
    """

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        lstm = decoder.rnn
        assert isinstance(lstm, nn.LSTM)
        self.hidden_size = lstm.hidden_size
        emb_size = decoder.embeddings.table.embedding_dim
        w_ih0 = lstm.weight_ih_l0.detach()
        embeddings = decoder.embeddings.table.weight.detach()  # (V, E)
        table = torch.empty(embeddings.size(0), w_ih0.size(0), dtype=torch.float16)  # (V, 4H)
        for start in range(0, embeddings.size(0), 1024):  # never all (V, 4H) in fp32 at once
            rows = embeddings[start : start + 1024]
            table[start : start + 1024] = F.linear(rows, w_ih0[:, :emb_size], lstm.bias_ih_l0)
        self.register_buffer("embedding_gates", table)
        # layer 0's attentional-vector columns (input feeding), then layers 1.. over h below
        self.feed = _linear(w_ih0[:, emb_size:], None) if decoder.input_feeding else None
        self.ih = nn.ModuleList(
            _linear(getattr(lstm, f"weight_ih_l{k}").detach(), getattr(lstm, f"bias_ih_l{k}"))
            for k in range(1, lstm.num_layers)
        )
        self.hh = nn.ModuleList(
            _linear(getattr(lstm, f"weight_hh_l{k}").detach(), getattr(lstm, f"bias_hh_l{k}"))
            for k in range(lstm.num_layers)
        )

    def forward(
        self, tokens: torch.Tensor, feed: torch.Tensor | None, hidden: Hidden
    ) -> tuple[torch.Tensor, Hidden]:
        """tokens (B,), feed (B, A) or None, hidden (h, c) each (L, B, H) -> top outputs
        (B, 1, H) and the new (h, c)."""
        assert isinstance(hidden, tuple)
        h_prev, c_prev = hidden
        size = self.hidden_size
        hs, cs = [], []
        x = None
        for layer, hh in enumerate(self.hh):
            if layer == 0:
                gates = self.embedding_gates.index_select(0, tokens).float()  # (B, 4H)
                if self.feed is not None:
                    assert feed is not None
                    gates += self.feed(feed)
            else:
                gates = self.ih[layer - 1](x)
            gates += hh(h_prev[layer])
            gates[:, 2 * size : 3 * size] *= 2  # g's tanh, as a sigmoid of twice its input
            i, f, g, o = torch.sigmoid_(gates).chunk(4, dim=1)
            c = (f * c_prev[layer]).addcmul_(i, g.mul(2).sub_(1))
            x = o * tanh_via_sigmoid(c)
            hs.append(x)
            cs.append(c)
        assert x is not None
        return x.unsqueeze(1), (torch.stack(hs), torch.stack(cs))
