"""Shared fixtures. Offline Hugging Face settings and one torch thread are set before imports:
tests may run beside other work, where two OpenMP threads wait on each other."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

_TMP_HOME = tempfile.mkdtemp(prefix="nmt-tests-")
atexit.register(shutil.rmtree, _TMP_HOME, ignore_errors=True)  # the caches die with the session
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_TMP_HOME, "hf")
os.environ["SACREBLEU"] = os.path.join(_TMP_HOME, "sacrebleu")
os.environ.pop("NMT_DATA", None)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (GPU tests)

import pytest  # noqa: E402
import torch  # noqa: E402

from nmt.model import Seq2Seq, build_model  # noqa: E402
from nmt.recipe import ModelConfig, TokenizerConfig  # noqa: E402
from nmt.tokenizer import Tokenizer  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def cli_training_command(command: str, recipe: Path, data: Path, out: Path) -> list[str]:
    """argv of `cli.py COMMAND RECIPE` (train or reproduce) as a user runs it in a child process."""
    return [
        sys.executable,
        str(ROOT / "cli.py"),
        command,
        str(recipe),
        *("--data", str(data), "--out", str(out), "--no-progress"),
    ]


MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"
requires_multi30k = pytest.mark.skipif(
    not (MULTI30K / "train.jsonl").exists(),
    reason=f"local Multi30k copy not found at {MULTI30K}",
)

WORDS = [
    "der",
    "die",
    "das",
    "hund",
    "katze",
    "mann",
    "frau",
    "kind",
    "läuft",
    "spielt",
    "sitzt",
    "auf",
    "im",
    "park",
    "haus",
    "rot",
    "blau",
    "groß",
    "klein",
    "ein",
]


def synthetic_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A toy 'translation': target = source words reversed and upper-cased."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
        src.append(" ".join(words))
        tgt.append(" ".join(w.upper() for w in reversed(words)))
    return src, tgt


@pytest.fixture(scope="session")
def toy_tokenizer() -> Tokenizer:
    src, tgt = synthetic_pairs(400)
    return Tokenizer.train(src, tgt, TokenizerConfig(type="unigram", vocab_size=60), seed=0)


def tiny_model(tokenizer: Tokenizer, seed: int = 0, **changes: object) -> Seq2Seq:
    torch.manual_seed(seed)
    config = ModelConfig(
        **{
            "embedding_size": 16,
            "encoder_hidden_size": 12,
            "decoder_hidden_size": 20,
            "dropout": 0.0,
            "embedding_dropout": 0.0,
            **changes,
        }  # type: ignore[arg-type]
    )
    return build_model(config, tokenizer.source_vocab_size, tokenizer.target_vocab_size).eval()


@pytest.fixture
def multi30k_dir() -> Path:
    if not (MULTI30K / "train.jsonl").exists():
        pytest.skip(f"local Multi30k copy not found at {MULTI30K}")
    return MULTI30K


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """A local dataset directory that datasets.load_dataset reads like a hub copy."""
    import json

    root = tmp_path_factory.mktemp("toy_dataset")
    for name, n, seed in (("train", 300, 0), ("val", 30, 1), ("test", 30, 2)):
        src, tgt = synthetic_pairs(n, seed)
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for s, t in zip(src, tgt, strict=True):
                handle.write(json.dumps({"de": s, "en": t}) + "\n")
    return root


def toy_recipe(**sections: dict) -> dict:
    """A recipe dict for a model that trains in seconds on toy_dataset."""
    base = {
        "name": "toy",
        "seed": 3,
        "data": {"dataset": "toy/dataset"},
        "tokenizer": {"vocab_size": 60},
        "model": {
            "embedding_size": 16,
            "encoder_hidden_size": 16,
            "decoder_hidden_size": 24,
            "dropout": 0.1,
            "embedding_dropout": 0.1,
            "word_dropout": 0.1,
        },
        "train": {
            "batch_tokens": 200,
            "max_sentences": 32,
            "learning_rate": 0.005,
            "max_epochs": 50,
            "max_steps": 12,
            "validate_every": 4,
            "log_every": 2,
            "keep_checkpoints": 2,
        },
        "decode": {"beam_size": 2, "max_length": 20},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            base[section] = {**base.get(section, {}), **values}
        else:
            base[section] = values
    return base
