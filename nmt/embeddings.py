"""Token embeddings with word dropout and embedding dropout."""

from __future__ import annotations

import torch
from torch import nn

from nmt.dropout import Dropout
from nmt.tokenizer import PAD_ID, UNK_ID


class Embeddings(nn.Module):
    """ids (B, T) -> vectors (B, T, E).

    Word dropout (Sennrich et al., 2016) replaces whole input tokens by <unk> during training, so
    the model learns not to lean on any one token; embedding dropout then drops single units.
    """

    def __init__(self, vocab_size: int, size: int, dropout: float, word_dropout: float) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, size, padding_idx=PAD_ID)
        self.dropout = Dropout(dropout)
        self.word_dropout = word_dropout

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training and self.word_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.word_dropout
            ids = ids.masked_fill(drop & (ids != PAD_ID), UNK_ID)
        return self.dropout(self.table(ids))
