"""Parallel text from a Hugging Face dataset: the hub copy, or a local copy read the same way.

`datasets.load_dataset` takes a hub id or a local directory; both give the same splits and columns,
so a recipe names the hub id and `--data DIR` (or a mirror root in $NMT_DATA) swaps in a local copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nmt.errors import DataError
from nmt.recipe import DataConfig

MIRROR_ENV = "NMT_DATA"
DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet", ".arrow"}


@dataclass(frozen=True)
class ParallelText:
    """Aligned source and target sentences of one split."""

    source: list[str]
    target: list[str]

    def __len__(self) -> int:
        return len(self.source)


def resolve_location(config: DataConfig, data_dir: str | Path | None = None) -> str:
    """Where to load from: `data_dir` if given, else a copy under $NMT_DATA, else the hub id.

    Under a mirror root, `owner/name` is looked up as `ROOT/owner/name`, then as `ROOT/name`.
    """
    if data_dir is not None:
        path = Path(data_dir)
        if not path.exists():
            raise DataError(f"data directory not found: {path}")
        return str(path)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        for candidate in (
            Path(mirror) / config.dataset,
            Path(mirror) / config.dataset.split("/")[-1],
        ):
            if candidate.is_dir():
                return str(candidate)
    return config.dataset


def _load_dataset_dict(location: str, config: DataConfig):  # -> datasets.DatasetDict
    import datasets  # slow to import (about 2 s): only when data is needed

    datasets.disable_progress_bars()
    if Path(location).is_dir():
        for path in sorted(Path(location).iterdir()):
            if path.is_file() and path.suffix in DATA_SUFFIXES and path.stat().st_size == 0:
                raise DataError(f"data file {path} is empty")
    try:
        loaded = datasets.load_dataset(location, config.config)
    except Exception as exc:  # datasets raises many types (ConnectionError, ValueError, ...)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot load dataset '{location}': {message}"
            + (
                f" (set --data DIR or ${MIRROR_ENV} for a local copy)"
                if "/" in location and not Path(location).exists()
                else ""
            )
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"dataset '{location}' has no named splits")
    return loaded


def _columns(ds, config: DataConfig, split: str) -> tuple[list[str], list[str]]:
    src_lang, tgt_lang = config.source_lang, config.target_lang
    if config.translation_field is not None:
        if config.translation_field not in ds.column_names:
            raise DataError(
                f"split '{split}' has no column '{config.translation_field}' "
                f"(columns: {', '.join(ds.column_names)})"
            )
        pairs = ds[config.translation_field]
        try:
            return [p[src_lang] for p in pairs], [p[tgt_lang] for p in pairs]
        except (KeyError, TypeError):
            raise DataError(
                f"field '{config.translation_field}' of split '{split}' lacks language "
                f"'{src_lang}' or '{tgt_lang}'"
            ) from None
    src_col = config.source_column or src_lang
    tgt_col = config.target_column or tgt_lang
    for col in (src_col, tgt_col):
        if col not in ds.column_names:
            raise DataError(
                f"split '{split}' has no column '{col}' (columns: {', '.join(ds.column_names)})"
            )
    return list(ds[src_col]), list(ds[tgt_col])


def load_splits(
    config: DataConfig, splits: list[str], data_dir: str | Path | None = None
) -> dict[str, ParallelText]:
    """Load the named splits as lists of strings; `None` entries become empty strings."""
    location = resolve_location(config, data_dir)
    loaded = _load_dataset_dict(location, config)
    result = {}
    for split in splits:
        if split not in loaded:
            raise DataError(
                f"dataset '{location}' has no split '{split}' (splits: {', '.join(loaded)})"
            )
        ds = loaded[split]
        limit = {
            config.train_split: config.max_train_examples,
            config.valid_split: config.max_valid_examples,
        }.get(split)
        if limit is not None and limit < len(ds):
            ds = ds.select(range(limit))
        source, target = _columns(ds, config, split)
        if not source:
            raise DataError(f"split '{split}' of dataset '{location}' is empty")
        result[split] = ParallelText(
            [s if s is not None else "" for s in source],
            [t if t is not None else "" for t in target],
        )
    return result
