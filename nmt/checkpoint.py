"""Self-contained checkpoints: weights, resolved recipe and tokenizer (and, for resuming, the
optimizer, schedule, data position and RNG states). Written atomically: a kill at any moment
leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from nmt.errors import CheckpointError, NmtError
from nmt.model import Seq2Seq, build_model
from nmt.recipe import Recipe, from_dict
from nmt.tokenizer import Tokenizer

FORMAT = "nmt-checkpoint"
VERSION = 1
BEST = "best.pt"
EMA = "ema.pt"  # the moving average of the weights (train.ema_decay), as of the last checkpoint
STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")


def step_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step-{step:08d}.pt"


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Full (resumable) checkpoints of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := STEP_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"cannot write checkpoint {path}: {exc.strerror or exc}"
            ) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files left by a process killed while writing."""
    if run_dir.is_dir():
        for p in run_dir.glob(".*.pt.*.tmp"):
            p.unlink(missing_ok=True)


def build_payload(
    recipe: Recipe,
    tokenizer: Tokenizer,
    model: Seq2Seq,
    step: int,
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "recipe": recipe.to_dict(),
        "tokenizer": tokenizer.state_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": step,
        "metrics": metrics or {},
    }
    if training is not None:
        payload["training"] = training
    return payload


def load_file(path: Path, what: str) -> Any:
    """torch.load of a file we wrote (weights only: no code runs); any failure -> one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
        TypeError,
    ) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable nmt {what} ({first})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None


def read(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file, refusing anything that is not an nmt checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    payload = load_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nmt checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, "
            f"this nmt reads version {VERSION}"
        )
    return payload


def resolve(model_path: str | Path) -> Path:
    """A run directory means its best.pt (or its newest step checkpoint); a file means itself."""
    path = Path(model_path)
    if path.is_dir():
        if (path / BEST).exists():
            return path / BEST
        steps = step_checkpoints(path)
        if steps:
            return steps[-1]
        raise CheckpointError(f"no checkpoint in directory {path}")
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    return path


def restore_model(
    payload: dict[str, Any], source: str = "checkpoint"
) -> tuple[Recipe, Tokenizer, Seq2Seq]:
    """Rebuild recipe, tokenizer and model from a payload; a mismatch is a CheckpointError."""
    try:
        recipe = from_dict(payload["recipe"])
    except NmtError as exc:
        raise CheckpointError(f"{source} holds an invalid recipe: {exc}") from None
    except KeyError:
        raise CheckpointError(f"{source} holds no recipe") from None
    tokenizer = Tokenizer.from_state_dict(payload.get("tokenizer") or {})
    model = build_model(recipe.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
    load_weights(model, payload.get("model"), source)
    return recipe, tokenizer, model


def load_weights(model: Seq2Seq, state: Any, source: str) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds no model weights")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("different shape", wrong),
            )
            if keys
        )
        raise CheckpointError(f"{source} does not fit this model architecture ({detail})")
    model.load_state_dict(state)


def load_model(model_path: str | Path) -> tuple[Recipe, Tokenizer, Seq2Seq]:
    """Recipe, tokenizer and model of a checkpoint file or run directory. The payload is not
    returned: restore_model copied its weights, and a caller holding it would keep a second
    copy of the model in memory (53 MB for the reference model) through int8 conversion or the
    next ensemble member's loading."""
    path = resolve(model_path)
    return restore_model(read(path), str(path))


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the weights of several checkpoints of one run."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        weights = read(path)["model"]
        if total and set(weights) != set(total):
            raise CheckpointError(f"{path} does not match the other checkpoints being averaged")
        for key, value in weights.items():
            if key in total:
                total[key] += value.float()
            else:
                total[key] = value.float().clone()
    return {k: v / len(paths) for k, v in total.items()}
