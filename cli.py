"""The `nmt` command line: parses options, calls `nmt.api`, turns errors into one stderr line."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from nmt import api
from nmt.errors import NmtError

app = typer.Typer(
    name="nmt",
    help="Neural machine translation with recurrent networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


class Errors(str, Enum):
    strict = "strict"
    replace = "replace"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of each record (tests swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _setup_logging(level: int = logging.INFO) -> None:
    """Library log records go to stderr as plain lines."""
    logger = logging.getLogger("nmt")
    logger.setLevel(logging.INFO)
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.propagate = False


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _handle_errors(func: F) -> F:
    """Library errors -> one line on stderr and exit 1; a closed stdout pipe -> quiet exit."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NmtError as exc:
            raise _fail(str(exc)) from None
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except MemoryError:
            raise _fail("out of memory") from None

    return wrapper  # type: ignore[return-value]


PRECISION_HELP = (
    "fp32; bf16 autocast (fast only with AMX/AVX512-BF16 or a GPU); "
    "int8 dynamic quantization (CPU)."
)
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key: section.key=value (repeatable)."),
]
Threads = Annotated[
    int | None, typer.Option(help="CPU threads (default: torch's, which honours OMP_NUM_THREADS).")
]
Workers = Annotated[
    int,
    typer.Option(
        help="Batches decoded at once on the CPU, each on threads / workers threads: the same "
        "output, faster with int8 (README, Benchmarks), more memory."
    ),
]
Data = Annotated[
    Path | None,
    typer.Option(
        help="Local copy of the recipe's dataset (a directory datasets.load_dataset reads)."
    ),
]
ModelPaths = Annotated[
    list[Path],
    typer.Argument(
        help="Run directory (uses best.pt) or checkpoint file; several decode as an ensemble."
    ),
]
ShortlistFile = Annotated[
    Path | None,
    typer.Option(help="Score only a lexical shortlist's tokens (from nmt shortlist): faster."),
]
BeamSize = Annotated[
    int | None, typer.Option(help="Beam size; 1 = greedy. Default: the model's recipe.")
]
BatchSize = Annotated[int | None, typer.Option(help="Sentences per decoding batch.")]
MaxHypotheses = Annotated[
    int | None,
    typer.Option(
        help="Hypotheses (sentences x beam) per decoding batch at most: bounds beam search's "
        "memory. Default: the model's recipe."
    ),
]
LengthPenalty = Annotated[float | None, typer.Option(help="GNMT length penalty alpha; 0 = none.")]
MaxLengthRatio = Annotated[
    float | None, typer.Option(help="At most ratio x source tokens + 5 target tokens.")
]


