"""Dropout masks from random 64-bit words, torch's dropout beside them, and the recipe's choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt import api
from nmt import checkpoint as ckpt
from nmt.dropout import Dropout, dropout_mask, use_dropout_masks
from nmt.recipe import from_dict

from .conftest import tiny_model, toy_recipe


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_mask_keeps_one_minus_p_scaled(p) -> None:
    torch.manual_seed(0)
    mask = dropout_mask((1000, 1000), p, torch.empty((), dtype=torch.bfloat16))
    assert mask.shape == (1000, 1000) and mask.dtype == torch.bfloat16
    values = set(mask.unique().tolist())
    assert values == {0.0, float(torch.tensor(1 / (1 - p), dtype=torch.bfloat16))}
    assert abs(float((mask == 0).float().mean()) - p) < 0.003
    # rows are not copies of one another (each element is its own 16-bit draw)
    assert not torch.equal(mask[0], mask[1])


def test_dropout_module_draws_bits_or_torchs_masks() -> None:
    x = torch.randn(300, 400)
    bits, bernoulli = Dropout(0.3), Dropout(0.3, "bernoulli")
    torch.manual_seed(1)
    expected = F.dropout(x, 0.3, True)
    torch.manual_seed(1)
    assert torch.equal(bernoulli(x), expected)  # torch's dropout, draw for draw
    torch.manual_seed(1)
    dropped = bits(x)
    assert not torch.equal(dropped, expected)
    kept = dropped != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.01
    torch.testing.assert_close(dropped[kept], x[kept] / 0.7)
    for module in (bits, bernoulli):
        assert torch.equal(module.eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)


def test_use_dropout_masks_reaches_every_dropout_of_a_model(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer)
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    assert len(dropouts) >= 4  # source and target embeddings, encoder states, attentional vector
    assert all(m.masks == "bits" for m in dropouts)
    use_dropout_masks(model, "bernoulli")
    assert all(m.masks == "bernoulli" for m in dropouts)


def test_training_uses_the_recipes_dropout_masks_and_adam(tmp_path, toy_dataset) -> None:
    """The two train keys reach the model and the optimizer, and each moves the trajectory."""
    seen: dict[str, tuple[set[str], bool]] = {}
    params = {}
    for name, train in {
        "defaults": {},
        "bernoulli": {"dropout_masks": "bernoulli"},
        "unfused": {"fused_adam": False},
    }.items():

        def look(trainer, name=name) -> None:
            masks = {m.masks for m in trainer.model.modules() if isinstance(m, Dropout)}
            seen[name] = (masks, bool(trainer.optimizer.defaults["fused"]))

        rec = from_dict(toy_recipe(train={"max_steps": 4, **train}))
        api.train(rec, tmp_path / name, data_dir=toy_dataset, progress_bar=False, trainer_hook=look)
        params[name] = ckpt.read(ckpt.step_checkpoints(tmp_path / name)[-1])["model"]
    assert seen == {
        "defaults": ({"bits"}, True),
        "bernoulli": ({"bernoulli"}, True),
        "unfused": ({"bits"}, False),
    }
    for other in ("bernoulli", "unfused"):
        assert not all(torch.equal(params["defaults"][k], params[other][k]) for k in params[other])
