import itertools
import json
import math

import pytest
import torch

from nmt import api
from nmt import checkpoint as ckpt
from nmt import train as train_mod
from nmt.errors import CheckpointError, TrainingError
from nmt.recipe import from_dict

from .conftest import toy_recipe


def _params(run_dir, name=None):
    path = run_dir / name if name else ckpt.step_checkpoints(run_dir)[-1]
    return ckpt.read(path)["model"]


def test_run_directory_contents(tmp_path, toy_dataset) -> None:
    progress = api.train(
        from_dict(toy_recipe()), tmp_path / "run", data_dir=toy_dataset, progress_bar=False
    )
    run = tmp_path / "run"
    assert progress.step == 12 and progress.finished
    names = {p.name for p in run.iterdir()}
    assert {"best.pt", "metrics.jsonl", "train.log", "recipe.yaml", "spm.model"} <= names
    assert [p.name for p in ckpt.step_checkpoints(run)] == ["step-00000008.pt", "step-00000012.pt"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if "valid_bleu" in r]
    assert [r["step"] for r in validations] == [4, 8, 12]
    assert all({"valid_loss", "valid_ppl", "valid_chrf", "lr"} <= r.keys() for r in validations)
    assert any("tokens_per_s" in r for r in records)
    best = ckpt.read(run / "best.pt")
    assert "training" not in best and best["metrics"]["valid_bleu"] == progress.best_bleu


def test_refuses_to_overwrite_a_run(tmp_path, toy_dataset) -> None:
    rec = from_dict(toy_recipe(train={"max_steps": 4}))
    api.train(rec, tmp_path, data_dir=toy_dataset, progress_bar=False)
    with pytest.raises(TrainingError, match="already holds a run; use --resume"):
        api.train(rec, tmp_path, data_dir=toy_dataset, progress_bar=False)
    api.train(rec, tmp_path, data_dir=toy_dataset, progress_bar=False, overwrite=True)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-00000004.pt"]


