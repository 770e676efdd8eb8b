"""Dropout with masks cut from random 64-bit words, and the switch back to torch's dropout.

torch's dropout draws its mask with `bernoulli_`, one draw per element: about 10 ns an element on
these CPUs, some 4% of a training step of the reference model. `dropout_mask` cuts four 16-bit
draws from each random int64 word instead, about 2 ns an element (benchmarks/kernels.py). The
two draw different random numbers, so a recipe trained with one does not follow the other's
trajectory: `train.dropout_masks` chooses (nmt.train), and the recipes whose runs were recorded
with torch's dropout keep it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DropoutMasks = Literal["bits", "bernoulli"]


def dropout_mask(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """A dropout mask, 0 or 1 / (1 - p), in like's dtype and device.

    Each element is a 16-bit slice of a random int64 word, kept when at or above p x 65,536:
    p is rounded to 1/65,536.
    """
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device)
    words.random_(-(2**63), 2**63 - 1)
    draws = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    keep = draws >= round(p * 65536) - 32768
    return keep.to(like.dtype).mul_(1 / (1 - p))


class Dropout(nn.Module):
    """nn.Dropout whose masks come from `dropout_mask` ("bits") or from torch ("bernoulli")."""

    def __init__(self, p: float, masks: DropoutMasks = "bits") -> None:
        super().__init__()
        self.p = p
        self.masks: DropoutMasks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.masks == "bernoulli":
            return F.dropout(x, self.p, True)
        return x * dropout_mask(tuple(x.shape), self.p, x)

    def extra_repr(self) -> str:
        return f"p={self.p}, masks={self.masks}"


def use_dropout_masks(model: nn.Module, masks: DropoutMasks) -> None:
    """Draw every `Dropout` of `model` with `masks`."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.masks = masks
