"""Training under faults (SIGKILL at random points, SIGTERM) and output to a closed pipe."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nmt import checkpoint as ckpt

from .conftest import ROOT, cli_training_command, synthetic_pairs, toy_recipe

RUNNER = Path(__file__).with_name("fault_runner.py")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}


def _start(recipe: Path, data: Path, out: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(recipe), str(data), str(out), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )


def _run_to_end(recipe: Path, data: Path, out: Path, mode: str) -> str:
    """Run the child until it finishes; its stdout."""
    proc = _start(recipe, data, out, mode)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    return stdout


def _kill_when(proc: subprocess.Popen, predicate) -> str:
    """Read the child's output until predicate(line) holds, then SIGKILL it."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if predicate(line.strip()):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return line.strip()
    proc.wait()
    raise AssertionError(
        f"child ended before the kill point: {proc.stderr.read() if proc.stderr else ''}"
    )


def test_sigkill_at_random_points_then_resume_matches_uninterrupted_run(
    tmp_path, toy_dataset
) -> None:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe(train={"max_steps": 40, "validate_every": 5})))
    straight = _run_to_end(recipe, toy_dataset, tmp_path / "straight", "plain")
    assert "DONE" in straight

    run = tmp_path / "killed"
    rng = random.Random(2026)
    kills = []
    first = rng.randint(6, 12)  # after the first checkpoint (step 5)
    kills.append(
        _kill_when(_start(recipe, toy_dataset, run, "random"), lambda s: s == f"STEP {first}")
    )
    # Killed halfway through writing a checkpoint: the temporary file is incomplete.
    kills.append(
        _kill_when(_start(recipe, toy_dataset, run, "pause-in-write"), lambda s: s == "WRITING")
    )
    assert list(run.glob(".*.pt.*.tmp")), "the kill should leave a partial temporary file"
    last_good = ckpt.step_checkpoints(run)[-1]
    ckpt.read(last_good)  # the previous checkpoints are intact
    ckpt.read(run / "best.pt")
    second = rng.randint(int(last_good.stem.split("-")[1]) + 2, 36)
    kills.append(
        _kill_when(_start(recipe, toy_dataset, run, "random"), lambda s: s == f"STEP {second}")
    )
    assert len(kills) == 3

    final = _run_to_end(recipe, toy_dataset, run, "random")
    assert "DONE" in final
    assert not list(run.glob(".*.tmp"))
    a = ckpt.read(ckpt.step_checkpoints(tmp_path / "straight")[-1])
    b = ckpt.read(ckpt.step_checkpoints(run)[-1])
    assert a["step"] == b["step"] == 40
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key])
    assert a["training"]["progress"]["best_bleu"] == b["training"]["progress"]["best_bleu"]
    steps = [
        line for line in (run / "metrics.jsonl").read_text().splitlines() if "valid_bleu" in line
    ]
    assert len(steps) == 8  # each validation recorded once, despite the repeated steps


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_sigterm_writes_a_checkpoint_and_stops(tmp_path, toy_dataset, command) -> None:
    """train exits 0 (a clean stop); reproduce exits 1 without scoring the half-trained model."""
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        yaml.safe_dump(
            toy_recipe(train={"max_steps": 100000, "validate_every": 1000, "max_epochs": 1000})
        )
    )
    proc = subprocess.Popen(
        cli_training_command(command, recipe, toy_dataset, tmp_path / "run"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("step "):  # training is under way
            proc.send_signal(signal.SIGTERM)
            break
    out, rest = proc.communicate(timeout=60)
    assert "SIGTERM received" in rest and "--resume" in rest
    saved = ckpt.step_checkpoints(tmp_path / "run")
    assert len(saved) == 1
    step = ckpt.read(saved[0])["training"]["progress"]["step"]
    assert step >= 2
    if command == "train":
        assert proc.returncode == 0
    else:
        assert proc.returncode == 1 and out == ""
        assert f"error: training stopped at step {step} before the recipe's end" in rest
        assert not (tmp_path / "run" / "test.hyp.txt").exists()


def test_closed_pipe_exits_quietly(tmp_path, toy_tokenizer) -> None:
    from nmt.recipe import from_dict

    from .conftest import tiny_model

    model_path = tmp_path / "model.pt"
    rec = from_dict(
        toy_recipe(
            model={"embedding_size": 16, "encoder_hidden_size": 12, "decoder_hidden_size": 20}
        )
    )
    model = tiny_model(toy_tokenizer)
    ckpt.atomic_save(ckpt.build_payload(rec, toy_tokenizer, model, 0), model_path)
    src, _ = synthetic_pairs(5000, seed=1)
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    result = subprocess.run(
        f"{sys.executable} {ROOT / 'cli.py'} translate {model_path} -i {tmp_path / 'in.txt'} "
        f"--beam-size 1 --batch-size 50 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        executable="/bin/bash",
    )
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr == ""
