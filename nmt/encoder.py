"""Bidirectional multi-layer recurrent encoder; the cell type (lstm, gru, rnn) is a parameter."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.dropout import Dropout
from nmt.embeddings import Embeddings
from nmt.tokenizer import PAD_ID

RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@dataclass
class EncoderOutput:
    states: torch.Tensor  # (B, S, 2H) top-layer states, both directions concatenated
    mask: torch.Tensor  # (B, S) True at real tokens
    final: torch.Tensor  # (B, 2H) top layer's last forward and first backward hidden state
    final_cell: torch.Tensor | None  # (B, 2H) the same for the LSTM cell state, else None


class Encoder(nn.Module):
    def __init__(
        self,
        embeddings: Embeddings,
        cell: str,
        hidden_size: int,
        num_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.rnn = RNN_CLASSES[cell](
            embeddings.table.embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_dropout = Dropout(dropout)

    @property
    def output_size(self) -> int:
        return 2 * self.hidden_size

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """src (B, S) ids, lengths (B,) on CPU. Packing keeps padding out of the recurrence."""
        embedded = self.embeddings(src)  # (B, S, E)
        packed = pack_padded_sequence(
            embedded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_out, final = self.rnn(packed)
        states, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src.size(1))
        hidden, cell = final if isinstance(final, tuple) else (final, None)

        def top_layer(h: torch.Tensor) -> torch.Tensor:  # (2L, B, H) -> (B, 2H)
            h = h.view(self.num_layers, 2, h.size(1), self.hidden_size)[-1]
            return torch.cat([h[0], h[1]], dim=-1)

        return EncoderOutput(
            states=self.output_dropout(states),
            mask=src != PAD_ID,
            final=top_layer(hidden),
            final_cell=None if cell is None else top_layer(cell),
        )
