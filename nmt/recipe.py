"""Recipes: one YAML file fixes data, tokenizer, model, schedule, decoding and expected scores.

Each section is a frozen dataclass with its defaults in one place. Loading rejects unknown keys,
wrong types and out-of-range values with a `RecipeError` that names the key and what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nmt.errors import RecipeError


@dataclass(frozen=True)
class DataConfig:
    """Where the parallel text comes from: a Hugging Face dataset id, or a local copy of one."""

    dataset: str = "bentrevett/multi30k"  # hub id; `--data DIR` or $NMT_DATA point at a local copy
    config: str | None = None  # dataset configuration name, e.g. "de-en" for wmt14
    source_lang: str = "de"
    target_lang: str = "en"
    source_column: str | None = None  # defaults to source_lang
    target_column: str | None = None  # defaults to target_lang
    translation_field: str | None = (
        None  # e.g. "translation" for {"translation": {"de": .., "en": ..}}
    )
    train_split: str = "train"
    valid_split: str = "validation"
    test_splits: list[str] = field(default_factory=lambda: ["test"])
    max_train_examples: int | None = None  # first N training pairs only (smoke tests)
    max_valid_examples: int | None = None


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece, trained on the training split."""

    type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 8000
    joint: bool = True  # one model and vocabulary for both languages
    character_coverage: float = 1.0
    max_training_sentences: int = 2_000_000  # sentences sampled to train SentencePiece
    # Subword regularisation in training: each epoch draws a new segmentation of every pair.
    # unigram: SentencePiece's sampling (Kudo, 2018), alpha the smoothing exponent (lower = more
    # varied) over the sampling_nbest best segmentations (-1 = all); bpe: BPE-dropout (Provilkov
    # et al., 2020), alpha the merge-dropout probability. 0 = off. Decoding never samples.
    sampling_alpha: float = 0.0
    sampling_nbest: int = -1


