"""The Python API under the CLI: train, translate, evaluate, reproduce, average.

Each function takes plain values, raises `NmtError` subclasses for anything the user can fix,
and logs progress to the "nmt" logger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nmt import checkpoint as ckpt
from nmt import ensemble_training
from nmt import recipe as recipe_mod
from nmt import shortlist as shortlist_mod
from nmt import tokenizer as tokenizer_mod
from nmt.data import load_splits
from nmt.ensemble import Ensemble
from nmt.errors import CheckpointError, NmtError, TrainingError
from nmt.evaluate import Score, score_corpus
from nmt.model import build_model
from nmt.quantize import quantize_int8
from nmt.recipe import DecodeConfig, Recipe
from nmt.runtime import (
    autocast_dtype,
    limit_primitive_cache,
    release_free_memory,
    resolve_device,
    seed_everything,
    set_threads,
    share_threads,
    tune_allocator,
)
from nmt.shortlist import Shortlist
from nmt.textio import decode_lines, open_input, open_output, read_text_lines
from nmt.tokenizer import Tokenizer
from nmt.train import Progress, Trainer, prepare_data
from nmt.translate import SearchSettings, Translator

log = logging.getLogger("nmt")

RUN_FILES = (
    ckpt.BEST,
    ckpt.EMA,
    "metrics.jsonl",
    "train.log",
    "recipe.yaml",
    *tokenizer_mod.MODEL_FILES,
)


def _recipe(recipe: Recipe | str | Path, overrides: Sequence[str] = ()) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe_mod.from_dict(recipe.to_dict(), list(overrides)) if overrides else recipe
    return recipe_mod.load(recipe, list(overrides))


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Existing step checkpoints to resume from; refuses to overwrite a run by accident."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"run directory {run_dir} is a file")
    ckpt.remove_stale_temporaries(run_dir)
    existing = ckpt.step_checkpoints(run_dir)
    holds_run = bool(existing) or (run_dir / ckpt.BEST).exists()
    if holds_run and overwrite:
        for path in existing:
            path.unlink()
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        return []
    if holds_run and not resume:
        raise TrainingError(
            f"run directory {run_dir} already holds a run; use --resume to continue "
            f"it or --overwrite to start again"
        )
    if not holds_run:  # logs of a run stopped before its first checkpoint start over
        for name in ("metrics.jsonl", "train.log"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return existing


def _latest_readable(paths: list[Path]) -> dict:
    """The newest step checkpoint that loads; a damaged newest one falls back to the one before."""
    for path in reversed(paths):
        try:
            return ckpt.read(path)
        except CheckpointError as exc:
            log.warning("skipping %s: %s", path.name, exc)
    raise CheckpointError("no readable checkpoint to resume from")


def train(
    recipe: Recipe | str | Path,
    out_dir: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    data_dir: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    threads: int | None = None,
    progress_bar: bool = True,
    trainer_hook=None,
    tokenizer: Tokenizer | None = None,
) -> Progress:
    """Train (or resume) a run; checkpoints, logs and metrics go to `out_dir`.

    tokenizer: use this one instead of training one (the members of an ensemble share theirs).
    A recipe with `train.ensemble` > 1 trains its members side by side in RUN/member-K; the
    Progress returned is then the least advanced member's.
    """
    rec = _recipe(recipe, overrides)
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / rec.name
    if rec.train.ensemble > 1:
        if init_from is not None:
            raise NmtError("--init-from does not apply to a recipe with train.ensemble > 1")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(_yaml(rec), encoding="utf-8")
        members = ensemble_training.train_members(
            rec,
            run_dir,
            data_dir=data_dir,
            device=device,
            resume=resume,
            overwrite=overwrite,
            threads=threads,
        )
        return min(members, key=lambda p: (p.finished, p.step))
    set_threads(threads)
    limit_primitive_cache()
    dev = resolve_device(device)
    existing = _prepare_run_dir(run_dir, resume, overwrite)
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        payload = _latest_readable(existing) if existing else None
        if payload is not None:
            stored = recipe_mod.from_dict(payload["recipe"])
            if stored != rec:
                log.warning(
                    "resuming with the recipe stored in the run, which differs from %s",
                    recipe if not isinstance(recipe, Recipe) else "the given recipe",
                )
            rec = stored
            log.info("resuming %s from step %d", run_dir, payload["step"])
            _drop_metrics_after(run_dir / "metrics.jsonl", payload["step"])
        seed_everything(rec.seed)
        splits = load_splits(rec.data, [rec.data.train_split, rec.data.valid_split], data_dir)
        train_text, valid_text = splits[rec.data.train_split], splits[rec.data.valid_split]
        if payload is not None:
            _, tokenizer, model = ckpt.restore_model(payload, "resumed checkpoint")
        elif tokenizer is not None:
            model = build_model(rec.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
        elif init_from is not None:
            _, tokenizer, parent = ckpt.load_model(init_from)
            model = build_model(rec.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
            try:
                ckpt.load_weights(model, parent.state_dict(), f"--init-from {init_from}")
            except CheckpointError as exc:
                raise CheckpointError(
                    f"{exc}: the recipe's model section must match the initial model's"
                ) from None
            log.info("initialised from %s (its tokenizer and weights; fresh optimizer)", init_from)
        else:
            log.info(
                "training SentencePiece (%s, %d) on %d sentence pairs",
                rec.tokenizer.type,
                rec.tokenizer.vocab_size,
                len(train_text),
            )
            tokenizer = Tokenizer.train(
                train_text.source, train_text.target, rec.tokenizer, rec.seed
            )
            model = build_model(rec.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
        tokenizer.save(run_dir)
        (run_dir / "recipe.yaml").write_text(_yaml(rec), encoding="utf-8")
        data = prepare_data(train_text, valid_text, tokenizer, rec.train.max_length)
        # Training's own allocations keep the heap (tune_allocator); what the tokenizer and the
        # data preparation freed goes back to the OS first.
        release_free_memory()
        tune_allocator()
        trainer = Trainer(
            rec,
            tokenizer,
            model,
            data,
            run_dir,
            dev,
            progress_bar=progress_bar,
            on_step=trainer_hook,
        )
        if payload is not None:
            trainer.load_state_dict(payload["training"])
        return trainer.fit()
    finally:
        log.removeHandler(handler)
        handler.close()


def _drop_metrics_after(path: Path, step: int) -> None:
    """Records a killed run logged after its last checkpoint are logged again on resume."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def _yaml(rec: Recipe) -> str:
    import yaml

    return yaml.safe_dump(rec.to_dict(), sort_keys=False, allow_unicode=True)


