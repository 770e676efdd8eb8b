"""The CLI end to end on a toy dataset, and every bad input: one stderr line, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli import app
from nmt import checkpoint as ckpt

from .conftest import synthetic_pairs, toy_recipe

runner = CliRunner()


def _invoke(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def _assert_clean_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()  # progress lines may come before the error
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]], result.stderr
    assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_dataset) -> Path:
    """A toy model trained through `nmt train`."""
    root = tmp_path_factory.mktemp("cli")
    recipe = root / "toy.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe()))
    result = _invoke(
        "train",
        recipe,
        "--data",
        toy_dataset,
        "--out",
        root / "run",
        "--set",
        "train.max_steps=8",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "validation at step 8" in result.stderr
    return root / "run"


@pytest.mark.parametrize(
    "command", ["train", "translate", "evaluate", "reproduce", "average", "shortlist"]
)
def test_help(command) -> None:
    result = _invoke(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_translate_keeps_lines(trained, tmp_path) -> None:
    src, _ = synthetic_pairs(6, seed=11)
    lines = [src[0], "", src[1], "  ", *src[2:]]
    result = _invoke("translate", trained, "--beam-size", "3", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.stderr
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[1] == "" and out[3] == ""
    infile, outfile = tmp_path / "in.txt", tmp_path / "out.txt"
    infile.write_text("\r\n".join(lines))  # Windows line ends, no final newline
    result = _invoke(
        "translate", trained / "best.pt", "-i", infile, "-o", outfile, "--beam-size", "3"
    )
    assert result.exit_code == 0, result.stderr
    assert outfile.read_text().split("\n")[:-1] == out[:-1]


def test_greedy_equals_beam_one_through_cli(trained) -> None:
    src, _ = synthetic_pairs(8, seed=12)
    text = "\n".join(src) + "\n"
    assert (
        _invoke("translate", trained, "--beam-size", "1", input=text).stdout
        == _invoke("translate", trained, "--beam-size", "1", "--batch-size", "3", input=text).stdout
    )


def test_evaluate_and_average(trained, tmp_path) -> None:
    src, tgt = synthetic_pairs(10, seed=13)
    (tmp_path / "src.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(tgt) + "\n")
    result = _invoke(
        "evaluate",
        trained,
        "--source",
        tmp_path / "src.txt",
        "--reference",
        tmp_path / "ref.txt",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert set(scores) == {"bleu", "bleu_lc", "chrf"}
    assert "tok:13a" in scores["bleu"]["signature"]
    text = _invoke("evaluate", trained, "--split", "test", "--data", trained.parent.parent / "x")
    _assert_clean_error(text, "data directory not found")
    result = _invoke("average", trained, "-o", tmp_path / "avg.pt", "--last", "2")
    assert result.exit_code == 0, result.stderr
    assert _invoke("translate", tmp_path / "avg.pt", input="der hund\n").exit_code == 0


def test_shortlist_cli(trained, toy_dataset, tmp_path) -> None:
    result = _invoke("shortlist", trained, "--data", toy_dataset, "-o", tmp_path / "sl.pt")
    assert result.exit_code == 0, result.stderr
    src, _ = synthetic_pairs(5, seed=21)
    text = "\n".join([src[0], "", *src[1:]]) + "\n"
    out = _invoke("translate", trained, "--shortlist", tmp_path / "sl.pt", input=text)
    assert out.exit_code == 0, out.stderr
    assert len(out.stdout.split("\n")) == len(text.split("\n"))
    int8 = _invoke(
        "translate", trained, "--shortlist", tmp_path / "sl.pt", "--precision", "int8", input=text
    )
    assert int8.exit_code == 0, int8.stderr
    _assert_clean_error(
        _invoke("translate", trained, "--shortlist", tmp_path / "nope.pt", input=text),
        "shortlist not found",
    )
    _assert_clean_error(
        _invoke("translate", trained, "--shortlist", trained / "best.pt", input=text),
        "not an nmt shortlist",
    )
    (tmp_path / "garbage.pt").write_bytes(b"PK\x03\x04 not a zip archive")
    _assert_clean_error(
        _invoke("translate", trained, "--shortlist", tmp_path / "garbage.pt", input=text),
        "not a readable nmt shortlist",
    )
    _assert_clean_error(
        _invoke("shortlist", trained, "--data", toy_dataset, "--frequent", "-1"),
        "must not be negative",
    )


def test_evaluate_split_and_reproduce(tmp_path, toy_dataset) -> None:
    raw = toy_recipe(
        # A length penalty this strong makes even the barely trained toy model write long
        # hypotheses (it would end most of them at once), so a shorter max_length shows.
        decode={"length_penalty": 5.0},
        expected=[
            {"split": "test", "metric": "chrf", "score": 0.0, "tolerance": 0.0},
            {"split": "test", "metric": "bleu", "score": 100.0, "tolerance": 1.0},
        ],
    )
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    result = _invoke(
        "reproduce", recipe, "--data", toy_dataset, "--out", tmp_path / "run", "--no-progress"
    )
    assert result.exit_code == 1  # BLEU 100 is not reached
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    verdicts = {(r[0], r[1]): r[5] for r in rows}
    assert verdicts[("test", "chrf")] == "pass" and verdicts[("test", "bleu")] == "FAIL"
    assert verdicts[("test", "bleu_lc")] == "-"
    assert (tmp_path / "run" / "test.hyp.txt").exists()
    # Re-running resumes the finished run and gives the same scores.
    again = _invoke(
        "reproduce", recipe, "--data", toy_dataset, "--out", tmp_path / "run", "--no-progress"
    )
    assert again.stdout == result.stdout
    split = _invoke("evaluate", tmp_path / "run", "--split", "test", "--data", toy_dataset)
    assert split.exit_code == 0 and split.stdout.startswith("bleu")
    # Decoding follows the recipe given, also on a run trained before its decode section changed.
    raw["decode"] = {**raw.get("decode", {}), "max_length": 1}
    recipe.write_text(yaml.safe_dump(raw))
    short = _invoke(
        "reproduce", recipe, "--data", toy_dataset, "--out", tmp_path / "run", "--no-progress"
    )
    assert short.stdout != result.stdout
    hyps = (tmp_path / "run" / "test.hyp.txt").read_text().splitlines()
    assert hyps and all(len(h.split()) <= 1 for h in hyps)
    # --set overrides a key of the recipe file, as for nmt train.
    raw["decode"]["max_length"] = 20
    recipe.write_text(yaml.safe_dump(raw))
    overridden = _invoke(
        "reproduce",
        recipe,
        "--data",
        toy_dataset,
        "--out",
        tmp_path / "run",
        "--no-progress",
        "--set",
        "decode.max_length=1",
    )
    assert overridden.stdout == short.stdout


def test_bad_inputs(trained, tmp_path, toy_dataset) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(toy_recipe()))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump(toy_recipe(model={"hidden_size": 3})))
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text(yaml.safe_dump(toy_recipe(train={"learning_rate": "fast"})))
    random_file = tmp_path / "random.pt"
    random_file.write_bytes(bytes(range(256)) * 10)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes(b"der hund\ndie katze\n\xff\xfe kaputt\n")
    out = tmp_path / "out.txt"
    gpus = torch.cuda.device_count()
    missing_gpu = f"cuda:{gpus}"  # one past the last device, or cuda:0 on a machine without
    missing_gpu_error = f"has {gpus} CUDA device(s)" if gpus else "CUDA is not available"
    empty_train = tmp_path / "empty_train"
    empty_train.mkdir()
    (empty_train / "train.jsonl").write_text("")
    (empty_train / "val.jsonl").write_text('{"de": "a", "en": "b"}\n')
    truncated = tmp_path / "truncated.pt"
    blob = (trained / "best.pt").read_bytes()
    truncated.write_bytes(blob[: len(blob) // 3])
    payload = ckpt.read(trained / "best.pt")
    payload["recipe"]["model"]["decoder_hidden_size"] += 8  # weights no longer fit the recipe
    mismatched = tmp_path / "mismatched.pt"
    torch.save(payload, mismatched)
    (tmp_path / "empty_run").mkdir()

    cases = [
        (["train", tmp_path / "missing.yaml"], "recipe file not found"),
        (
            ["train", unknown, "--data", toy_dataset, "--out", tmp_path / "r1"],
            "'model.hidden_size': unknown key (allowed: cell",
        ),
        (
            ["train", wrong_type, "--data", toy_dataset, "--out", tmp_path / "r2"],
            "'train.learning_rate': expected a number",
        ),
        (
            ["train", good, "--set", "model.cell=transformer", "--out", tmp_path / "r3"],
            "allowed: lstm, gru, rnn",
        ),
        (
            ["train", good, "--data", tmp_path / "nowhere", "--out", tmp_path / "r4"],
            "data directory not found",
        ),
        (
            [
                "train",
                good,
                "--set",
                "data.train_split=training",
                "--data",
                toy_dataset,
                "--out",
                tmp_path / "r5",
            ],
            "no split 'training'",
        ),
        (
            [
                "train",
                good,
                "--set",
                "data.source_lang=fr",
                "--data",
                toy_dataset,
                "--out",
                tmp_path / "r6",
            ],
            "no column 'fr'",
        ),
        (
            [
                "train",
                good,
                "--set",
                "tokenizer.vocab_size=5000",
                "--data",
                toy_dataset,
                "--out",
                tmp_path / "r7",
            ],
            "'tokenizer.vocab_size': 5000 is too large",
        ),
        (["train", good, "--out", tmp_path / "r8"], "cannot load dataset 'toy/dataset'"),
        (["train", good, "--data", toy_dataset, "--out", trained], "already holds a run"),
        (["train", good, "--device", missing_gpu, "--out", tmp_path / "r9"], missing_gpu_error),
        (["translate", tmp_path / "nope"], "model not found"),
        (["translate", random_file], "not a readable nmt checkpoint"),
        (["translate", foreign], "not an nmt checkpoint"),
        (["translate", trained, "--beam-size", "0"], "--beam-size must be at least 1"),
        (["translate", trained, "--n-best", "4", "--beam-size", "2"], "--n-best"),
        (["translate", trained, "-i", tmp_path / "missing.txt", "-o", out], "input file not found"),
        (["translate", trained, "-i", bad_utf8, "-o", out], f"{bad_utf8}: line 3: not valid UTF-8"),
        (
            ["translate", trained, "-o", tmp_path / "no" / "dir.txt"],
            "output directory does not exist",
        ),
        (["evaluate", trained], "give either --source and --reference, or --split"),
        (
            ["evaluate", trained, "--source", good, "--reference", tmp_path / "gone.txt"],
            "input file not found",
        ),
        (["average", tmp_path, "-o", out], "no step checkpoints"),
        (["average", trained, "-o", out, "--last", "0"], "--last must be at least 1"),
        (
            ["train", good, "--set", "model.embedding_size=-8", "--out", tmp_path / "r10"],
            "'model.embedding_size': must be greater than 0",
        ),
        (
            ["train", good, "--set", "train.batch_tokens=0", "--out", tmp_path / "r11"],
            "'train.batch_tokens': must be greater than 0",
        ),
        (
            ["train", good, "--set", "model.dropout=2", "--out", tmp_path / "r12"],
            "'model.dropout': must lie between 0 and 1",
        ),
        (["train", good, "--set", "model.cell", "--out", tmp_path / "r13"], "section.key=value"),
        (
            ["train", good, "--set", "model.input_feeding=maybe", "--out", tmp_path / "r14"],
            "expected true or false",
        ),
        (["train", good, "--data", empty_train, "--out", tmp_path / "r15"], "is empty"),
        (
            [
                "train",
                good,
                "--set",
                "data.valid_split=dev",
                "--data",
                toy_dataset,
                "--out",
                tmp_path / "r16",
            ],
            "no split 'dev'",
        ),
        (
            [
                "train",
                good,
                "--set",
                "train.max_length=1",
                "--data",
                toy_dataset,
                "--out",
                tmp_path / "r17",
            ],
            "no training pair is non-empty and within train.max_length 1",
        ),
        (
            [
                "train",
                good,
                "--set",
                "model.decoder_hidden_size=40",
                "--init-from",
                trained,
                "--data",
                toy_dataset,
                "--out",
                tmp_path / "r18",
            ],
            "must match the initial model",
        ),
        (
            [
                "train",
                good,
                "--init-from",
                random_file,
                "--data",
                toy_dataset,
                "--out",
                tmp_path / "r19",
            ],
            "not a readable nmt checkpoint",
        ),
        (
            ["train", good, "--threads", "0", "--data", toy_dataset, "--out", tmp_path / "r20"],
            "--threads must be at least 1",
        ),
        (["translate", truncated], "not a readable nmt checkpoint"),
        (["translate", mismatched], "does not fit this model architecture"),
        (["translate", trained, "--batch-size", "0"], "--batch-size must be at least 1"),
        (["translate", trained, "--max-hypotheses", "0"], "--max-hypotheses must be at least 1"),
        (["translate", trained, "--max-length-ratio", "0"], "--max-length-ratio must be positive"),
        (["translate", trained, "-i", tmp_path], "input path is a directory"),
        (["translate", tmp_path / "empty_run"], "no checkpoint in directory"),
        (
            ["evaluate", trained, "--source", good, "--reference", bad_utf8],
            f"{bad_utf8}: line 3: not valid UTF-8",
        ),
        (["reproduce", unknown], "'model.hidden_size': unknown key"),
    ]
    assert len(cases) >= 30
    for args, fragment in cases:
        _assert_clean_error(_invoke(*args, input=""), fragment)
    assert not out.exists()  # no partial output file left behind
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    replaced = _invoke("translate", trained, "-i", bad_utf8, "--errors", "replace")
    assert replaced.exit_code == 0 and len(replaced.stdout.splitlines()) == 3
