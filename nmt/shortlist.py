"""Lexical shortlist: decode over the target tokens a batch plausibly needs, not all of them.

The output layer is half of a decoding step's FLOPs (8000 x 256 of the reference model's 2 x 4.4
MFLOP a row). For each batch the candidates are the `frequent` most common target tokens plus, for
every source token in the batch, the `per_source` target tokens that co-occur with it most (Dice
coefficient over the training pairs: 2 c(s, t) / (c(s) + c(t)), counting each pair once).
Log-probabilities are normalised over the candidates, and search ranks, picks and normalises in
candidate space (only the chosen ids are mapped back to the vocabulary). Built once per run from its
training data (`nmt shortlist RUN`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.checkpoint import load_file
from nmt.errors import CheckpointError
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

FORMAT = "nmt-shortlist"


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """Ties a shortlist to the vocabulary it was built with."""
    digest = hashlib.sha256()
    for key, blob in sorted(tokenizer.state_dict().items()):
        digest.update(key.encode())
        digest.update(blob or b"")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Shortlist:
    frequent: torch.Tensor  # (F,) target ids, most frequent first
    translations: torch.Tensor  # (Vs, K) target ids by Dice with each source id; -1 = none
    target_vocab_size: int
    fingerprint: str

    def candidates(self, source_ids: torch.Tensor) -> torch.Tensor:
        """Sorted target ids (C,) worth scoring for a batch of source ids (any shape)."""
        sources = torch.unique(source_ids.cpu())
        sources = sources[sources != PAD_ID]
        ids = torch.cat(
            [
                torch.tensor([EOS_ID, UNK_ID]),
                self.frequent,
                self.translations.index_select(0, sources).flatten(),
            ]
        )
        return torch.unique(ids[ids >= 0])  # unique() also sorts

    def to_dict(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "frequent": self.frequent,
            "translations": self.translations,
            "target_vocab_size": self.target_vocab_size,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def load(cls, path: str | Path, tokenizer: Tokenizer) -> Shortlist:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"shortlist not found: {path}")
        payload = load_file(path, "shortlist")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an nmt shortlist (make one with nmt shortlist)")
        if payload["fingerprint"] != tokenizer_fingerprint(tokenizer):
            raise CheckpointError(
                f"{path} was built for another vocabulary than this model's; rebuild it with "
                "nmt shortlist"
            )
        return cls(
            payload["frequent"],
            payload["translations"],
            payload["target_vocab_size"],
            payload["fingerprint"],
        )


def build(
    source_ids: Sequence[Sequence[int]],
    target_ids: Sequence[Sequence[int]],
    tokenizer: Tokenizer,
    frequent: int = 100,
    per_source: int = 10,
) -> Shortlist:
    """Count which target tokens occur with which source tokens in the training pairs."""
    vs, vt = tokenizer.source_vocab_size, tokenizer.target_vocab_size
    pair_keys = []  # s * vt + t for every (s, t) of a pair, each pair once
    source_counts = torch.zeros(vs, dtype=torch.long)
    target_counts = torch.zeros(vt, dtype=torch.long)
    for start in range(0, len(source_ids), 10_000):
        keys = []
        for src, tgt in zip(
            source_ids[start : start + 10_000], target_ids[start : start + 10_000], strict=True
        ):
            s = torch.tensor(sorted(set(src)), dtype=torch.long)
            t = torch.tensor(sorted(set(tgt)), dtype=torch.long)
            source_counts[s] += 1
            target_counts[t] += 1
            keys.append((s.unsqueeze(1) * vt + t.unsqueeze(0)).flatten())
        chunk, counts = torch.unique(torch.cat(keys), return_counts=True)
        pair_keys.append((chunk, counts))
    keys = torch.cat([k for k, _ in pair_keys])
    counts = torch.cat([c for _, c in pair_keys])
    keys, inverse = torch.unique(keys, return_inverse=True)
    joint = torch.zeros(keys.numel(), dtype=torch.long).index_add_(0, inverse, counts)
    s, t = keys // vt, keys % vt
    dice = 2.0 * joint / (source_counts[s] + target_counts[t])
    dice[(t == PAD_ID) | (t == BOS_ID)] = -1.0
    # Per source id, targets by falling Dice: sort by Dice, then stably by source id.
    order = torch.argsort(-dice, stable=True)
    order = order[torch.argsort(s[order], stable=True)]
    s_sorted, t_sorted = s[order], t[order]
    first = torch.searchsorted(s_sorted, torch.arange(vs))
    rank = torch.arange(s_sorted.numel()) - first[s_sorted]
    keep = (rank < per_source) & (dice[order] > 0)
    translations = torch.full((vs, per_source), -1, dtype=torch.long)
    translations[s_sorted[keep], rank[keep]] = t_sorted[keep]
    target_counts[[PAD_ID, BOS_ID]] = -1
    top = torch.argsort(target_counts, descending=True, stable=True)[: min(frequent, vt)]
    return Shortlist(
        top[target_counts[top] > 0], translations, vt, tokenizer_fingerprint(tokenizer)
    )
