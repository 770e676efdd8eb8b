"""Ensembles: decoding several models as one, and training an ensemble's members side by side."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli import app
from nmt import api
from nmt import checkpoint as ckpt
from nmt.batching import make_batch
from nmt.ensemble import Ensemble
from nmt.ensemble_training import expand_run_dir, member_recipe
from nmt.errors import CheckpointError, NmtError
from nmt.recipe import from_dict
from nmt.search import beam_search, greedy, max_output_lengths
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID

from .conftest import ROOT, cli_training_command, synthetic_pairs, tiny_model, toy_recipe

runner = CliRunner()


def _batch(tokenizer, n=6):
    src, _ = synthetic_pairs(n, seed=5)
    return make_batch(tokenizer.encode_source(src))


def test_one_member_searches_like_its_model(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer, seed=1)
    batch = _batch(toy_tokenizer)
    alone = beam_search(model, batch, beam_size=3, n_best=2, max_length=12)
    ensembled = beam_search(Ensemble([model]), batch, beam_size=3, n_best=2, max_length=12)
    assert [[h.tokens for h in n] for n in alone] == [[h.tokens for h in n] for n in ensembled]
    for a, b in zip(alone, ensembled, strict=True):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_a_step_scores_the_mean_of_the_members_probabilities(toy_tokenizer) -> None:
    first, second = tiny_model(toy_tokenizer, seed=1), tiny_model(toy_tokenizer, seed=2)
    batch = _batch(toy_tokenizer, 4)
    tokens = torch.tensor([4, 5, 6, 7])
    ensemble = Ensemble([first, second])
    with torch.inference_mode():
        memory, state = ensemble.encode(batch.src, batch.src_lengths)
        mixed, _ = ensemble.decode_step_logits(tokens, state, memory)
        expected = 0.0
        for model in (first, second):
            m, s = model.encode(batch.src, batch.src_lengths)
            logits, _ = model.decode_step_logits(tokens, s, m)
            expected = expected + torch.softmax(logits, dim=-1) / 2
    assert torch.allclose(mixed.exp(), expected, atol=1e-6)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(4), atol=1e-5)  # a distribution
    single, _ = first.decode_step(tokens, *reversed(first.encode(batch.src, batch.src_lengths)))
    assert not torch.allclose(mixed, single, atol=1e-3)  # the second member changes the step


def test_ensemble_searches_follow_the_mixed_distribution(toy_tokenizer) -> None:
    """Greedy over an ensemble picks, at each step, the argmax of the mean probabilities."""
    first, second = tiny_model(toy_tokenizer, seed=1), tiny_model(toy_tokenizer, seed=2)
    batch = _batch(toy_tokenizer, 3)
    ensemble = Ensemble([first, second])
    hyps = greedy(ensemble, batch, max_length=8)
    limits = max_output_lengths(batch.src_lengths, 2.0, 8)
    assert all(hyp.tokens for hyp in hyps)
    with torch.inference_mode():
        memory, state = ensemble.encode(batch.src, batch.src_lengths)
        for row, hyp in enumerate(hyps):
            keep = torch.tensor([row])
            m, s = memory.select(keep), state.select(keep)
            token, total = torch.tensor([BOS_ID]), 0.0
            for t, expected in enumerate([*hyp.tokens, EOS_ID]):
                log_probs, s = ensemble.decode_step_logits(token, s, m)
                log_probs[0, [PAD_ID, BOS_ID]] = -math.inf  # never chosen
                if t < limits[row]:  # at the limit, search may only end
                    assert int(log_probs.argmax()) == expected
                total += float(log_probs[0, expected])
                token = torch.tensor([expected])
            assert hyp.score == pytest.approx(total, abs=1e-4)


def test_members_must_share_the_vocabulary(toy_tokenizer) -> None:
    from nmt.recipe import TokenizerConfig
    from nmt.tokenizer import Tokenizer

    src, tgt = synthetic_pairs(400)
    other = Tokenizer.train(src, tgt, TokenizerConfig(type="unigram", vocab_size=50), seed=0)
    with pytest.raises(ValueError, match="differ in target vocabulary"):
        Ensemble([tiny_model(toy_tokenizer), tiny_model(other)])


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, toy_dataset):
    """A toy recipe with train.ensemble 2, trained through the API with 2 threads (1 each)."""
    root = tmp_path_factory.mktemp("ensemble")
    raw = toy_recipe(train={"ensemble": 2, "max_steps": 8}, decode={"average_checkpoints": 2})
    progress = api.train(
        from_dict(raw), root / "run", data_dir=toy_dataset, threads=2, progress_bar=False
    )
    assert progress.finished and progress.step == 8
    return root, raw


def test_members_are_ordinary_runs_with_consecutive_seeds(
    ensemble_run, tmp_path, toy_dataset
) -> None:
    root, raw = ensemble_run
    run = root / "run"
    first, second = run / "member-1", run / "member-2"
    assert expand_run_dir(run) == [first, second]
    assert from_dict(yaml.safe_load((run / "recipe.yaml").read_text())).train.ensemble == 2
    assert (run / "spm.model").read_bytes() == (first / "spm.model").read_bytes()
    assert (run / "spm.model").read_bytes() == (second / "spm.model").read_bytes()
    stored = [from_dict(yaml.safe_load((m / "recipe.yaml").read_text())) for m in (first, second)]
    assert [r.seed for r in stored] == [raw["seed"], raw["seed"] + 1]
    assert all(r.train.ensemble == 1 for r in stored)
    a, b = ckpt.read(first / "best.pt")["model"], ckpt.read(second / "best.pt")["model"]
    assert not all(torch.equal(a[k], b[k]) for k in a)  # another seed, another model
    # Member 1 is exactly the single run of its recipe (same seed, same one thread).
    alone = tmp_path / "alone"
    api.train(
        member_recipe(from_dict(raw), 0), alone, data_dir=toy_dataset, threads=1, progress_bar=False
    )
    c = ckpt.read(alone / "best.pt")["model"]
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_reproduce_decodes_the_members_as_one_ensemble(ensemble_run, toy_dataset) -> None:
    root, raw = ensemble_run
    run = root / "run"
    rows = api.reproduce(from_dict(raw), run, data_dir=toy_dataset, threads=2, progress_bar=False)
    assert {r.metric for r in rows} == {"bleu", "bleu_lc", "chrf"}
    assert (run / "member-1" / "averaged.pt").exists() and (
        run / "member-2" / "averaged.pt"
    ).exists()
    hyps = (run / "test.hyp.txt").read_text().splitlines()
    translator, rec = api.load_translator(
        [run / "member-1" / "averaged.pt", run / "member-2" / "averaged.pt"],
        decode=from_dict(raw).decode,
    )
    assert isinstance(translator.model, Ensemble)
    assert api.evaluate_split(translator, rec, "test", toy_dataset).hypotheses == hyps
    # The run directory stands for its members' best.pt on the command line.
    result = runner.invoke(
        app, ["evaluate", str(run), "--split", "test", "--data", str(toy_dataset)]
    )
    assert result.exit_code == 0 and result.stdout.startswith("bleu")


def test_ensemble_input_errors(ensemble_run, tmp_path, toy_dataset) -> None:
    root, raw = ensemble_run
    run = root / "run"
    other = tmp_path / "other"
    api.train(
        from_dict(toy_recipe(tokenizer={"vocab_size": 50}, train={"max_steps": 2})),
        other,
        data_dir=toy_dataset,
        progress_bar=False,
    )
    with pytest.raises(CheckpointError, match="uses another tokenizer"):
        api.load_translator([run / "member-1", other])
    result = runner.invoke(
        app, ["translate", str(run / "member-1"), str(other)], input="der hund\n"
    )
    assert result.exit_code == 1 and "uses another tokenizer" in result.stderr
    assert "Traceback" not in result.output
    api.build_shortlist(run / "member-1", tmp_path / "list.pt", data_dir=toy_dataset)
    with pytest.raises(NmtError, match="not with several models"):
        api.load_translator(run, shortlist=tmp_path / "list.pt")
    result = runner.invoke(app, ["average", str(run), "-o", str(tmp_path / "avg.pt")])
    assert result.exit_code == 1 and "holds an ensemble: average each" in result.stderr
    with pytest.raises(NmtError, match="--init-from does not apply"):
        api.train(from_dict(raw), tmp_path / "x", data_dir=toy_dataset, init_from=other)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_signals_stop_every_member_at_a_checkpoint_and_resume_continues(
    tmp_path, toy_dataset
) -> None:
    recipe = tmp_path / "toy.yaml"
    raw = toy_recipe(
        train={"ensemble": 2, "max_steps": 100000, "validate_every": 1000, "max_epochs": 1000}
    )
    recipe.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    command = cli_training_command("train", recipe, toy_dataset, tmp_path / "run")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stderr is not None
    started: set[str] = set()
    for line in proc.stderr:
        if line.startswith("[member ") and "] step " in line:
            started.add(line.split("]")[0])
            if len(started) == 2:  # both members are training
                proc.send_signal(signal.SIGTERM)
                break
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest
    assert "SIGTERM: passing it on to the ensemble members" in rest
    steps = []
    for member in ("member-1", "member-2"):
        (saved,) = ckpt.step_checkpoints(tmp_path / "run" / member)
        steps.append(ckpt.read(saved)["training"]["progress"]["step"])
    assert min(steps) >= 2
    # The same command with --resume continues both members from their checkpoints; killed
    # outright this time, the parent cannot pass a signal on: the members stop by themselves
    # (each notices the parent's exit after its step), each with a checkpoint.
    again = subprocess.Popen(
        [*command, "--resume"], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert again.stderr is not None
    resumed: dict[int, int] = {}  # member -> step it resumed from
    training: set[str] = set()
    lines = []
    for line in again.stderr:
        lines.append(line)
        if "] resuming " in line:  # "[member K] resuming DIR from step N"
            resumed[int(line.split("]")[0].split()[1])] = int(line.split()[-1])
        if "] step " in line:
            training.add(line.split("]")[0])
            if len(training) == 2:
                again.send_signal(signal.SIGKILL)
                break
    lines.append(again.communicate(timeout=60)[1])
    assert resumed == {1: steps[0], 2: steps[1]}
    deadline = time.monotonic() + 90
    while True:
        latest = [
            ckpt.step_checkpoints(tmp_path / "run" / member)[-1]
            for member in ("member-1", "member-2")
        ]
        after = [int(p.stem.split("-")[1]) for p in latest]
        if all(a > b for a, b in zip(after, steps, strict=True)):
            break
        assert time.monotonic() < deadline, (after, steps, "".join(lines)[-2000:])
        time.sleep(0.5)
    for path in latest:  # complete checkpoints, written by the stop path
        assert ckpt.read(path)["training"]["progress"]["step"] == int(path.stem.split("-")[1])
