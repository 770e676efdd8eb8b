"""Train the members of an ensemble side by side: one process per member, the threads shared out.

A recipe with `train.ensemble: N` trains N models that differ only in their seed (seed, seed+1,
...), each in RUN/member-K as an ordinary run, on one tokenizer trained once in RUN. On a small CPU
this costs less than N times one model: the recurrent steps' small matrix products keep a second
thread poorly busy, so two one-thread trainings on 2 cores make more tokens/s together than one
two-thread training (recipes/README.md, "An ensemble of two").

Each member runs in a spawned process of its own process group: a Ctrl-C at the terminal reaches
this process alone, which passes the signal on once to every member, so each finishes its step
and writes a checkpoint exactly as a single run does; the same command resumes them all.
Members are spawned (not forked), so a script that trains an ensemble through the Python API must
do it under `if __name__ == "__main__":`, as multiprocessing requires.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nmt import recipe as recipe_mod
from nmt.data import load_splits
from nmt.errors import NmtError, TrainingError
from nmt.recipe import Recipe
from nmt.tokenizer import MODEL_FILES, Tokenizer
from nmt.train import Progress, Trainer, handling_stop_signals

log = logging.getLogger("nmt")


def member_dirs(run_dir: Path, count: int) -> list[Path]:
    return [run_dir / f"member-{k + 1}" for k in range(count)]


def expand_run_dir(path: Path) -> list[Path]:
    """An ensemble's run directory stands for its members' runs (each meaning its best.pt);
    any other path for itself."""
    if not path.is_dir() or (path / "best.pt").exists():
        return [path]
    members = [p for p in path.glob("member-*") if p.is_dir() and p.name[7:].isdigit()]
    return sorted(members, key=lambda p: int(p.name[7:])) or [path]


def member_recipe(rec: Recipe, index: int) -> Recipe:
    """Member `index` (from 0): the recipe with seed + index, as a single-model run."""
    raw = rec.to_dict()
    raw["name"] = f"{rec.name}-member-{index + 1}"
    raw["seed"] = rec.seed + index
    raw["train"]["ensemble"] = 1
    return recipe_mod.from_dict(raw)


def member_threads(threads: int | None, count: int) -> int:
    """Threads per member: the given (or torch's default) count shared out, at least one each."""
    total = threads if threads is not None else torch.get_num_threads()
    if total < count:
        log.warning(
            "%d threads for %d ensemble members: each gets one, the cores are oversubscribed",
            total,
            count,
        )
    return max(1, total // count)


def shared_tokenizer(rec: Recipe, run_dir: Path, data_dir: str | Path | None) -> Tokenizer:
    """The tokenizer in `run_dir`, trained there (with the recipe's seed) on the first call."""
    if Tokenizer.saved_in(run_dir):
        return Tokenizer.load(run_dir)
    text = load_splits(rec.data, [rec.data.train_split], data_dir)[rec.data.train_split]
    log.info(
        "training SentencePiece (%s, %d) on %d sentence pairs, shared by %d ensemble members",
        rec.tokenizer.type,
        rec.tokenizer.vocab_size,
        len(text),
        rec.train.ensemble,
    )
    tokenizer = Tokenizer.train(text.source, text.target, rec.tokenizer, rec.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run_dir)
    return tokenizer


def _stop_if_orphaned(parent: int) -> Callable[[Trainer], None]:
    """A step hook: when the parent process is gone (killed outright, so it passed no signal
    on), stop as a signal would, with a checkpoint, instead of training on unwatched."""

    def check(trainer: Trainer) -> None:
        if os.getppid() != parent and not trainer.stop_request:
            trainer.stop_request.signal_name = "the parent process's exit"
            log.warning("the parent process is gone: stopping after this step")

    return check


def _member_main(
    index: int,
    recipe: dict[str, Any],
    run_dir: str,
    tokenizer: dict[str, bytes | None],
    options: dict[str, Any],
    log_level: int,
    results: Any,
    parent: int,
) -> None:
    """A member process: train one run, report (index, progress or error) on `results`."""
    os.setpgrp()  # terminal signals reach the parent only; it passes them on
    logger = logging.getLogger("nmt")
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[member {index + 1}] %(message)s"))
    handler.setLevel(log_level)
    logger.addHandler(handler)
    logger.propagate = False
    from nmt import api  # the parent imported it; a spawned child imports it here

    try:
        progress = api.train(
            recipe_mod.from_dict(recipe),
            run_dir,
            tokenizer=Tokenizer.from_state_dict(tokenizer),
            progress_bar=False,
            trainer_hook=_stop_if_orphaned(parent),
            **options,
        )
        results.put((index, dataclasses.asdict(progress), None))
    except NmtError as exc:
        results.put((index, None, str(exc)))
    except KeyboardInterrupt:
        results.put((index, None, "interrupted"))


@contextmanager
def _forwarding_signals(processes: list[Any], forwarded: list[int]) -> Iterator[None]:
    """SIGINT/SIGTERM to this process are passed on to the members (which checkpoint and stop);
    each signal passed on is appended to `forwarded`."""

    def forward(signum: int, _frame: object) -> None:
        alive = [p for p in processes if p.is_alive() and p.pid is not None]
        if not alive:
            raise KeyboardInterrupt
        forwarded.append(signum)
        log.warning("%s: passing it on to the ensemble members", signal.Signals(signum).name)
        for process in alive:
            os.kill(process.pid, signum)  # type: ignore[arg-type]

    with handling_stop_signals(forward):
        yield


def train_members(
    rec: Recipe,
    run_dir: Path,
    *,
    data_dir: str | Path | None,
    device: str,
    resume: bool,
    overwrite: bool,
    threads: int | None,
) -> list[Progress]:
    """Train every member of `rec` at once; their Progress, in member order."""
    count = rec.train.ensemble
    if overwrite:
        for name in MODEL_FILES:
            (run_dir / name).unlink(missing_ok=True)
    tokenizer = shared_tokenizer(rec, run_dir, data_dir)
    per_member = member_threads(threads, count)
    options = {
        "data_dir": str(data_dir) if data_dir is not None else None,
        "device": device,
        "resume": resume,
        "overwrite": overwrite,
        "threads": per_member,
    }
    log.info(
        "training %d ensemble members side by side, %d thread(s) each, in %s/member-*",
        count,
        per_member,
        run_dir,
    )
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(
            target=_member_main,
            args=(
                k,
                member_recipe(rec, k).to_dict(),
                str(path),
                tokenizer.state_dict(),
                options,
                log.getEffectiveLevel(),
                results,
                os.getpid(),
            ),
            name=f"member-{k + 1}",
        )
        for k, path in enumerate(member_dirs(run_dir, count))
    ]
    reports: dict[int, tuple[dict[str, Any] | None, str | None]] = {}
    forwarded: list[int] = []
    with _forwarding_signals(processes, forwarded):
        for process in processes:
            process.start()
        while len(reports) < count:
            try:
                index, progress, error = results.get(timeout=5.0)
                reports[index] = (progress, error)
                continue
            except queue.Empty:
                pass
            dead = [k for k, p in enumerate(processes) if k not in reports and not p.is_alive()]
            while dead:  # a member that reported and exited since the wait: read its report
                try:
                    index, progress, error = results.get(timeout=1.0)
                    reports[index] = (progress, error)
                except queue.Empty:
                    break
            for k in dead:
                if k in reports:
                    continue
                code = processes[k].exitcode
                if code is not None and -code in forwarded:
                    # stopped by the signal passed on before its training loop began: it
                    # trained nothing since its last checkpoint, so it resumes from there
                    reports[k] = (None, None)
                else:  # killed, or crashed below Python
                    reports[k] = (None, f"exited with status {code}")
        for process in processes:
            process.join()
    errors = [f"member {k + 1}: {error}" for k, (_, error) in sorted(reports.items()) if error]
    if errors:
        raise TrainingError("; ".join(errors))
    return [Progress(**(reports[k][0] or {})) for k in range(count)]  # unfinished if stopped
