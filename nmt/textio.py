"""Line-exact text input and output: one line in, one line out, nothing lost.

Lines are split on "\\n" only (a "\\r" before it is dropped), so that form feeds, U+2028 and
the like stay inside their line. Bytes are decoded line by line so that an error can name its line.
Output files are written beside their destination and renamed into place only when complete.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

from nmt.errors import InputError

# Characters str.splitlines() treats as line ends; none may appear inside an output line.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAK_TABLE = str.maketrans(dict.fromkeys(LINE_BREAKS, " "))


def one_line(text: str) -> str:
    """`text` with every line-break character replaced by a space."""
    return text.translate(_BREAK_TABLE)


def decode_lines(stream: BinaryIO, errors: str = "strict", name: str = "") -> Iterator[str]:
    """Decoded lines of a binary stream, without their line ends; `name` goes into errors."""
    for number, raw in enumerate(stream, start=1):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            yield raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as exc:
            raise InputError(
                f"not valid UTF-8 (byte {exc.start + 1}); use --errors replace to go on",
                number,
                name,
            ) from None


@contextmanager
def open_input(path: str | Path | None) -> Iterator[BinaryIO]:
    """A binary stream: the file at `path`, or stdin for None or '-'."""
    if path is None or str(path) == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"input path is a directory: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        yield handle
    finally:
        handle.close()


def read_text_lines(path: str | Path, errors: str = "strict") -> list[str]:
    with open_input(path) as stream:
        return list(decode_lines(stream, errors, str(path)))


@contextmanager
def open_output(path: str | Path | None) -> Iterator[TextIO]:
    """Text output to stdout, or to a file that appears only once it is complete."""
    if path is None or str(path) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise InputError(f"output path is a directory: {target}")
    if not target.parent.exists():
        raise InputError(f"output directory does not exist: {target.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
