"""Attentional recurrent decoder with input feeding (Luong et al., 2015).

At step t: h_t = RNN([emb(y_{t-1}); a_{t-1}], h_{t-1});  c_t = attention(h_t, encoder states);
a_t = tanh(W [c_t; h_t]) (the attentional vector);  p(y_t) = softmax(W_out a_t).
Input feeding passes a_{t-1} into the next step, so the decoder must loop over time steps. Without
it the RNN runs over the whole target at once, and attention follows for all steps in one go.
For an LSTM the training loop writes the cell out (`_lstm_input_feeding`): the same maths as calling
nn.LSTM once per step, about 1.6x faster forward + backward; with Luong attention that loop runs as
one autograd Function whose backward is written by hand (nmt.input_feeding), x1.1-1.15 again.

The decoder owns its state: search reorders beams with `state.select(indices)` and never sees h/c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nmt.attention import Attention, LuongAttention
from nmt.dropout import Dropout, dropout_mask
from nmt.embeddings import Embeddings
from nmt.encoder import RNN_CLASSES, EncoderOutput
from nmt.input_feeding import InputFeedingLSTM

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (L, B, Hd), or (h, c) for an LSTM


@dataclass
class Memory:
    """What the decoder attends to; fixed for a source batch."""

    states: torch.Tensor  # (B, S, M)
    keys: torch.Tensor  # (B, S, K) projected once by the attention
    mask: torch.Tensor  # (B, S)

    def select(self, indices: torch.Tensor) -> Memory:
        return Memory(
            self.states.index_select(0, indices),
            self.keys.index_select(0, indices),
            self.mask.index_select(0, indices),
        )


@dataclass
class DecoderState:
    hidden: Hidden
    feed: torch.Tensor | None  # (B, A) attentional vector of the previous step (input feeding)

    def select(self, indices: torch.Tensor) -> DecoderState:
        """Keep/reorder batch rows, e.g. the surviving beams of a search step."""
        if isinstance(self.hidden, tuple):
            hidden: Hidden = tuple(h.index_select(1, indices) for h in self.hidden)  # type: ignore[assignment]
        else:
            hidden = self.hidden.index_select(1, indices)
        feed = None if self.feed is None else self.feed.index_select(0, indices)
        return DecoderState(hidden, feed)


class Decoder(nn.Module):
    def __init__(
        self,
        embeddings: Embeddings,
        attention: Attention,
        cell: str,
        hidden_size: int,
        num_layers: int,
        memory_size: int,
        attentional_size: int,
        vocab_size: int,
        dropout: float,
        input_feeding: bool,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.attention = attention
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.input_feeding = input_feeding
        self.attentional_size = attentional_size
        emb_size = embeddings.table.embedding_dim
        self.rnn = RNN_CLASSES[cell](
            emb_size + (attentional_size if input_feeding else 0),
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        # Bridge: the encoder's final states initialise every decoder layer.
        self.bridge = nn.Linear(memory_size, num_layers * hidden_size)
        self.bridge_cell = (
            nn.Linear(memory_size, num_layers * hidden_size) if cell == "lstm" else None
        )
        self.combine = nn.Linear(memory_size + hidden_size, attentional_size, bias=False)
        self.dropout = Dropout(dropout)
        self.output = nn.Linear(attentional_size, vocab_size, bias=False)
        # False: teacher forcing calls nn.LSTM once per step (the reference loop, kept runnable
        # for tests and benchmarks/run.py).
        self.unrolled_lstm = cell == "lstm"
        # With Luong attention the written-out LSTM runs as one autograd Function with a
        # hand-written backward (nmt.input_feeding). False: through autograd op by op (its
        # reference, kept runnable for tests and benchmarks/run.py).
        self.manual_backward = True
        # Set by nmt.quantize.quantize_int8: search steps run the LSTM written out for int8.
        self.lstm_step: nn.Module | None = None

    def prepare_memory(self, encoded: EncoderOutput) -> Memory:
        return Memory(encoded.states, self.attention.project_keys(encoded.states), encoded.mask)

    def init_state(self, encoded: EncoderOutput) -> DecoderState:
        batch = encoded.final.size(0)

        def layers(x: torch.Tensor) -> torch.Tensor:  # (B, L*Hd) -> (L, B, Hd)
            return (
                torch.tanh(x)
                .view(batch, self.num_layers, self.hidden_size)
                .transpose(0, 1)
                .contiguous()
            )

        hidden: Hidden = layers(self.bridge(encoded.final))
        if self.bridge_cell is not None:
            assert encoded.final_cell is not None
            hidden = (hidden, layers(self.bridge_cell(encoded.final_cell)))
        feed = encoded.final.new_zeros(batch, self.attentional_size) if self.input_feeding else None
        return DecoderState(hidden, feed)

    def _attend(self, outputs: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """RNN outputs (B, T, Hd) -> attentional vectors (B, T, A) and weights (B, T, S).

        Memory may hold one row per K consecutive output rows (the K hypotheses of a source in
        beam search): the hypotheses then act as K more query steps of their source, so the
        memory is neither copied K times nor reordered when the beams are.
        """
        rows, steps = outputs.size(0), outputs.size(1)
        sources = memory.states.size(0)
        query = outputs if rows == sources else outputs.reshape(sources, -1, outputs.size(-1))
        context, weights = self.attention(query, memory.states, memory.keys, memory.mask)
        if rows != sources:  # (N, K*T, .) -> (N*K, T, .)
            context = context.reshape(rows, steps, -1)
            weights = weights.reshape(rows, steps, -1)
        attentional = torch.tanh(self.combine(torch.cat([context, outputs], dim=-1)))
        return self.dropout(attentional), weights

    def step(
        self, tokens: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One step for tokens (B,): logits (B, V), the new state, attention weights (B, S)."""
        attentional, new_state, weights = self.step_attentional(tokens.unsqueeze(1), state, memory)
        return self.output(attentional), new_state, weights

    def step_attentional(
        self, tokens: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One step for tokens (B, 1): the attentional vector (B, A), new state, weights (B, S)."""
        if self.lstm_step is not None:
            outputs, hidden = self.lstm_step(tokens.squeeze(1), state.feed, state.hidden)
        else:
            x = self.embeddings(tokens)  # (B, 1, E)
            if state.feed is not None:
                x = torch.cat([x, state.feed.unsqueeze(1)], dim=-1)
            outputs, hidden = self.rnn(x, state.hidden)  # (B, 1, Hd)
        attentional, weights = self._attend(outputs, memory)
        attentional = attentional.squeeze(1)  # (B, A)
        return (
            attentional,
            DecoderState(hidden, attentional if self.input_feeding else None),
            weights.squeeze(1),
        )

    def forward(self, tgt_in: torch.Tensor, state: DecoderState, memory: Memory) -> torch.Tensor:
        """Teacher forcing over tgt_in (B, T): logits (B, T, V)."""
        return self.output(self.attentional(tgt_in, state, memory))  # one (B*T, A) x (A, V)

    def attentional(
        self, tgt_in: torch.Tensor, state: DecoderState, memory: Memory
    ) -> torch.Tensor:
        """Teacher forcing over tgt_in (B, T), short of the output layer: (B, T, A)."""
        if self.input_feeding and self.unrolled_lstm:
            attentional_all = self._lstm_input_feeding(tgt_in, state, memory)
        elif self.input_feeding:
            steps = []
            for t in range(tgt_in.size(1)):
                attentional, state, _ = self.step_attentional(tgt_in[:, t : t + 1], state, memory)
                steps.append(attentional)
            attentional_all = torch.stack(steps, dim=1)  # (B, T, A)
        else:
            outputs, _ = self.rnn(self.embeddings(tgt_in), state.hidden)  # (B, T, Hd)
            attentional_all, _ = self._attend(outputs, memory)
        return attentional_all

    def _lstm_input_feeding(
        self, tgt_in: torch.Tensor, state: DecoderState, memory: Memory
    ) -> torch.Tensor:
        """Teacher forcing with input feeding, the LSTM written out: attentional vectors (B, T, A).

        nn.LSTM called on one step at a time pays its setup forward and backward at every step.
        Here the embedding part of layer 0's gates is one GEMM for all steps, and each step costs
        one GEMM per layer over [input; h]. Gate order i, f, g, o as in nn.LSTM's weights.
        """
        assert isinstance(state.hidden, tuple) and state.feed is not None
        device = tgt_in.device.type
        if self.manual_backward and isinstance(self.attention, LuongAttention):
            return self._input_feeding_function(self.embeddings(tgt_in), state, memory)
        emb_size = self.embeddings.table.embedding_dim
        weights = []  # per layer: W of [input; h] transposed (I + Hd, 4Hd), bias (4Hd,)
        for layer in range(self.num_layers):
            w_ih = getattr(self.rnn, f"weight_ih_l{layer}")
            w_hh = getattr(self.rnn, f"weight_hh_l{layer}")
            bias = getattr(self.rnn, f"bias_ih_l{layer}") + getattr(self.rnn, f"bias_hh_l{layer}")
            if layer == 0:
                embedded = self.embeddings(tgt_in).transpose(0, 1)  # (T, B, E)
                # unbind, not x_gates[t]: the backward of indexing one step writes its gradient
                # into a zero-filled (T, B, 4Hd) tensor, T times over
                x_gates = F.linear(embedded, w_ih[:, :emb_size], bias).unbind(0)  # T x (B, 4Hd)
                w_ih = w_ih[:, emb_size:]  # the attentional-vector columns
            weights.append((torch.cat([w_ih, w_hh], dim=1).t(), bias))
        if torch.is_autocast_enabled(device):
            # Autocast caches the casts of parameters only: cast these per-forward products
            # once here, not in every step's addmm (and back in every step's backward).
            dtype = torch.get_autocast_dtype(device)
            weights = [(w.to(dtype), bias.to(dtype)) for w, bias in weights]
        return self._input_feeding_loop(x_gates, weights, state, memory)

    def _input_feeding_function(
        self, embedded: torch.Tensor, state: DecoderState, memory: Memory
    ) -> torch.Tensor:
        """`_lstm_input_feeding` as one InputFeedingLSTM call (nmt.input_feeding) on embedded
        (B, T, E), in the autocast dtype under autocast. Its dropout masks are drawn here, one
        tensor for all steps."""
        device = embedded.device.type
        dtype = embedded.dtype
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        batch, steps, _ = embedded.shape
        like = embedded.new_empty((), dtype=dtype)
        out_masks = layer_masks = None
        if self.training and self.dropout.p > 0:
            out_masks = dropout_mask((steps, batch, self.attentional_size), self.dropout.p, like)
        if self.training and self.num_layers > 1 and self.rnn.dropout > 0:
            shape = (self.num_layers - 1, steps, batch, self.hidden_size)
            layer_masks = dropout_mask(shape, self.rnn.dropout, like)
        h0, c0 = state.hidden  # type: ignore[misc]
        with torch.autocast(device, enabled=False):
            return InputFeedingLSTM.apply(
                dtype,
                embedded.transpose(0, 1),
                h0,
                c0,
                state.feed,
                memory.keys,
                memory.states,
                memory.mask,
                self.combine.weight,
                out_masks,
                layer_masks,
                *(
                    getattr(self.rnn, f"{name}_l{layer}")
                    for layer in range(self.num_layers)
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ),
            )

    def _input_feeding_loop(
        self,
        x_gates: tuple[torch.Tensor, ...],
        weights: list[tuple[torch.Tensor, torch.Tensor]],
        state: DecoderState,
        memory: Memory,
    ) -> torch.Tensor:
        """The written-out LSTM step by step through autograd: attentional vectors (B, T, A)."""
        assert isinstance(state.hidden, tuple) and state.feed is not None
        h = list(state.hidden[0].unbind(0))  # per layer (B, Hd)
        c = list(state.hidden[1].unbind(0))
        feed = state.feed  # (B, A)
        steps = []
        for t in range(len(x_gates)):
            x = feed
            for layer, (w, bias) in enumerate(weights):
                base = x_gates[t] if layer == 0 else bias
                gates = torch.addmm(base, torch.cat([x, h[layer]], dim=1), w)  # (B, 4Hd)
                i, f, g, o = gates.chunk(4, dim=1)
                c[layer] = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
                h[layer] = torch.sigmoid(o) * torch.tanh(c[layer])
                x = h[layer]
                if layer < self.num_layers - 1:  # nn.LSTM's dropout between layers
                    x = F.dropout(x, self.rnn.dropout, self.training)
            attentional, _ = self._attend(x.unsqueeze(1), memory)
            feed = attentional.squeeze(1)
            steps.append(feed)
        return torch.stack(steps, dim=1)
