"""Two training speed levers that nmt does not use yet, measured against the default code.

    python benchmarks/train_levers.py --data ../shared/data/multi30k --passes 8

One process builds the performance issue's reference model twice (the same seed) and alternates
passes over the 12 length-bucketed batches of benchmarks/run.py's train phase, in bf16 autocast:
- default: nmt's training step as it is (torch's dropout, torch.optim.Adam);
- levers: dropout masks cut from 64-bit random words (four 16-bit draws per word, compared
  with p x 65,536) instead of `bernoulli_`, and `torch.optim.Adam(fused=True)`.
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
    """F.dropout with a mask from 16-bit slices of random int64 words: p is rounded to 1/65,536."""
    import torch

    if not training or p == 0:
        return x
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    keep = draws >= round(p * 65536) - 32768
    return x * keep.to(x.dtype).mul_(1 / (1 - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=8)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from nmt.batching import make_batch
    from nmt.data import load_splits
    from nmt.model import build_model
    from nmt.recipe import DataConfig, ModelConfig, TokenizerConfig
    from nmt.runtime import limit_primitive_cache, set_threads, tune_allocator
    from nmt.tokenizer import Tokenizer
    from nmt.train import batch_loss

    set_threads(args.threads)
    limit_primitive_cache()
    tune_allocator()
    text = load_splits(DataConfig(max_train_examples=20000), ["train"], args.data)["train"]
    tokenizer = Tokenizer.train(text.source, text.target, TokenizerConfig(vocab_size=8000), 0)
    src, tgt = tokenizer.encode_source(text.source), tokenizer.encode_target(text.target)
    order = sorted(range(len(src)), key=lambda i: (len(src[i]), len(tgt[i])))
    starts = [k * (len(order) - 64) // 11 for k in range(12)]
    batches = [
        make_batch([src[i] for i in order[j : j + 64]], [tgt[i] for i in order[j : j + 64]])
        for j in starts
    ]
    torch_dropout = F.dropout

    def trainer(levers: bool) -> Callable[[Batch], None]:
        config = ModelConfig(
            tie_output=False, tie_embeddings=False, encoder_layers=1, input_feeding=True
        )
        torch.manual_seed(0)
        model = build_model(config, 8000, 8000).train()
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
