"""Token ids -> padded tensors. Training batches are length-bucketed and fill a token budget.

The batch order of an epoch depends only on (seed, epoch), so a resumed run can rebuild it and
continue from the batch index stored in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) source ids, EOS-terminated, PAD-padded
    src_lengths: torch.Tensor  # (B,) on CPU, as pack_padded_sequence wants
    tgt_in: torch.Tensor | None = None  # (B, T) BOS y1 .. yn, padded
    tgt_out: torch.Tensor | None = None  # (B, T) y1 .. yn EOS, padded

    @property
    def size(self) -> int:
        return self.src.size(0)

    @property
    def n_target_tokens(self) -> int:
        assert self.tgt_out is not None
        return int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.src.to(device, non_blocking=True),
            self.src_lengths,
            None if self.tgt_in is None else self.tgt_in.to(device, non_blocking=True),
            None if self.tgt_out is None else self.tgt_out.to(device, non_blocking=True),
        )


def pad(sequences: Sequence[Sequence[int]], value: int = PAD_ID) -> torch.Tensor:
    """(B, max_len) tensor of `sequences` right-padded with `value`."""
    width = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), max(width, 1)), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def make_batch(
    src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]] | None = None
) -> Batch:
    """Source ids must already end in EOS; target ids get BOS/EOS here."""
    lengths = torch.tensor([len(s) for s in src_ids], dtype=torch.long)
    if tgt_ids is None:
        return Batch(pad(src_ids), lengths)
    tgt_in = pad([[BOS_ID, *t] for t in tgt_ids])
    tgt_out = pad([[*t, EOS_ID] for t in tgt_ids])
    return Batch(pad(src_ids), lengths, tgt_in, tgt_out)


class BucketedBatches:
    """Batches of similar-length pairs under a token budget, in a seeded order per epoch.

    A batch of n pairs costs n * max(source length, target length + 1) padded tokens; it is
    closed before that passes `batch_tokens` or n passes `max_sentences`.
    """

    def __init__(
        self,
        src_lengths: Sequence[int],
        tgt_lengths: Sequence[int],
        batch_tokens: int,
        max_sentences: int,
        seed: int,
        pool_batches: int = 100,
    ) -> None:
        self.src_lengths = list(src_lengths)
        self.tgt_lengths = [n + 1 for n in tgt_lengths]  # + EOS/BOS
        self.batch_tokens = batch_tokens
        self.max_sentences = max_sentences
        self.seed = seed
        self.pool_size = max_sentences * pool_batches

    def epoch(self, epoch: int) -> list[list[int]]:
        """Index lists of all batches of `epoch`, in training order."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.src_lengths), generator=gen).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool_size):
            pool = sorted(
                order[start : start + self.pool_size],
                key=lambda i: (self.src_lengths[i], self.tgt_lengths[i]),
            )
            current: list[int] = []
            longest = 0
            for i in pool:
                width = max(longest, self.src_lengths[i], self.tgt_lengths[i])
                if current and (
                    width * (len(current) + 1) > self.batch_tokens
                    or len(current) >= self.max_sentences
                ):
                    batches.append(current)
                    current, width = [], max(self.src_lengths[i], self.tgt_lengths[i])
                current.append(i)
                longest = width
            if current:
                batches.append(current)
        shuffle = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[j] for j in shuffle]
