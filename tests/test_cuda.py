"""The CUDA path: training, decoding and checkpoints move between GPU and CPU.

Skipped where no GPU is present (as in CI); run on a GPU machine with plain `pytest`.
"""

import functools
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli import app
from nmt import api
from nmt import checkpoint as ckpt
from nmt.batching import make_batch
from nmt.recipe import from_dict
from nmt.search import beam_search, greedy

from .conftest import synthetic_pairs, tiny_model, toy_recipe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """TF32 would round GPU matmuls to 10-bit mantissas; the comparisons here are with fp32 CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize(
    "changes", [{}, {"attention": "bahdanau", "cell": "gru"}, {"input_feeding": False}]
)
def test_search_on_gpu_equals_cpu(toy_tokenizer, changes) -> None:
    model = tiny_model(toy_tokenizer, seed=5, **changes)
    src, _ = synthetic_pairs(16, seed=8)
    batch = make_batch(toy_tokenizer.encode_source(src))
    cpu_beam = beam_search(model, batch, beam_size=4, n_best=2, length_penalty_alpha=0.6)
    cpu_greedy = greedy(model, batch)
    model.cuda()
    gpu_beam = beam_search(
        model, batch.to(torch.device("cuda")), beam_size=4, n_best=2, length_penalty_alpha=0.6
    )
    gpu_greedy = greedy(model, batch.to(torch.device("cuda")))
    assert [[h.tokens for h in n] for n in gpu_beam] == [[h.tokens for h in n] for n in cpu_beam]
    assert [h.tokens for h in gpu_greedy] == [h.tokens for h in cpu_greedy]
    for g, c in zip(gpu_beam, cpu_beam, strict=True):
        assert [h.score for h in g] == pytest.approx([h.score for h in c], rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_gpu_learns_and_loads_on_cpu(tmp_path, toy_dataset, precision) -> None:
    rec = from_dict(toy_recipe(train={"max_steps": 30, "precision": precision}))
    progress = api.train(rec, tmp_path, data_dir=toy_dataset, device="cuda", progress_bar=False)
    assert progress.step == 30 and progress.skipped_steps == 0
    losses = [
        r["train_loss"]
        for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if "train_loss" in r
    ]
    assert losses[-1] < losses[0] * 0.9
    payload = ckpt.read(ckpt.step_checkpoints(tmp_path)[-1])
    assert all(t.device.type == "cpu" for t in payload["model"].values())
    translator, _ = api.load_translator(tmp_path / "best.pt", device="cpu")
    assert len(api.translate_lines(translator, ["der hund", "", "die katze"])) == 3


@pytest.fixture
def deterministic_kernels():
    """Atomic adds (embedding gradients) make GPU runs differ in the last bits from run to run;
    resumption is only comparable with deterministic kernels."""
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_gpu_run_resumes_on_the_same_trajectory(
    tmp_path, toy_dataset, deterministic_kernels
) -> None:
    rec = from_dict(toy_recipe(train={"max_steps": 12}))
    api.train(rec, tmp_path / "straight", data_dir=toy_dataset, device="cuda", progress_bar=False)

    def interrupt(trainer) -> None:
        if trainer.progress.step == 5:
            trainer.stop_request.signal_name = "SIGTERM"

    resumed = functools.partial(
        api.train, rec, tmp_path / "resumed", data_dir=toy_dataset, device="cuda"
    )
    first = resumed(progress_bar=False, trainer_hook=interrupt)
    assert first.step == 5 and not first.finished
    second = resumed(progress_bar=False, resume=True)
    assert second.step == 12 and second.finished
    a = ckpt.read(ckpt.step_checkpoints(tmp_path / "straight")[-1])["model"]
    b = ckpt.read(ckpt.step_checkpoints(tmp_path / "resumed")[-1])["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), (name, float((a[name] - b[name]).abs().max()))


def test_cli_trains_and_translates_on_gpu(tmp_path, toy_dataset) -> None:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe(train={"max_steps": 8})), encoding="utf-8")
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            *("train", str(recipe), "--data", str(toy_dataset)),
            *("--out", str(tmp_path / "run"), "--device", "cuda", "--no-progress"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    source = tmp_path / "in.txt"
    source.write_text("der hund\n\ndie katze läuft\n", encoding="utf-8")
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"out.{precision}.txt"
        result = runner.invoke(
            app,
            [
                *("translate", str(tmp_path / "run"), "-i", str(source), "-o", str(out)),
                *("--device", "cuda", "--precision", precision),
            ],
        )
        assert result.exit_code == 0, result.output
        lines = out.read_text(encoding="utf-8").split("\n")
        assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