def settings_from_recipe(
    rec: Recipe, decode: DecodeConfig | None = None, **changes: object
) -> SearchSettings:
    """The recipe's decode section (or `decode`), with the given non-None values replacing it."""
    return SearchSettings.from_decode(decode or rec.decode, **changes)


def load_translator(
    model_path: str | Path | Sequence[str | Path],
    *,
    device: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    shortlist: str | Path | None = None,
    decode: DecodeConfig | None = None,
    workers: int = 1,
    **search_changes: object,
) -> tuple[Translator, Recipe]:
    """A translator for a model, decoding with its recipe's settings (or `decode`) unless
    changed here.

    precision: fp32; bf16 (autocast: fast only on CPUs with AMX or AVX512-BF16, and on GPUs);
    int8 (dynamic quantization of Linear and LSTM weights, CPU only: device 'auto' picks the CPU).
    shortlist: a file from `build_shortlist`; decoding scores only its candidate tokens.
    Several model paths decode as an ensemble (`nmt.ensemble`): they must share the tokenizer,
    and the first one's recipe supplies the decoding settings and the dataset.
    workers: batches searched at once on the CPU, each on threads / workers intra-op threads.
    """
    if workers < 1:
        raise NmtError(f"--workers must be at least 1, got {workers}")
    set_threads(threads)
    limit_primitive_cache()  # decoding batches shrink step by step: many shapes too
    given = [model_path] if isinstance(model_path, str | Path) else list(model_path)
    paths = [p for path in given for p in ensemble_training.expand_run_dir(Path(path))]
    if not paths:
        raise NmtError("no model given")
    rec, tokenizer, model = ckpt.load_model(paths[0])
    members = [model]
    for path in paths[1:]:
        _, other_tokenizer, other = ckpt.load_model(path)
        if other_tokenizer.state_dict() != tokenizer.state_dict():
            raise CheckpointError(
                f"{path} uses another tokenizer than {paths[0]}: an ensemble needs one vocabulary"
            )
        members.append(other)
    if len(members) > 1 and shortlist is not None:
        raise NmtError("--shortlist cuts one model's output layer: not with several models")
    lexical = Shortlist.load(shortlist, tokenizer) if shortlist is not None else None
    settings = settings_from_recipe(rec, decode, **search_changes)
    # int8 kernels exist only for the CPU, so 'auto' means the CPU there
    dev = resolve_device("cpu" if precision == "int8" and device == "auto" else device)
    if precision == "int8":
        if dev.type != "cpu":
            raise NmtError("--precision int8 runs on the CPU only; add --device cpu")
        members = [quantize_int8(m, inplace=True) for m in members]
    if workers > 1:
        if dev.type != "cpu":
            raise NmtError("--workers above 1 shares out CPU threads; on a GPU use 1")
        share_threads(workers)
    searcher = members[0] if len(members) == 1 else Ensemble(members)
    return (
        Translator(searcher, tokenizer, dev, settings, autocast_dtype(precision), lexical, workers),
        rec,
    )