@dataclass(frozen=True)
class ModelConfig:
    """An attentional encoder-decoder (Luong et al., 2015) with a bidirectional encoder."""

    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    embedding_size: int = 256
    encoder_hidden_size: int = 256  # per direction
    encoder_layers: int = 1
    decoder_hidden_size: int = 512
    decoder_layers: int = 1
    attention: Literal["bahdanau", "luong"] = "luong"
    luong_score: Literal["general", "dot"] = "general"  # only for attention: luong
    input_feeding: bool = True
    dropout: float = 0.3  # between layers and on the attentional vector
    embedding_dropout: float = 0.3
    word_dropout: float = 0.0  # probability of replacing an input token by <unk> in training
    tie_embeddings: bool = False  # share source and target embeddings (needs a joint tokenizer)
    tie_output: bool = True  # target embedding matrix is the output projection


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule."""

    batch_tokens: int = 2000  # token budget per batch (max of source and target tokens, padded)
    max_sentences: int = 128  # upper bound on sentences per batch
    max_length: int = 100  # training pairs longer than this (in tokens) are skipped
    learning_rate: float = 0.001
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    warmup_steps: int = 0
    # plateau: multiply lr by lr_decay_factor after lr_patience validations without a gain;
    # cosine: decay from learning_rate to min_learning_rate over the run's planned steps
    # (max_epochs, or max_steps if fewer), so that a fixed budget ends at a small rate;
    # wsd (warm-up, stable, decay): learning_rate until the last lr_decay_fraction of the planned
    # steps, then a straight line down to min_learning_rate at the planned end
    lr_schedule: Literal["plateau", "cosine", "wsd"] = "plateau"
    lr_decay_factor: float = 0.5  # multiply lr by this after `lr_patience` validations w/o gain
    lr_patience: int = 2
    lr_decay_fraction: float = 0.2  # wsd: the share of planned steps spent decaying
    min_learning_rate: float = 1e-5
    max_epochs: int = 10
    max_steps: int | None = None
    # Wall-clock budget of the training loop (steps and validations, summed over resumed runs):
    # stop at the first step past it. Timing varies, so the step it stops at does too.
    max_minutes: float | None = None
    validate_every: int = 500  # steps
    valid_beam_size: int = 1  # 1 = greedy validation decoding
    patience: int = 8  # early stopping: validations without a better BLEU
    keep_checkpoints: int = 3  # last K full checkpoints kept besides best.pt
    precision: Literal["fp32", "bf16"] = "fp32"
    max_bad_steps: int = 5  # stop after this many consecutive non-finite losses
    log_every: int = 100  # steps
    # > 0: the output layer and loss run over at most this many logits at a time, each chunk
    # back-propagated at once (8 MB fp32 chunks: -0.5 GB peak RSS, no padding rows, 1.06x tok/s);
    # 0: all (B, T, V) logits at once, the reference path
    loss_chunk_elements: int = 2**21
    # > 1: train this many models from seeds seed, seed+1, ... side by side, one process each
    # with the threads shared out, on one shared tokenizer; they decode as one ensemble
    ensemble: int = 1
    # How dropout masks are drawn (nmt.dropout): bits, four draws from each random 64-bit word;
    # bernoulli, torch's dropout (one draw an element, about 4% of a step slower). Different
    # random numbers: a recipe recorded with one does not follow its trajectory with the other.
    dropout_masks: Literal["bits", "bernoulli"] = "bits"
    # Adam as one fused kernel over all parameters (torch.optim.Adam(fused=True), 2.5x faster
    # optimizer steps on the CPU), or false for torch's default loop; rounding differs in the
    # last bit, so a recipe recorded with one does not follow its trajectory with the other.
    fused_adam: bool = True
    # > 0: also keep an exponential moving average of the weights (Polyak averaging), updated
    # after every step as ema = decay * ema + (1 - decay) * weights and saved as ema.pt with
    # each checkpoint; it changes nothing in the training trajectory. With 0.999 the weights it
    # averages are 1,000 steps old on average (1 / (1 - decay)); the last 5 checkpoints of a
    # recipe that validates every 400 steps span up to 1,600.
    ema_decay: float = 0.0


@dataclass(frozen=True)
class DecodeConfig:
    """Beam search settings used by translate, evaluate and reproduce."""

    beam_size: int = 5
    length_penalty: float = 0.6  # GNMT alpha; 0 = no length normalisation
    max_length_ratio: float = 2.0  # at most ratio * source tokens + 5 target tokens
    max_length: int = 256  # absolute cap on target tokens
    batch_size: int = 128  # sentences per decoding batch (128 beat 64 and 256 in speed)
    # Hypotheses (sentences x beam) per batch at most: bounds beam search's memory, which grows
    # with the rows it scores at once; a batch holds min(batch_size, max_hypotheses // beam).
    max_hypotheses: int = 320
    average_checkpoints: int = 1  # >1: average the last N checkpoints before decoding
    use_ema: bool = False  # decode ema.pt, the moving average of train.ema_decay, instead


@dataclass(frozen=True)
class ExpectedScore:
    """A score `nmt reproduce` must reach: score >= expected - tolerance."""

    split: str = "test"
    metric: Literal["bleu", "bleu_lc", "chrf"] = "bleu"
    score: float = 0.0
    tolerance: float = 0.5


@dataclass(frozen=True)
class Recipe:
    name: str = "unnamed"
    seed: int = 1234
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    expected: list[ExpectedScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Values that must be > 0 or >= 0; checked after types.
_POSITIVE = {
    "tokenizer.vocab_size",
    "model.embedding_size",
    "model.encoder_hidden_size",
    "model.encoder_layers",
    "model.decoder_hidden_size",
    "model.decoder_layers",
    "train.batch_tokens",
    "train.max_sentences",
    "train.max_length",
    "train.learning_rate",
    "train.max_epochs",
    "train.max_steps",
    "train.max_minutes",
    "train.validate_every",
    "train.valid_beam_size",
    "train.patience",
    "train.keep_checkpoints",
    "train.max_bad_steps",
    "train.log_every",
    "train.lr_patience",
    "train.ensemble",
    "decode.beam_size",
    "decode.max_length_ratio",
    "decode.max_length",
    "decode.batch_size",
    "decode.max_hypotheses",
    "decode.average_checkpoints",
    "data.max_train_examples",
    "data.max_valid_examples",
    "tokenizer.max_training_sentences",
}
_NON_NEGATIVE = {
    "train.loss_chunk_elements",
    "train.weight_decay",
    "train.clip_norm",
    "train.warmup_steps",
    "train.min_learning_rate",
    "decode.length_penalty",
    "expected.tolerance",
    "tokenizer.sampling_alpha",
}
_PROBABILITIES = {
    "model.dropout",
    "model.embedding_dropout",
    "model.word_dropout",
    "train.label_smoothing",
    "train.lr_decay_factor",
    "train.lr_decay_fraction",
    "train.ema_decay",
    "tokenizer.character_coverage",
}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise RecipeError(key, f"invalid value {value!r}", allowed)
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except RecipeError:
                continue
        raise RecipeError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise RecipeError(key, f"expected {_type_name(tp)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported recipe type {tp!r} for {key}")  # a bug in this module


def _check_range(key: str, value: Any) -> None:
    generic = key.split("[")[0] + (key.split("]")[-1] if "]" in key else "")
    if value is None or isinstance(value, bool | str | list):
        return
    if generic in _POSITIVE and value <= 0:
        raise RecipeError(key, f"must be greater than 0, got {value!r}")
    if generic in _NON_NEGATIVE and value < 0:
        raise RecipeError(key, f"must not be negative, got {value!r}")
    if generic in _PROBABILITIES and not 0 <= value <= 1:
        raise RecipeError(key, f"must lie between 0 and 1, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(prefix or "<top level>", f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise RecipeError(full, "unknown key", names)
        kwargs[key] = _coerce(full, value, hints[key])
        _check_range(full, kwargs[key])
    return cls(**kwargs)


def _check_consistency(recipe: Recipe) -> None:
    if recipe.model.tie_embeddings and not recipe.tokenizer.joint:
        raise RecipeError(
            "model.tie_embeddings", "needs a joint vocabulary; set tokenizer.joint: true"
        )
    t = recipe.tokenizer
    if t.sampling_nbest != -1 and t.sampling_nbest < 2:
        raise RecipeError(
            "tokenizer.sampling_nbest",
            f"must be -1 (all segmentations) or at least 2, got {t.sampling_nbest}",
        )
    if t.type == "bpe" and t.sampling_alpha > 1:
        raise RecipeError(
            "tokenizer.sampling_alpha",
            f"is BPE-dropout's probability for a bpe tokenizer: between 0 and 1, "
            f"got {t.sampling_alpha}",
        )
    if recipe.train.ema_decay >= 1:
        raise RecipeError(
            "train.ema_decay",
            f"must be below 1 (1 keeps the first weights forever), got {recipe.train.ema_decay}",
        )
    if recipe.decode.use_ema and recipe.train.ema_decay == 0:
        raise RecipeError("decode.use_ema", "needs a moving average: set train.ema_decay > 0")
    if recipe.decode.use_ema and recipe.decode.average_checkpoints > 1:
        raise RecipeError(
            "decode.use_ema", "decodes the moving average: set decode.average_checkpoints: 1"
        )
    if recipe.train.max_sentences > recipe.train.batch_tokens:
        raise RecipeError("train.max_sentences", "must not exceed train.batch_tokens")
    splits = {recipe.data.valid_split, *recipe.data.test_splits}
    for i, exp in enumerate(recipe.expected):
        if exp.split not in splits:
            raise RecipeError(
                f"expected[{i}].split", f"unknown split {exp.split!r}", sorted(splits)
            )


def set_by_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `raw["a"]["b"] = value` for `dotted = "a.b"`, creating sections as needed."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(dotted, f"'{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `model.hidden_size=256`; the value is read as YAML, so `true`, `0.1`, `[a]` work."""
    if "=" not in text:
        raise RecipeError(text, "an override must look like section.key=value")
    key, _, value_text = text.partition("=")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(key, f"cannot read value {value_text!r}: {exc}") from None
    return key.strip(), value


def from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    raw = dict(raw)
    for text in overrides or []:
        key, value = parse_override(text)
        set_by_path(raw, key, value)
    recipe = _build(Recipe, raw, "")
    _check_consistency(recipe)
    return recipe


def _read_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's mapping, with its `base:` recipe (a path relative to it) merged underneath."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), "recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), f"cannot read recipe file: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise RecipeError(str(path), f"not valid YAML: {first}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(str(path), "a recipe must be a mapping of sections")
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base:
        raise RecipeError(f"{path}: base", "expected the path of another recipe file")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise RecipeError(f"{path}: base", f"recipes inherit from each other in a cycle: {base}")
    merged = _read_raw(base_path, (*seen, path.resolve()))
    for section, value in raw.items():  # a section's keys override the base's; lists replace
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **value}
        else:
            merged[section] = value
    return merged


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (and its `base:` recipe) and apply `section.key=value` overrides before
    validation."""
    return from_dict(_read_raw(Path(path)), overrides)
