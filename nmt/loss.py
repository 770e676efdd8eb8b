"""Label-smoothed cross-entropy over target tokens, padding ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nmt.tokenizer import PAD_ID


def sequence_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Summed loss over real tokens: logits (B, T, V), targets (B, T). Divide by the token count."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=PAD_ID,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


def chunked_output_loss(
    attentional: torch.Tensor,
    targets: torch.Tensor,
    output: nn.Module,
    label_smoothing: float,
    chunk_elements: int,
    backward_scale: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """sequence_loss(output(attentional), targets) without ever holding the (B, T, V) logits.

    The output layer and the loss run over the real (non-padding) target positions in chunks of
    at most `chunk_elements` logits. With `backward_scale`, each chunk is back-propagated at once
    (loss * scale) into a detached copy of the attentional vectors, whose gradient then flows into
    the rest of the model in one call (OpenNMT-py's loss sharding): peak memory holds one chunk's
    logits, and no block is large enough for glibc to serve it from mmap (see
    nmt.runtime.tune_allocator). Returns the summed loss, detached when it has back-propagated.
    """
    mask = targets != PAD_ID  # (B, T)
    rows = attentional[mask]  # (N, A): padding never reaches the output layer
    gold = targets[mask]  # (N,)
    chunk_rows = max(1, chunk_elements // output.weight.size(0))
    leaf = rows.detach().requires_grad_() if backward_scale is not None else rows
    total = rows.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.size(0), chunk_rows):
        with torch.autocast(
            rows.device.type,
            dtype=autocast_dtype or torch.bfloat16,
            enabled=autocast_dtype is not None,
        ):
            logits = output(leaf[start : start + chunk_rows])  # (n, V)
        loss = F.cross_entropy(
            logits.float(),
            gold[start : start + chunk_rows],
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        if backward_scale is not None:
            (loss * backward_scale).backward()
            loss = loss.detach()
        total = total + loss
    if backward_scale is not None and leaf.grad is not None:
        rows.backward(leaf.grad)
    return total
