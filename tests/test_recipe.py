from pathlib import Path

import pytest

from nmt import recipe
from nmt.errors import RecipeError

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load(path: Path) -> None:
    rec = recipe.load(path)
    assert rec.name == path.stem


def test_defaults_and_override_types() -> None:
    rec = recipe.from_dict(
        {},
        [
            "model.decoder_hidden_size=128",
            "model.cell=gru",
            "train.learning_rate=1e-4",
            "model.input_feeding=false",
            "data.test_splits=[test, test_2017]",
        ],
    )
    assert rec.model.decoder_hidden_size == 128
    assert rec.model.cell == "gru"
    assert rec.train.learning_rate == pytest.approx(1e-4)
    assert rec.model.input_feeding is False
    assert rec.data.test_splits == ["test", "test_2017"]
    assert rec.model.embedding_size == recipe.ModelConfig().embedding_size


def test_integer_accepted_where_float_expected() -> None:
    rec = recipe.from_dict({"train": {"learning_rate": 1}})
    assert isinstance(rec.train.learning_rate, float)


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"modle": {}}, "modle", "allowed: name, seed, data"),
        ({"model": {"hidden": 3}}, "model.hidden", "allowed: cell"),
        ({"model": {"cell": "transformer"}}, "model.cell", "allowed: lstm, gru, rnn"),
        ({"model": {"attention": "dot"}}, "model.attention", "allowed: bahdanau, luong"),
        ({"model": {"embedding_size": "big"}}, "model.embedding_size", "expected an integer"),
        ({"model": {"embedding_size": 2.5}}, "model.embedding_size", "expected an integer"),
        ({"model": {"embedding_size": -4}}, "model.embedding_size", "greater than 0"),
        ({"model": {"dropout": 1.5}}, "model.dropout", "between 0 and 1"),
        ({"model": {"input_feeding": "yes"}}, "model.input_feeding", "true or false"),
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate", "expected a number"),
        ({"train": {"batch_tokens": 0}}, "train.batch_tokens", "greater than 0"),
        ({"train": {"max_steps": -1}}, "train.max_steps", "greater than 0"),
        ({"train": {"precision": "fp16"}}, "train.precision", "allowed: fp32, bf16"),
        ({"train": {"warmup_steps": -5}}, "train.warmup_steps", "not be negative"),
        ({"train": {"lr_schedule": "noam"}}, "train.lr_schedule", "allowed: plateau, cosine, wsd"),
        ({"train": {"lr_decay_fraction": 1.2}}, "train.lr_decay_fraction", "between 0 and 1"),
        ({"tokenizer": {"type": "wordpiece"}}, "tokenizer.type", "allowed: unigram, bpe"),
        ({"tokenizer": {"vocab_size": True}}, "tokenizer.vocab_size", "expected an integer"),
        ({"decode": {"beam_size": 0}}, "decode.beam_size", "greater than 0"),
        ({"decode": {"max_hypotheses": 0}}, "decode.max_hypotheses", "greater than 0"),
        ({"tokenizer": {"sampling_alpha": -0.1}}, "tokenizer.sampling_alpha", "not be negative"),
        ({"tokenizer": {"sampling_nbest": 1}}, "tokenizer.sampling_nbest", "-1 (all"),
        (
            {"tokenizer": {"type": "bpe", "sampling_alpha": 1.5}},
            "tokenizer.sampling_alpha",
            "between 0 and 1",
        ),
        ({"data": {"test_splits": "test"}}, "data.test_splits", "a list of str"),
        ({"data": {"dataset": 5}}, "data.dataset", "expected a string"),
        ({"model": 3}, "model", "expected a mapping"),
        ({"seed": "x"}, "seed", "expected an integer"),
        (
            {"expected": [{"split": "test", "metric": "ter"}]},
            "expected[0].metric",
            "allowed: bleu, bleu_lc, chrf",
        ),
        ({"expected": [{"split": "dev"}]}, "expected[0].split", "unknown split"),
        (
            {"model": {"tie_embeddings": True}, "tokenizer": {"joint": False}},
            "model.tie_embeddings",
            "joint",
        ),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay", "below 1"),
        ({"train": {"ema_decay": -0.1}}, "train.ema_decay", "between 0 and 1"),
        ({"decode": {"use_ema": True}}, "decode.use_ema", "set train.ema_decay"),
        (
            {"train": {"ema_decay": 0.9}, "decode": {"use_ema": True, "average_checkpoints": 3}},
            "decode.use_ema",
            "average_checkpoints: 1",
        ),
    ],
)
def test_bad_recipes_name_the_key(raw: dict, key: str, fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipe.from_dict(raw)
    message = str(info.value)
    assert f"'{key}'" in message
    assert fragment in message
    assert "\n" not in message


def test_bad_override_syntax() -> None:
    with pytest.raises(RecipeError, match=r"section\.key=value"):
        recipe.from_dict({}, ["model.cell"])
    with pytest.raises(RecipeError, match=r"'model\.cell'"):
        recipe.from_dict({}, ["model.cell.x=1"])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        recipe.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        recipe.load(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        recipe.load(listy)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RecipeError, match="cannot read"):
        recipe.load(binary)


def test_base_recipe_is_merged_underneath(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "name: base\nmodel: {cell: gru, dropout: 0.2}\ntrain: {max_epochs: 3}\n"
        "expected: [{split: test, metric: bleu, score: 1.0}]\n"
    )
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(
        "base: ../base.yaml\nname: child\nmodel: {dropout: 0.1}\n"
        "expected: [{split: test, metric: chrf, score: 2.0}]\n"
    )
    rec = recipe.load(child, ["train.max_epochs=5"])
    assert rec.name == "child"
    assert rec.model.cell == "gru"  # kept from the base
    assert rec.model.dropout == pytest.approx(0.1)  # replaced key by key
    assert rec.train.max_epochs == 5  # overrides apply after the merge
    assert [e.metric for e in rec.expected] == ["chrf"]  # a list replaces the base's


def test_bad_base_recipes(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    missing.write_text("base: nope.yaml\n")
    with pytest.raises(RecipeError, match=r"nope\.yaml.*not found"):
        recipe.load(missing)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        recipe.load(tmp_path / "a.yaml")
    numeric = tmp_path / "numeric.yaml"
    numeric.write_text("base: 3\n")
    with pytest.raises(RecipeError, match=r"base.*path of another recipe"):
        recipe.load(numeric)


@pytest.mark.parametrize("direction", ["de_en", "en_de"])
def test_bf16_recipes_differ_from_their_base_only_where_they_say(direction: str) -> None:
    root = Path(__file__).parent.parent / "recipes"
    fp32 = recipe.load(root / f"multi30k_{direction}.yaml").to_dict()
    bf16 = recipe.load(root / f"multi30k_{direction}_bf16.yaml").to_dict()
    assert bf16["train"]["precision"] == "bf16" and fp32["train"]["precision"] == "fp32"
    for section, values in fp32.items():
        if not isinstance(values, dict):
            continue
        changed = {k for k in values if values[k] != bf16[section][k]}
        expected_changes = {
            # en-de: an ensemble of two, trained with nmt's faster dropout masks and fused Adam.
            "train": {"precision", "max_epochs"}
            | ({"ensemble", "dropout_masks", "fused_adam"} if direction == "en_de" else set()),
            "decode": {"length_penalty"},
            # de-en: the fp32 recipe moved to dropout 0.1; the bf16 run behind its scores used 0.2.
            # en-de: a second decoder layer (in fp32 it would not fit the hour on the Xeon).
            "model": {"dropout"} if direction == "de_en" else {"decoder_layers"},
        }.get(section, set())
        assert changed <= expected_changes, (section, changed)
