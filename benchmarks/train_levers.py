"""Two training speed levers that nmt does not use yet, measured against the default code.

    python benchmarks/train_levers.py --data ../shared/data/multi30k --passes 8

One process builds the performance issue's reference model twice (the same seed) and alternates
passes over the 12 length-bucketed batches of benchmarks/run.py's train phase, in bf16 autocast:
- default: nmt's training step as it is (torch's dropout, torch.optim.Adam);
- levers: dropout masks cut from 64-bit random words (four 16-bit draws per word, compared
  with p x 65,536; nmt.input_feeding.dropout_mask) instead of `bernoulli_` in torch's dropout
  (embeddings, encoder), and `torch.optim.Adam(fused=True)`.
Both levers change the random numbers or the rounding of a run, so adopting them would move every
recipe's trajectory (README, Benchmarks: "Dropout masks"). Prints tok/s per pass, the medians and
the median ratio. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from nmt.batching import Batch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def word_dropout_mask(
    x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    """F.dropout with nmt.input_feeding's mask from 16-bit slices of random int64 words (p is
    rounded to 1/65,536): what the input-feeding decoder's own dropout already uses."""
    from nmt.input_feeding import dropout_mask

    if not training or p == 0:
        return x
    return x * dropout_mask(tuple(x.shape), p, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=8)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from run import reference_batches, reference_model  # benchmarks/run.py, this script's folder

    from nmt.runtime import limit_primitive_cache, set_threads, tune_allocator
    from nmt.train import batch_loss

    set_threads(args.threads)
    limit_primitive_cache()
    tune_allocator()
    batches = reference_batches(args.data)
    torch_dropout = F.dropout

    def trainer(levers: bool) -> Callable[[Batch], None]:
        model = reference_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=levers or None)

        def step(batch: Batch) -> None:
            F.dropout = word_dropout_mask if levers else torch_dropout  # nn.Dropout calls F.dropout
            batch_loss(model, batch, 0.1, 2**21, torch.bfloat16, batch.n_target_tokens)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    steps = {"default": trainer(False), "levers": trainer(True)}
    for step in steps.values():
        for batch in batches[:3]:
            step(batch)  # warm-up
    tokens = sum(b.n_target_tokens for b in batches)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for k in range(args.passes):
        for name, step in steps.items() if k % 2 == 0 else reversed(steps.items()):
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            rates[name].append(tokens / (time.perf_counter() - start))
    F.dropout = torch_dropout
    print(f"threads {args.threads}, {args.passes} alternating passes of {tokens} target tokens")
    print("| code | median tok/s | passes |\n| --- | --- | --- |")
    for name, values in rates.items():
        passes = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):,.0f} | {passes} |")
    ratios = [a / b for a, b in zip(rates["levers"], rates["default"], strict=True)]
    print(f"median ratio levers / default: x{statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
