"""Errors the library raises for bad input; the CLI turns each into one stderr line and exit 1."""

from __future__ import annotations

from collections.abc import Iterable


class NmtError(Exception):
    """Base class: a problem the user can fix (bad file, bad key, bad input), not a bug."""


class RecipeError(NmtError):
    """A recipe key that is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, message: str, allowed: Iterable[object] | None = None) -> None:
        self.key = key
        text = f"recipe key '{key}': {message}"
        if allowed is not None:
            text += f" (allowed: {', '.join(str(a) for a in allowed)})"
        super().__init__(text)


class DataError(NmtError):
    """A dataset that cannot be found or lacks a split or column the recipe names."""


class CheckpointError(NmtError):
    """A file that is not an nmt checkpoint, is damaged, or belongs to another model."""


class InputError(NmtError):
    """Input text that cannot be read, for example bytes that are not UTF-8 on a given line."""

    def __init__(self, message: str, line_number: int | None = None, source: str = "") -> None:
        self.line_number = line_number
        prefix = f"{source}: " if source else ""
        prefix += f"line {line_number}: " if line_number is not None else ""
        super().__init__(prefix + message)


class TrainingError(NmtError):
    """Training cannot go on: repeated non-finite losses, a run directory in use, and the like."""
