"""Device, threads, precision and seeding: the process-wide settings a run needs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import sys
from typing import Any

import torch

from nmt.errors import NmtError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NmtError(f"device '{name}' requested but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NmtError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise NmtError(
            f"device '{name}' requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def set_threads(threads: int | None) -> None:
    """None keeps torch's default, which honours OMP_NUM_THREADS."""
    if threads is not None:
        if threads < 1:
            raise NmtError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def share_threads(workers: int) -> None:
    """Split torch's intra-op threads between `workers` threads that each run their own ops."""
    torch.set_num_threads(max(1, torch.get_num_threads() // workers))


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc_function(name: str) -> Any | None:
    """A function of glibc's malloc (mallopt, malloc_trim), or None off Linux/glibc (musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process instead of handing it back to the OS each step.

    glibc serves blocks over 32 MB (a batch's logits, their gradient) with mmap and unmaps them on
    free, so every training step faults those pages in again: 20% of a run's CPU time went to the
    kernel. Serving them from the heap, trimmed only when over 1 GB is free at its top, made 300
    steps 1.34x faster and raised peak RSS from 1.6 to 2.6 GB (README, Benchmarks). No-op off
    glibc or when NMT_SYSTEM_MALLOC=1. Returns whether the settings were applied.
    """
    if os.environ.get("NMT_SYSTEM_MALLOC") == "1":
        return False
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))


# Entries of oneDNN's primitive cache (its default is 1024) and of ideep's cache of oneDNN
# products that torch's bf16 matmuls go through (LRU_CACHE_CAPACITY, also 1024); see
# limit_primitive_cache.
CACHE_CAPACITIES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": 32, "LRU_CACHE_CAPACITY": 16}


def limit_primitive_cache() -> None:
    """Keep oneDNN's caches of compiled kernels small, unless the user sets their variables.

    torch runs nn.LSTM and bf16 products on the CPU through oneDNN, which compiles and caches a
    primitive per input shape. Batches of varying (sentences, length) fill its 1,024 entries with
    one each: peak RSS of a Multi30k training grew by about 1 GB per 1,000 steps to 5.4 GB. Too
    few entries cost time instead: with 16, a bf16 step of the reference model on an AMX Xeon
    compiled its products again and again (3,300 tok/s); with 32, 4,700 tok/s at 980 MB peak
    RSS over 300 steps (README, Benchmarks). ideep, torch's oneDNN wrapper, keeps a per-shape
    cache of its own (LRU_CACHE_CAPACITY) that took bf16 training to 1.85 GB over a whole
    recipe; with 16 entries, 0.87 GB, flat, at the same speed. Both libraries read their
    variable when they first build a primitive, so this must run before the first LSTM call or
    bf16 product.
    """
    for name, capacity in CACHE_CAPACITIES.items():
        os.environ.setdefault(name, str(capacity))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc malloc_trim), wherever they lie.

    With the tuned allocator nothing is returned on its own, so what a phase frees (SentencePiece
    training, the tokenized corpus's temporaries) would stay resident for the whole run. Returns
    whether glibc released anything; False off glibc.
    """
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    return bool(malloc_trim(0))


def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far in MB; None where `resource` is missing."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
