"""Attention over encoder states: additive (Bahdanau et al., 2015) and multiplicative
(Luong et al., 2015).

Both share one call: `keys = attn.project_keys(memory)` once per source batch (the key projection
does not depend on the decoder step), then `attn(query, memory, keys, mask)` per step or for all
steps at once. Padding positions get weight 0.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, T, Hd) x (B, S, K) -> (B, T, S) unnormalised scores."""
        raise NotImplementedError

    def forward(
        self,
        query: torch.Tensor,  # (B, T, Hd) decoder states
        memory: torch.Tensor,  # (B, S, M) encoder states
        keys: torch.Tensor,  # from project_keys(memory)
        mask: torch.Tensor,  # (B, S) True at real source tokens
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context vectors (B, T, M) and weights (B, T, S) that sum to 1 over the source."""
        scores = self.scores(query, keys).masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        return torch.bmm(weights, memory), weights


class LuongAttention(Attention):
    """score(h_t, h_s) = h_t . W h_s ("general") or h_t . h_s ("dot")."""

    def __init__(self, query_size: int, memory_size: int, score: str = "general") -> None:
        super().__init__()
        if score == "dot" and query_size != memory_size:
            raise ValueError(
                f"dot attention needs equal sizes: decoder {query_size} vs encoder {memory_size}"
            )
        self.key_layer = (
            nn.Linear(memory_size, query_size, bias=False) if score == "general" else None
        )

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory if self.key_layer is None else self.key_layer(memory)  # (B, S, Hd)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)


class BahdanauAttention(Attention):
    """score(h_t, h_s) = v . tanh(W_q h_t + W_k h_s), an MLP over each (target, source) pair."""

    def __init__(
        self, query_size: int, memory_size: int, attention_size: int | None = None
    ) -> None:
        super().__init__()
        attention_size = attention_size or query_size
        self.key_layer = nn.Linear(memory_size, attention_size, bias=False)
        self.query_layer = nn.Linear(query_size, attention_size, bias=False)
        self.energy_layer = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_layer(memory)  # (B, S, A)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self.query_layer(query)  # (B, T, A)
        energy = torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, A)
        return self.energy_layer(energy).squeeze(-1)  # (B, T, S)


def build_attention(kind: str, query_size: int, memory_size: int, luong_score: str) -> Attention:
    if kind == "bahdanau":
        return BahdanauAttention(query_size, memory_size)
    if kind == "luong":
        return LuongAttention(query_size, memory_size, luong_score)
    raise ValueError(f"unknown attention {kind!r}")
