"""Single CPU kernels that decide three of nmt's choices, timed in isolation: one table.

    python benchmarks/kernels.py --threads 2

- tanh against sigmoid and nmt.quantize.tanh_via_sigmoid on a (128, 512) tensor: why the int8
  decoder step computes tanh from a sigmoid;
- a dropout mask from `bernoulli_` (what torch's dropout draws) against one cut from 64-bit random
  words (nmt.input_feeding.dropout_mask, the input-feeding decoder's) on a (64, 20, 512) tensor,
  and applying a mask;
- an attention step's matrix-vector product, (64, 1, 512) x (64, 512, 25), in bf16 and fp32: why
  nmt.input_feeding runs attention in fp32 under bf16 autocast.
Medians of 5 timings of N calls each, with nmt's allocator tuning (as `nmt train` runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def median_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(10):
        fn()  # warm-up
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        timings.append((time.perf_counter() - start) / calls)
    return statistics.median(timings) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from nmt.dropout import dropout_mask
    from nmt.quantize import tanh_via_sigmoid
    from nmt.runtime import set_threads, tune_allocator

    set_threads(args.threads)
    tune_allocator()
    step = torch.randn(128, 512)
    states = torch.randn(64, 20, 512)
    half = states.bfloat16()
    shape = tuple(states.shape)
    mask = torch.rand_like(states) < 0.7
    query, keys = torch.randn(64, 1, 512), torch.randn(64, 25, 512).transpose(1, 2)
    query_bf16, keys_bf16 = query.bfloat16(), keys.bfloat16()
    rows = [
        ("torch.tanh, (128, 512)", lambda: torch.tanh(step), 2000),
        ("torch.sigmoid, (128, 512)", lambda: torch.sigmoid(step), 2000),
        ("tanh_via_sigmoid, (128, 512)", lambda: tanh_via_sigmoid(step), 2000),
        ("bernoulli_ mask, (64, 20, 512)", lambda: torch.empty_like(states).bernoulli_(0.7), 100),
        ("bernoulli_ mask, bf16", lambda: torch.empty_like(half).bernoulli_(0.7), 100),
        ("dropout_mask from random words", lambda: dropout_mask(shape, 0.3, states), 100),
        ("dropout_mask from random words, bf16", lambda: dropout_mask(shape, 0.3, half), 100),
        ("apply a mask: x * mask * scale", lambda: states * mask * (1 / 0.7), 100),
        ("attention bmm (64, 1, 512) x (64, 512, 25), bf16", lambda: query_bf16 @ keys_bf16, 2000),
        ("attention bmm, fp32", lambda: query @ keys, 2000),
    ]
    print(f"threads {args.threads}, medians of 5 timings")
    print("| kernel | us per call |\n| --- | --- |")
    for name, fn, calls in rows:
        print(f"| {name} | {median_us(fn, calls):,.1f} |")


if __name__ == "__main__":
    main()