def build_shortlist(
    model_path: str | Path,
    output: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    frequent: int = 100,
    per_source: int = 10,
) -> Path:
    """Count the model's training split into a lexical shortlist (default: RUN/shortlist.pt)."""
    if frequent < 0 or per_source < 0:
        raise NmtError("--frequent and --per-source must not be negative")
    path = ckpt.resolve(model_path)
    rec, tokenizer, _ = ckpt.restore_model(ckpt.read(path), str(path))
    text = load_splits(rec.data, [rec.data.train_split], data_dir)[rec.data.train_split]
    lexical = shortlist_mod.build(
        tokenizer.encode_source(text.source),
        tokenizer.encode_target(text.target),
        tokenizer,
        frequent=frequent,
        per_source=per_source,
    )
    out = Path(output) if output is not None else path.parent / "shortlist.pt"
    ckpt.atomic_save(lexical.to_dict(), out)
    log.info(
        "shortlist of %d frequent + %d per source token from %d pairs -> %s",
        frequent,
        per_source,
        len(text),
        out,
    )
    return out


def translate_file(
    translator: Translator,
    input_path: str | Path | None = None,
    output_path: str | Path | None = None,
    errors: str = "strict",
) -> int:
    """Translate a file (or stdin) line by line into a file (or stdout); returns lines written."""
    with open_input(input_path) as stream, open_output(output_path) as out:
        name = "stdin" if input_path is None or str(input_path) == "-" else str(input_path)
        return translator.translate_stream(decode_lines(stream, errors, name), out.write)


def translate_lines(translator: Translator, lines: Sequence[str]) -> list[str]:
    return [h[0].text for h in translator.translate(list(lines))]


@dataclass
class Evaluation:
    scores: dict[str, Score]
    hypotheses: list[str] = field(repr=False)


def evaluate(
    translator: Translator, sources: Sequence[str], references: Sequence[str]
) -> Evaluation:
    hyps = translate_lines(translator, sources)
    return Evaluation(score_corpus(hyps, references), hyps)


