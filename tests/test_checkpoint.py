from pathlib import Path

import pytest
import torch

from nmt import checkpoint as ckpt
from nmt.errors import CheckpointError
from nmt.recipe import Recipe, from_dict

from .conftest import tiny_model

SMALL = {"embedding_size": 16, "encoder_hidden_size": 12, "decoder_hidden_size": 20}


def _recipe(**model: object) -> Recipe:
    return from_dict({"model": {**SMALL, "dropout": 0.0, "embedding_dropout": 0.0, **model}})


def _save(path: Path, tokenizer, seed=0, **model) -> Path:
    rec = _recipe(**model)
    m = tiny_model(tokenizer, seed=seed, **model)
    ckpt.atomic_save(
        ckpt.build_payload(rec, tokenizer, m, step=7, metrics={"valid_bleu": 1.0}), path
    )
    return path


def test_round_trip(tmp_path, toy_tokenizer) -> None:
    path = _save(tmp_path / "m.pt", toy_tokenizer)
    rec, tok, model = ckpt.load_model(path)
    assert ckpt.read(path)["step"] == 7 and rec == _recipe()
    original = tiny_model(toy_tokenizer)
    for (name, a), (_, b) in zip(
        original.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert tok.source_model == toy_tokenizer.source_model
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary files left


def test_directory_resolves_to_best_then_newest_step(tmp_path, toy_tokenizer) -> None:
    _save(tmp_path / "step-00000010.pt", toy_tokenizer)
    _save(tmp_path / "step-00000002.pt", toy_tokenizer)
    assert ckpt.resolve(tmp_path).name == "step-00000010.pt"
    _save(tmp_path / "best.pt", toy_tokenizer)
    assert ckpt.resolve(tmp_path).name == "best.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.resolve(empty)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "not a readable nmt checkpoint"),
        (b"hello world", "not a readable nmt checkpoint"),
        (bytes(range(256)) * 40, "not a readable nmt checkpoint"),
    ],
)
def test_garbage_files_are_refused(tmp_path, content, fragment) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=fragment):
        ckpt.read(path)


def test_foreign_torch_files_are_refused(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not an nmt checkpoint"):
        ckpt.read(path)
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module: refused by weights_only loading
    with pytest.raises(CheckpointError, match="not a readable nmt checkpoint"):
        ckpt.read(path)


def test_truncated_checkpoint(tmp_path, toy_tokenizer) -> None:
    path = _save(tmp_path / "m.pt", toy_tokenizer)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        ckpt.read(path)


def test_other_architecture_is_named(tmp_path, toy_tokenizer) -> None:
    path = _save(tmp_path / "m.pt", toy_tokenizer)
    payload = ckpt.read(path)
    other = tiny_model(toy_tokenizer, decoder_hidden_size=24)
    with pytest.raises(CheckpointError, match="does not fit this model architecture"):
        ckpt.load_weights(other, payload["model"], "m.pt")
    payload["recipe"]["model"]["decoder_hidden_size"] = 24
    with pytest.raises(CheckpointError, match="different shape"):
        ckpt.restore_model(payload)


def test_tokenizer_that_does_not_match(tmp_path, toy_tokenizer) -> None:
    from nmt.recipe import TokenizerConfig
    from nmt.tokenizer import Tokenizer

    from .conftest import synthetic_pairs

    src, tgt = synthetic_pairs(200, seed=9)
    other = Tokenizer.train(src, tgt, TokenizerConfig(vocab_size=50), 0)
    payload = ckpt.read(_save(tmp_path / "m.pt", toy_tokenizer))
    payload["tokenizer"] = other.state_dict()
    with pytest.raises(CheckpointError, match="does not fit"):
        ckpt.restore_model(payload)


def test_failed_write_keeps_previous_file(tmp_path, toy_tokenizer, monkeypatch) -> None:
    path = _save(tmp_path / "m.pt", toy_tokenizer)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        ckpt.atomic_save({"x": 1}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_average(tmp_path, toy_tokenizer) -> None:
    paths = [_save(tmp_path / f"step-{i:08d}.pt", toy_tokenizer, seed=i) for i in (1, 2)]
    averaged = ckpt.average(paths)
    a, b = (tiny_model(toy_tokenizer, seed=i).state_dict() for i in (1, 2))
    for key in a:
        torch.testing.assert_close(averaged[key], (a[key].float() + b[key].float()) / 2)
