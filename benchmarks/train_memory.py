"""Peak RSS and speed of whole `nmt train` processes: allocator, loss path, oneDNN cache.

    python benchmarks/train_memory.py --data ../shared/data/multi30k --steps 300

Four trainings of the multi30k_de_en recipe with a 1-layer encoder (the reference model of the
performance issue, without input feeding), each in its own process: glibc's default malloc
(NMT_SYSTEM_MALLOC=1) or nmt's tuning (nmt.runtime.tune_allocator), and the whole (B, T, V)
logits at once (train.loss_chunk_elements=0) or in chunks (the default); a fifth process lifts
nmt's limit on oneDNN's primitive cache (nmt.runtime.limit_primitive_cache). Prints one table with
the median logged tok/s, the loss at the last step (the same for all up to rounding), peak
RSS, user and system CPU seconds. --parallel runs them all at once (on a machine with the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (label, NMT_SYSTEM_MALLOC, train.loss_chunk_elements, ONEDNN_PRIMITIVE_CACHE_CAPACITY or None
# for nmt's own limit)
CONFIGS = (
    ("system malloc, whole logits", "1", 0, None),
    ("system malloc, chunked loss", "1", 2**21, None),
    ("tuned malloc, whole logits", "0", 0, None),
    ("tuned malloc, chunked loss (default)", "0", 2**21, None),
    ("default, oneDNN's own cache of 1024", "0", 2**21, "1024"),
)


def start(
    args: argparse.Namespace, out: Path, system_malloc: str, chunk: int, cache: str | None
) -> subprocess.Popen:
    command = [
        sys.executable,
        str(ROOT / "cli.py"),
        "train",
        str(ROOT / "recipes" / "multi30k_de_en.yaml"),
        *("--data", str(args.data), "--out", str(out), "--overwrite", "--no-progress"),
        *("--threads", str(args.threads), "--device", "cpu"),
        *("--set", "model.encoder_layers=1", "--set", f"train.max_steps={args.steps}"),
        *("--set", "train.validate_every=100000", "--set", f"train.loss_chunk_elements={chunk}"),
        *("--set", "train.log_every=25"),
    ]
    env = {**os.environ, "NMT_SYSTEM_MALLOC": system_malloc, "HF_DATASETS_OFFLINE": "1"}
    env.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)
    if cache is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = cache
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, out: Path) -> dict:
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    assert proc.stderr is not None
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"training failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][2:]  # skip warm-up
    return {
        "tok_s": statistics.median(rates),
        "loss": [r["train_loss"] for r in records if "train_loss" in r][-1],
        "rss_mb": usage.ru_maxrss / 1024,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--parallel", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {config[0]: Path(tmp) / str(i) for i, config in enumerate(CONFIGS)}
        if args.parallel:
            procs = {label: start(args, outs[label], *rest) for label, *rest in CONFIGS}
            results = {label: finish(proc, outs[label]) for label, proc in procs.items()}
        else:
            for label, *rest in CONFIGS:
                results[label] = finish(start(args, outs[label], *rest), outs[label])
    base = results[CONFIGS[0][0]]["tok_s"]
    print(f"| {'configuration':38} | tok/s | ratio | loss | peak RSS MB | user s | sys s |")
    print(f"| {'-' * 38} | --- | --- | --- | --- | --- | --- |")
    for label, r in results.items():
        print(
            f"| {label:38} | {r['tok_s']:.0f} | x{r['tok_s'] / base:.2f} | {r['loss']:.4f} "
            f"| {r['rss_mb']:.0f} | {r['user_s']:.0f} | {r['sys_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