def evaluate_files(translator: Translator, source: str | Path, reference: str | Path) -> Evaluation:
    return evaluate(translator, read_text_lines(source), read_text_lines(reference))


def evaluate_split(
    translator: Translator, model_recipe: Recipe, split: str, data_dir: str | Path | None = None
) -> Evaluation:
    text = load_splits(model_recipe.data, [split], data_dir)[split]
    return evaluate(translator, text.source, text.target)


def average(run_dir: str | Path, last: int, output: str | Path) -> Path:
    """Average the weights of a run's last N step checkpoints into one model file."""
    run = Path(run_dir)
    paths = ckpt.step_checkpoints(run)
    if not paths and ensemble_training.expand_run_dir(run) != [run]:
        raise CheckpointError(
            f"{run} holds an ensemble: average each of its member-K directories on its own"
        )
    if not paths:
        raise CheckpointError(f"no step checkpoints in {run}")
    if last < 1:
        raise NmtError(f"--last must be at least 1, got {last}")
    chosen = paths[-last:]
    payload = ckpt.read(chosen[-1])
    recipe, tokenizer, model = ckpt.restore_model(payload, str(chosen[-1]))
    model.load_state_dict(ckpt.average(chosen))
    out = Path(output)
    ckpt.atomic_save(
        ckpt.build_payload(recipe, tokenizer, model, payload["step"], {"averaged": len(chosen)}),
        out,
    )
    log.info(
        "averaged %d checkpoints (%s) into %s", len(chosen), ", ".join(p.name for p in chosen), out
    )
    return out


@dataclass
class ReproduceRow:
    split: str
    metric: str
    score: float
    expected: float | None
    tolerance: float | None
    signature: str

    @property
    def passed(self) -> bool | None:
        if self.expected is None or self.tolerance is None:
            return None
        return self.score >= self.expected - self.tolerance


def reproduce(
    recipe: Recipe | str | Path,
    out_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress_bar: bool = True,
    overrides: Sequence[str] = (),
) -> list[ReproduceRow]:
    """Train (or resume) the recipe, decode its test splits and compare with its expected scores."""
    rec = _recipe(recipe, overrides)
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / rec.name
    progress = train(
        rec,
        run_dir,
        data_dir=data_dir,
        device=device,
        resume=True,
        threads=threads,
        progress_bar=progress_bar,
    )
    if not progress.finished:  # stopped by a signal: scores of a half-trained model mean nothing
        raise TrainingError(
            f"training stopped at step {progress.step} before the recipe's end; "
            "run the same `nmt reproduce` again to resume it"
        )
    release_free_memory()  # training's heap is not needed for decoding
    members = (
        ensemble_training.member_dirs(run_dir, rec.train.ensemble)
        if rec.train.ensemble > 1
        else [run_dir]
    )
    model_paths = []
    for member in members:
        model_path: Path = member / (ckpt.EMA if rec.decode.use_ema else ckpt.BEST)
        if rec.decode.average_checkpoints > 1:
            model_path = average(member, rec.decode.average_checkpoints, member / "averaged.pt")
        model_paths.append(model_path)
    # This recipe's decoding, also for a run trained before its decode section was tuned.
    translator, _ = load_translator(model_paths, device=device, decode=rec.decode)
    rows = []
    for split in rec.data.test_splits:
        result = evaluate_split(translator, rec, split, data_dir)
        (run_dir / f"{split}.hyp.txt").write_text(
            "\n".join(result.hypotheses) + "\n", encoding="utf-8"
        )
        for name, score in result.scores.items():
            exp = next((e for e in rec.expected if e.split == split and e.metric == name), None)
            rows.append(
                ReproduceRow(
                    split,
                    name,
                    score.score,
                    exp.score if exp else None,
                    exp.tolerance if exp else None,
                    score.signature,
                )
            )
    return rows
