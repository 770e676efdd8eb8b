import json
from pathlib import Path

import pytest

from nmt.data import MIRROR_ENV, load_splits, resolve_location
from nmt.errors import DataError
from nmt.recipe import DataConfig


def _write(root: Path, rows_by_split: dict[str, list[dict]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_columns_and_example_limits(tmp_path) -> None:
    root = _write(
        tmp_path / "ds",
        {
            "train": [{"de": f"satz {i}", "en": f"sentence {i}"} for i in range(10)],
            "val": [{"de": "ja", "en": "yes"}],
        },
    )
    config = DataConfig(source_lang="de", target_lang="en", max_train_examples=4)
    splits = load_splits(config, ["train", "validation"], root)
    assert splits["train"].source == [f"satz {i}" for i in range(4)]
    assert splits["validation"].target == ["yes"]
    reverse = load_splits(DataConfig(source_lang="en", target_lang="de"), ["validation"], root)
    assert reverse["validation"].source == ["yes"]


def test_translation_field_and_custom_columns(tmp_path) -> None:
    root = _write(tmp_path / "wmt", {"train": [{"translation": {"de": "Haus", "en": "house"}}]})
    config = DataConfig(translation_field="translation")
    assert load_splits(config, ["train"], root)["train"].target == ["house"]
    with pytest.raises(DataError, match="lacks language 'de' or 'fr'"):
        load_splits(DataConfig(translation_field="translation", target_lang="fr"), ["train"], root)
    cols = _write(tmp_path / "cols", {"train": [{"src": "a", "tgt": "b"}]})
    config = DataConfig(source_column="src", target_column="tgt")
    assert load_splits(config, ["train"], cols)["train"].source == ["a"]


def test_missing_split_column_and_offline_hub(tmp_path) -> None:
    root = _write(tmp_path / "ds", {"train": [{"de": "a", "en": "b"}]})
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train\)"):
        load_splits(DataConfig(), ["test"], root)
    with pytest.raises(DataError, match=r"no column 'fr' \(columns: de, en\)"):
        load_splits(DataConfig(source_lang="fr"), ["train"], root)
    with pytest.raises(
        DataError, match=r"cannot load dataset 'nobody/no-such-dataset'.*--data DIR"
    ):
        load_splits(DataConfig(dataset="nobody/no-such-dataset"), ["train"])


def test_mirror_root_resolution(tmp_path, monkeypatch) -> None:
    (tmp_path / "multi30k").mkdir()
    (tmp_path / "owner" / "full").mkdir(parents=True)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    assert resolve_location(DataConfig(dataset="bentrevett/multi30k")) == str(tmp_path / "multi30k")
    assert resolve_location(DataConfig(dataset="owner/full")) == str(tmp_path / "owner" / "full")
    assert resolve_location(DataConfig(dataset="someone/else")) == "someone/else"
    assert resolve_location(DataConfig(), tmp_path / "multi30k") == str(tmp_path / "multi30k")
    with pytest.raises(DataError, match="data directory not found"):
        resolve_location(DataConfig(), tmp_path / "missing")


def test_local_multi30k_copy(multi30k_dir) -> None:
    splits = load_splits(DataConfig(), ["train", "validation", "test"], multi30k_dir)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [29000, 1014, 1000]
    assert splits["train"].source[0].startswith("Zwei junge weiße Männer")