def test_same_seed_same_parameters(tmp_path, toy_dataset) -> None:
    rec = from_dict(toy_recipe(train={"max_steps": 6}))
    api.train(rec, tmp_path / "a", data_dir=toy_dataset, progress_bar=False)
    api.train(rec, tmp_path / "b", data_dir=toy_dataset, progress_bar=False)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = from_dict(toy_recipe(seed=4, train={"max_steps": 6}))
    api.train(other, tmp_path / "c", data_dir=toy_dataset, progress_bar=False)
    c = _params(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].shape == c[k].shape)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"train": {"lr_schedule": "cosine", "min_learning_rate": 1e-4}},
        {"train": {"lr_schedule": "wsd", "lr_decay_fraction": 0.5}},
        {"tokenizer": {"sampling_alpha": 0.3}, "train": {"batch_tokens": 1600}},
        {"train": {"dropout_masks": "bernoulli", "fused_adam": False}},
        {"train": {"ema_decay": 0.8}},
    ],
    ids=["plateau", "cosine", "wsd", "subword-sampling", "torch-dropout-and-adam", "ema"],
)
def test_interrupted_and_resumed_run_continues_the_same_trajectory(
    tmp_path, toy_dataset, changes
) -> None:
    """A stop request (as from SIGINT/SIGTERM) at step 5 then --resume == one uninterrupted run.

    With subword sampling (10 batches an epoch) the run resumes in the first epoch and goes
    on into the second, whose segmentation is drawn anew."""
    rec = from_dict(toy_recipe(**changes))
    api.train(rec, tmp_path / "straight", data_dir=toy_dataset, progress_bar=False)

    def interrupt(trainer) -> None:
        if trainer.progress.step == 5:
            trainer.stop_request.signal_name = "SIGTERM"

    first = api.train(
        rec, tmp_path / "resumed", data_dir=toy_dataset, progress_bar=False, trainer_hook=interrupt
    )
    assert first.step == 5 and not first.finished
    assert [p.name for p in ckpt.step_checkpoints(tmp_path / "resumed")][-1] == "step-00000005.pt"
    second = api.train(
        rec, tmp_path / "resumed", data_dir=toy_dataset, progress_bar=False, resume=True
    )
    assert second.step == 12 and second.finished
    names = [None] + ([ckpt.EMA] if rec.train.ema_decay else [])
    for name in names:
        a, b = _params(tmp_path / "straight", name), _params(tmp_path / "resumed", name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert (
        json.loads((tmp_path / "straight/metrics.jsonl").read_text().splitlines()[-1])["valid_loss"]
        == json.loads((tmp_path / "resumed/metrics.jsonl").read_text().splitlines()[-1])[
            "valid_loss"
        ]
    )


def test_moving_average_of_the_weights_follows_every_step(tmp_path, toy_dataset) -> None:
    """ema.pt holds decay * ema + (1 - decay) * weights over the steps, starting from the first
    step's weights, and keeping it leaves the trajectory exactly as it is without one."""
    decay = 0.7
    seen: list[dict[str, torch.Tensor]] = []

    def record(trainer) -> None:
        seen.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    rec = from_dict(toy_recipe(train={"ema_decay": decay}))
    api.train(rec, tmp_path / "ema", data_dir=toy_dataset, progress_bar=False, trainer_hook=record)
    api.train(from_dict(toy_recipe()), tmp_path / "plain", data_dir=toy_dataset, progress_bar=False)
    assert len(seen) == 12
    expected = dict(seen[0])
    for weights in seen[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    payload = ckpt.read(tmp_path / "ema" / ckpt.EMA)
    assert payload["step"] == 12 and payload["metrics"] == {"ema_decay": decay}
    for key, value in payload["model"].items():
        torch.testing.assert_close(value, expected[key])
    last, plain = _params(tmp_path / "ema"), _params(tmp_path / "plain")
    assert all(torch.equal(last[k], plain[k]) for k in last)
    assert any(not torch.equal(last[k], payload["model"][k]) for k in last)
    assert not (tmp_path / "plain" / ckpt.EMA).exists()


def test_reproduce_decodes_the_moving_average(tmp_path, toy_dataset) -> None:
    raw = toy_recipe(train={"ema_decay": 0.5}, decode={"use_ema": True})
    run = tmp_path / "run"
    api.reproduce(from_dict(raw), run, data_dir=toy_dataset, progress_bar=False)
    hyps = (run / "test.hyp.txt").read_text(encoding="utf-8").splitlines()

    def decoded(name: str) -> list[str]:
        translator, rec = api.load_translator([run / name], decode=from_dict(raw).decode)
        return api.evaluate_split(translator, rec, "test", toy_dataset).hypotheses

    assert decoded(ckpt.EMA) == hyps
    assert decoded(ckpt.BEST) != hyps


def test_cosine_schedule_falls_from_the_base_rate_to_the_floor() -> None:
    config = from_dict(
        toy_recipe(
            train={
                "lr_schedule": "cosine",
                "learning_rate": 0.002,
                "min_learning_rate": 1e-5,
                "warmup_steps": 10,
            }
        )
    ).train
    rates = [train_mod.learning_rate(config, train_mod.Progress(step=s), 110) for s in range(120)]
    assert rates[0] == pytest.approx(0.002 / 10)  # warm-up
    assert rates[9] == pytest.approx(0.002)
    assert rates[59] == pytest.approx((0.002 + 1e-5) / 2)  # half-way through the decay
    assert all(a > b for a, b in itertools.pairwise(rates[9:110]))
    assert rates[109:] == [pytest.approx(1e-5)] * 11  # the floor from the planned end on
    # a plateau never changes the cosine rate
    plateau = train_mod.Progress(step=59, lr_scale=0.25)
    assert train_mod.learning_rate(config, plateau, 110) == rates[59]


def test_wsd_schedule_holds_the_base_rate_then_falls_linearly_to_the_floor() -> None:
    config = from_dict(
        toy_recipe(
            train={
                "lr_schedule": "wsd",
                "learning_rate": 0.002,
                "min_learning_rate": 1e-5,
                "lr_decay_fraction": 0.25,
                "warmup_steps": 10,
            }
        )
    ).train
    rates = [train_mod.learning_rate(config, train_mod.Progress(step=s), 200) for s in range(220)]
    assert rates[0] == pytest.approx(0.002 / 10)  # warm-up
    assert rates[9:150] == [pytest.approx(0.002)] * 141  # stable until the last 50 steps
    falls = [a - b for a, b in itertools.pairwise(rates[149:200])]
    assert falls == [pytest.approx((0.002 - 1e-5) / 50)] * 50  # one straight line ...
    assert rates[199:] == [pytest.approx(1e-5)] * 21  # ... to the floor at the planned end
    # a plateau never changes the wsd rate
    plateau = train_mod.Progress(step=170, lr_scale=0.25)
    assert train_mod.learning_rate(config, plateau, 200) == rates[170]


def test_wsd_run_decays_only_at_the_end(tmp_path, toy_dataset) -> None:
    rec = from_dict(
        toy_recipe(
            train={"lr_schedule": "wsd", "lr_decay_fraction": 0.5, "min_learning_rate": 1e-4}
        )
    )
    api.train(rec, tmp_path, data_dir=toy_dataset, progress_bar=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records if "valid_bleu" in r]
    # validations after steps 4, 8, 12 of 12: the decay spans the last 6
    assert rates[0] == pytest.approx(rec.train.learning_rate)
    assert rec.train.learning_rate > rates[1] > 1e-4
    assert rates[-1] == pytest.approx(1e-4)


def test_cosine_run_ends_at_the_floor(tmp_path, toy_dataset) -> None:
    rec = from_dict(toy_recipe(train={"lr_schedule": "cosine", "min_learning_rate": 1e-4}))
    api.train(rec, tmp_path, data_dir=toy_dataset, progress_bar=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records if "valid_bleu" in r]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    assert rates[-1] == pytest.approx(1e-4)


def test_time_budget_counts_the_minutes_before_a_resume(tmp_path, toy_dataset, caplog) -> None:
    """train.max_minutes stops at the first step past the budget, the resumed part included."""
    rec = from_dict(toy_recipe(train={"max_minutes": 3.5}))

    def minute_per_step(trainer) -> None:  # each step "takes" a minute
        trainer.progress.train_seconds += 60
        if trainer.progress.step == 2 and not trainer.stop_request:
            trainer.stop_request.signal_name = "SIGTERM"

    first = api.train(
        rec, tmp_path, data_dir=toy_dataset, progress_bar=False, trainer_hook=minute_per_step
    )
    assert first.step == 2 and not first.finished
    caplog.set_level("INFO", logger="nmt")
    second = api.train(
        rec,
        tmp_path,
        data_dir=toy_dataset,
        progress_bar=False,
        resume=True,
        trainer_hook=lambda t: setattr(t.progress, "train_seconds", t.progress.train_seconds + 60),
    )
    assert second.step == 4 and second.finished  # 12 steps without the budget
    assert second.elapsed_minutes >= 4 and second.valid_seconds > 0
    assert "reached train.max_minutes 3.5" in caplog.text


def test_non_finite_losses_are_skipped_then_stop(tmp_path, toy_dataset, monkeypatch) -> None:
    real = train_mod.chunked_output_loss  # the default loss path (train.loss_chunk_elements > 0)
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(train_mod, "chunked_output_loss", sometimes_nan)
    progress = api.train(
        from_dict(toy_recipe(train={"max_steps": 6, "validate_every": 100})),
        tmp_path / "a",
        data_dir=toy_dataset,
        progress_bar=False,
    )
    assert progress.skipped_steps == 2 and progress.step == 6
    assert all(torch.isfinite(v).all() for v in _params(tmp_path / "a").values())

    monkeypatch.setattr(train_mod, "chunked_output_loss", lambda *a, **k: real(*a, **k) * math.nan)
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        api.train(
            from_dict(toy_recipe(train={"max_bad_steps": 3})),
            tmp_path / "b",
            data_dir=toy_dataset,
            progress_bar=False,
        )
    assert ckpt.step_checkpoints(tmp_path / "b") == []


def test_out_of_memory_batch_is_skipped(tmp_path, toy_dataset, monkeypatch) -> None:
    real = train_mod.Trainer.train_step.__globals__["make_batch"]
    calls = {"n": 0}

    def oom_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "make_batch", oom_once)
    progress = api.train(
        from_dict(toy_recipe(train={"max_steps": 4, "validate_every": 100})),
        tmp_path,
        data_dir=toy_dataset,
        progress_bar=False,
    )
    assert progress.step == 4 and progress.skipped_steps == 1


def test_init_from_another_model(tmp_path, toy_dataset) -> None:
    rec = from_dict(toy_recipe(train={"max_steps": 4}))
    api.train(rec, tmp_path / "parent", data_dir=toy_dataset, progress_bar=False)
    child = from_dict(
        toy_recipe(train={"max_steps": 2, "validate_every": 100}, tokenizer={"vocab_size": 55})
    )
    api.train(
        child,
        tmp_path / "child",
        data_dir=toy_dataset,
        progress_bar=False,
        init_from=tmp_path / "parent",
    )
    # The child kept the parent's tokenizer (vocabulary 60, not 55).
    assert (
        ckpt.read(ckpt.step_checkpoints(tmp_path / "child")[-1])["model"][
            "decoder.output.weight"
        ].shape[0]
        == 60
    )
    wider = from_dict(toy_recipe(model={"decoder_hidden_size": 32}))
    with pytest.raises(CheckpointError, match="must match the initial model"):
        api.train(
            wider,
            tmp_path / "wider",
            data_dir=toy_dataset,
            progress_bar=False,
            init_from=tmp_path / "parent",
        )


@pytest.mark.usefixtures("multi30k_dir")
def test_loss_falls_on_a_multi30k_slice(tmp_path, multi30k_dir) -> None:
    rec = from_dict(
        toy_recipe(
            data={
                "dataset": "bentrevett/multi30k",
                "max_train_examples": 1000,
                "max_valid_examples": 50,
            },
            tokenizer={"vocab_size": 400},
            model={"embedding_size": 32, "encoder_hidden_size": 32, "decoder_hidden_size": 64},
            train={
                "batch_tokens": 600,
                "max_steps": 200,
                "validate_every": 200,
                "log_every": 20,
                "learning_rate": 0.003,
            },
        )
    )
    api.train(rec, tmp_path, data_dir=multi30k_dir, progress_bar=False)
    losses = [
        json.loads(line)["train_loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in line
    ]
    assert len(losses) == 10
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.usefixtures("multi30k_dir")
def test_overfits_100_pairs(tmp_path, multi30k_dir) -> None:
    """The 'can it learn' test: 100 training pairs translated back with BLEU > 90."""
    rec = from_dict(
        toy_recipe(
            data={
                "dataset": "bentrevett/multi30k",
                "max_train_examples": 100,
                "max_valid_examples": 100,
                "valid_split": "train",
            },
            tokenizer={"vocab_size": 300},
            model={
                "embedding_size": 64,
                "encoder_hidden_size": 64,
                "decoder_hidden_size": 128,
                "dropout": 0.0,
                "embedding_dropout": 0.0,
                "word_dropout": 0.0,
            },
            train={
                "batch_tokens": 4000,
                "max_sentences": 100,
                "max_steps": 100,
                "validate_every": 100,
                "label_smoothing": 0.0,
                "learning_rate": 0.005,
                "log_every": 10,
            },
            decode={"beam_size": 1, "max_length": 200},
        )
    )
    progress = api.train(rec, tmp_path, data_dir=multi30k_dir, progress_bar=False)
    assert progress.best_bleu > 90


def test_subword_sampling_draws_a_new_segmentation_each_epoch(tmp_path, toy_dataset) -> None:
    rec = from_dict(toy_recipe(tokenizer={"sampling_alpha": 0.3}, train={"batch_tokens": 1600}))
    by_epoch: dict[int, list[list[int]]] = {}
    trainers = []

    def record(trainer) -> None:
        by_epoch.setdefault(trainer.progress.epoch, trainer.target_ids)
        trainers[:] = [trainer]

    api.train(rec, tmp_path / "run", data_dir=toy_dataset, progress_bar=False, trainer_hook=record)
    (trainer,) = trainers
    fixed = trainer.data.target_ids
    assert sorted(by_epoch) == [0, 1]  # 12 steps, 10 batches of 32 or fewer an epoch
    assert by_epoch[0] != by_epoch[1] and by_epoch[0] != fixed
    assert trainer.tokenizer.decode_target(by_epoch[1]) == trainer.tokenizer.decode_target(fixed)
