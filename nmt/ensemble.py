"""Several models searching as one: each step scores the mean of their next-token probabilities.

Models trained from different seeds make different errors; averaging their distributions at every
step of the search (not their weights, which would mix unrelated parameters) is the classic
ensemble of NMT systems (e.g. Sutskever et al., 2014; fairseq's EnsembleModel does the same).
Every member must share the vocabulary; each keeps its own memory and decoder state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nmt.decoder import DecoderState, Memory
from nmt.model import OutputSubset, Seq2Seq


@dataclass
class EnsembleMemory:
    members: list[Memory]

    def select(self, indices: torch.Tensor) -> EnsembleMemory:
        return EnsembleMemory([m.select(indices) for m in self.members])


@dataclass
class EnsembleState:
    members: list[DecoderState]

    def select(self, indices: torch.Tensor) -> EnsembleState:
        return EnsembleState([s.select(indices) for s in self.members])


class Ensemble(nn.Module):
    """The search interface of Seq2Seq (encode, decode_step_logits) over several models."""

    def __init__(self, models: Sequence[Seq2Seq]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        sizes = {m.decoder.output.out_features for m in models}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members differ in target vocabulary: {sorted(sizes)}")
        self.models = nn.ModuleList(models)

    def encode(
        self, src: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[EnsembleMemory, EnsembleState]:
        encoded = [model.encode(src, src_lengths) for model in self.models]
        return EnsembleMemory([m for m, _ in encoded]), EnsembleState([s for _, s in encoded])

    def decode_step_logits(
        self,
        tokens: torch.Tensor,
        state: EnsembleState,
        memory: EnsembleMemory,
        subset: OutputSubset | None = None,
    ) -> tuple[torch.Tensor, EnsembleState]:
        """log(mean_m p_m(y | ...)): (B, V), already normalised (search's log_softmax keeps it)."""
        features, state = self.decode_step_features(tokens, state, memory)
        return self.step_scores(features, subset), state

    @property
    def int8_output(self) -> bool:
        return all(model.int8_output for model in self.models)

    def decode_step_features(
        self, tokens: torch.Tensor, state: EnsembleState, memory: EnsembleMemory
    ) -> tuple[torch.Tensor, EnsembleState]:
        """Every member's attentional vectors side by side, (B, A_1 + ... + A_M), and states."""
        features, states = [], []
        for model, member_state, member_memory in zip(
            self.models, state.members, memory.members, strict=True
        ):
            member_features, new_state = model.decode_step_features(
                tokens, member_state, member_memory
            )
            features.append(member_features)
            states.append(new_state)
        return torch.cat(features, dim=1), EnsembleState(states)

    def step_scores(
        self, features: torch.Tensor, subset: OutputSubset | None = None
    ) -> torch.Tensor:
        """The mixed log-probabilities (B, V) of decode_step_features' rows (B, sum A_m)."""
        if subset is not None:
            raise ValueError("a shortlist cuts one model's output layer; not with an ensemble")
        sizes = [model.decoder.output.in_features for model in self.models]
        log_probs = [
            torch.log_softmax(model.step_scores(member_features), dim=-1)
            for model, member_features in zip(
                self.models, features.split(sizes, dim=1), strict=True
            )
        ]
        return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))  # (B, V)
