"""SentencePiece subword models: trained on the training split, stored with every checkpoint.

Ids 0-3 are fixed for every model: <pad>, <unk>, <s> (BOS), </s> (EOS). A joint tokenizer uses one
model for both languages; a separate one has a source and a target model.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.errors import CheckpointError, RecipeError
from nmt.recipe import TokenizerConfig

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def _train_model(sentences: Sequence[str], config: TokenizerConfig, seed: int) -> bytes:
    """Train one SentencePiece model in memory and return its serialized proto."""
    rng = random.Random(seed)
    sample: Sequence[str] = sentences
    if len(sentences) > config.max_training_sentences:
        sample = rng.sample(list(sentences), config.max_training_sentences)
    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()

    def lines() -> Iterator[str]:
        return (s for s in sample if s.strip())

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_writer=writer,
            model_type=config.type,
            vocab_size=config.vocab_size,
            character_coverage=config.character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,  # unigram results differ with the thread count; keep runs reproducible
            minloglevel=2,
            max_sentence_length=1 << 16,
        )
    except RuntimeError as exc:
        message = str(exc)
        if "smaller than required_chars" in message:
            needed = message.split(" vs ")[-1].split(".")[0]
            raise RecipeError(
                "tokenizer.vocab_size",
                f"{config.vocab_size} is too small: the training text needs at least {needed} "
                "pieces for its characters (or lower tokenizer.character_coverage)",
            ) from None
        if "Vocabulary size" in message or "vocab_size" in message:
            hint = message.split("Please set it to a value")[-1].strip(" .")
            raise RecipeError(
                "tokenizer.vocab_size",
                f"{config.vocab_size} is too large for this training data ({hint})",
            ) from None
        raise RecipeError("tokenizer", f"SentencePiece training failed: {message}") from None
    return writer.getvalue()


def _load_processor(model: bytes, what: str) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model)
    except (RuntimeError, OSError, TypeError) as exc:
        raise CheckpointError(f"{what} SentencePiece model is damaged: {exc}") from None
    if processor.pad_id() != PAD_ID or processor.eos_id() != EOS_ID or processor.bos_id() != BOS_ID:
        raise CheckpointError(f"{what} SentencePiece model was not trained by nmt (special ids)")
    return processor


# The files `Tokenizer.save` writes: one joint model, or one per side.
JOINT_FILE, SOURCE_FILE, TARGET_FILE = "spm.model", "spm.source.model", "spm.target.model"
MODEL_FILES = (JOINT_FILE, SOURCE_FILE, TARGET_FILE)


class Tokenizer:
    """Encode source text to ids and decode target ids to text."""

    def __init__(self, source_model: bytes, target_model: bytes | None = None) -> None:
        self.source_model = source_model
        self.target_model = target_model
        self._source = _load_processor(source_model, "source")
        self._target = (
            self._source if target_model is None else _load_processor(target_model, "target")
        )

    @property
    def joint(self) -> bool:
        return self.target_model is None

    @property
    def source_vocab_size(self) -> int:
        return self._source.get_piece_size()

    @property
    def target_vocab_size(self) -> int:
        return self._target.get_piece_size()

    @classmethod
    def train(
        cls, source: Sequence[str], target: Sequence[str], config: TokenizerConfig, seed: int
    ) -> Tokenizer:
        if config.joint:
            return cls(_train_model(list(source) + list(target), config, seed))
        return cls(_train_model(source, config, seed), _train_model(target, config, seed + 1))

    def encode_source(self, lines: Sequence[str]) -> list[list[int]]:
        """Source ids, each sentence followed by EOS."""
        return [[*ids, EOS_ID] for ids in self._source.encode(list(lines))]

    def encode_target(self, lines: Sequence[str]) -> list[list[int]]:
        """Target ids without BOS/EOS (batching adds them)."""
        return self._target.encode(list(lines))

    def sample_pairs(
        self, source: Sequence[str], target: Sequence[str], alpha: float, nbest: int, seed: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """One sampled segmentation of each pair, as encode_source / encode_target return them
        (subword regularisation; see TokenizerConfig.sampling_alpha). The same seed gives the same
        ids: SentencePiece's generator is seeded here and encodes on one thread."""
        spm.set_random_generator_seed(seed % 2**32)
        options = {"enable_sampling": True, "alpha": alpha, "nbest_size": nbest, "num_threads": 1}
        src = [[*ids, EOS_ID] for ids in self._source.encode(list(source), **options)]
        return src, self._target.encode(list(target), **options)

    def source_pieces(self, line: str) -> list[str]:
        return self._source.encode(line, out_type=str)

    def decode_target(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of target ids. A lone word-boundary piece before a word piece (a sequence the
        model can choose, never one that encode_target makes: SentencePiece normalises runs of
        spaces away) would decode to two spaces; runs of spaces are joined into one and spaces at
        the ends dropped."""
        return [
            " ".join(filter(None, t.split(" ")))
            for t in self._target.decode([list(x) for x in ids])
        ]

    def state_dict(self) -> dict[str, bytes | None]:
        return {"source": self.source_model, "target": self.target_model}

    @classmethod
    def from_state_dict(cls, state: dict[str, bytes | None]) -> Tokenizer:
        source = state.get("source")
        if not isinstance(source, bytes):
            raise CheckpointError("checkpoint holds no SentencePiece model")
        return cls(source, state.get("target"))

    @staticmethod
    def saved_in(directory: str | Path) -> bool:
        """Whether `save` wrote a tokenizer into `directory`."""
        return any((Path(directory) / name).exists() for name in (JOINT_FILE, SOURCE_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """The tokenizer `save` wrote into `directory`."""
        directory = Path(directory)
        if (directory / JOINT_FILE).exists():
            return cls((directory / JOINT_FILE).read_bytes())
        try:
            return cls(
                (directory / SOURCE_FILE).read_bytes(), (directory / TARGET_FILE).read_bytes()
            )
        except FileNotFoundError:
            raise CheckpointError(f"no SentencePiece model in {directory}") from None

    def save(self, directory: str | Path) -> list[Path]:
        """Write the .model files, for use with other SentencePiece tools."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.joint:
            paths = {directory / JOINT_FILE: self.source_model}
        else:
            assert self.target_model is not None
            paths = {
                directory / SOURCE_FILE: self.source_model,
                directory / TARGET_FILE: self.target_model,
            }
        for path, blob in paths.items():
            path.write_bytes(blob)
        return list(paths)