@app.command()
@_handle_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/NAME).")
    ] = None,
    set_: SetOption = None,
    data: Data = None,
    device: Device = "auto",
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start again in a run directory that holds a run.")
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start from this model's weights and tokenizer (fine-tuning)."),
    ] = None,
    threads: Threads = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model from a recipe: SentencePiece, the model, validation BLEU, checkpoints."""
    _setup_logging()
    result = api.train(
        recipe,
        out,
        overrides=set_ or [],
        data_dir=data,
        device=device,
        resume=resume,
        overwrite=overwrite,
        init_from=init_from,
        threads=threads,
        progress_bar=progress,
    )
    if not result.finished:
        raise typer.Exit(0)


@app.command()
@_handle_errors
def translate(
    model: ModelPaths,
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="Input file (default stdin).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (default stdout).")
    ] = None,
    beam_size: BeamSize = None,
    batch_size: BatchSize = None,
    max_hypotheses: MaxHypotheses = None,
    n_best: Annotated[
        int, typer.Option(help="Hypotheses per line; above 1, lines read 'N ||| text ||| score'.")
    ] = 1,
    length_penalty: LengthPenalty = None,
    max_length_ratio: MaxLengthRatio = None,
    max_length: Annotated[int | None, typer.Option(help="Absolute cap on target tokens.")] = None,
    max_source_tokens: Annotated[
        int, typer.Option(help="Longer sources are truncated, with a warning naming the line.")
    ] = 250,
    errors: Annotated[
        Errors,
        typer.Option(help="Non-UTF-8 input: strict = stop with the line number; replace = go on."),
    ] = Errors.strict,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.fp32,
    shortlist: ShortlistFile = None,
    device: Device = "auto",
    threads: Threads = None,
    workers: Workers = 1,
) -> None:
    """Translate text line by line: one output line per input line, in order."""
    _setup_logging(logging.WARNING)
    translator, _ = api.load_translator(
        model,
        device=device,
        precision=precision.value,
        threads=threads,
        workers=workers,
        shortlist=shortlist,
        beam_size=beam_size,
        batch_size=batch_size,
        max_hypotheses=max_hypotheses,
        n_best=n_best,
        length_penalty=length_penalty,
        max_length_ratio=max_length_ratio,
        max_length=max_length,
        max_source_tokens=max_source_tokens,
    )
    api.translate_file(translator, input, output, errors.value)


@app.command()
@_handle_errors
def evaluate(
    model: ModelPaths,
    source: Annotated[Path | None, typer.Option(help="Source text file.")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="Reference translations, one per line.")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="A split of the model recipe's dataset, e.g. test.")
    ] = None,
    data: Data = None,
    beam_size: BeamSize = None,
    batch_size: BatchSize = None,
    max_hypotheses: MaxHypotheses = None,
    length_penalty: LengthPenalty = None,
    max_length_ratio: MaxLengthRatio = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    hypotheses: Annotated[
        Path | None, typer.Option(help="Also write the translations here.")
    ] = None,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.fp32,
    shortlist: ShortlistFile = None,
    device: Device = "auto",
    threads: Threads = None,
    workers: Workers = 1,
) -> None:
    """Translate a test set and score it with sacreBLEU (BLEU, lowercased BLEU, chrF)."""
    _setup_logging(logging.WARNING)
    if (split is None) == (source is None or reference is None):
        raise NmtError("give either --source and --reference, or --split")
    translator, rec = api.load_translator(
        model,
        device=device,
        precision=precision.value,
        threads=threads,
        workers=workers,
        shortlist=shortlist,
        beam_size=beam_size,
        batch_size=batch_size,
        max_hypotheses=max_hypotheses,
        length_penalty=length_penalty,
        max_length_ratio=max_length_ratio,
    )
    if split is not None:
        result = api.evaluate_split(translator, rec, split, data)
    else:
        assert source is not None and reference is not None
        result = api.evaluate_files(translator, source, reference)
    if hypotheses is not None:
        from nmt.textio import open_output

        with open_output(hypotheses) as out:
            out.writelines(h + "\n" for h in result.hypotheses)
    if json_output:
        typer.echo(json.dumps({k: v.to_dict() for k, v in result.scores.items()}, indent=2))
    else:
        for score in result.scores.values():
            typer.echo(f"{score.metric:8s} {score.score:6.2f}  {score.signature}")


@app.command()
@_handle_errors
def reproduce(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file with expected scores.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/NAME).")
    ] = None,
    set_: SetOption = None,
    data: Data = None,
    device: Device = "auto",
    threads: Threads = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train (or resume) a recipe, score its test splits, compare with its expected scores."""
    _setup_logging()
    rows = api.reproduce(
        recipe,
        out,
        data_dir=data,
        device=device,
        threads=threads,
        progress_bar=progress,
        overrides=set_ or [],
    )
    typer.echo(
        f"{'split':10s} {'metric':8s} {'score':>6s} {'expected':>8s} {'tol':>5s} "
        f"{'result':6s} signature"
    )
    failed = False
    for r in rows:
        verdict = {None: "-", True: "pass", False: "FAIL"}[r.passed]
        failed |= r.passed is False
        exp = f"{r.expected:8.2f}" if r.expected is not None else f"{'-':>8s}"
        tol = f"{r.tolerance:5.2f}" if r.tolerance is not None else f"{'-':>5s}"
        typer.echo(
            f"{r.split:10s} {r.metric:8s} {r.score:6.2f} {exp} {tol} {verdict:6s} {r.signature}"
        )
    if failed:
        raise typer.Exit(1)


@app.command()
@_handle_errors
def average(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with step checkpoints.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Averaged model file to write.")],
    last: Annotated[int, typer.Option(help="Average the last N step checkpoints.")] = 3,
) -> None:
    """Average the weights of a run's last N checkpoints into one model."""
    _setup_logging()
    api.average(run_dir, last, output)


@app.command()
@_handle_errors
def shortlist(
    model: Annotated[Path, typer.Argument(help="Run directory (uses best.pt) or checkpoint file.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default: shortlist.pt beside MODEL)."),
    ] = None,
    data: Data = None,
    frequent: Annotated[int, typer.Option(help="Most frequent target tokens always kept.")] = 100,
    per_source: Annotated[
        int, typer.Option(help="Target tokens kept per source token (by Dice co-occurrence).")
    ] = 10,
) -> None:
    """Build a lexical shortlist from the model's training data, for translate --shortlist."""
    _setup_logging()
    api.build_shortlist(model, output, data_dir=data, frequent=frequent, per_source=per_source)


if __name__ == "__main__":
    app()
