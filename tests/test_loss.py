import pytest
import torch

from nmt import api
from nmt import checkpoint as ckpt
from nmt.batching import make_batch
from nmt.loss import chunked_output_loss, sequence_loss
from nmt.recipe import from_dict

from .conftest import synthetic_pairs, tiny_model, toy_recipe


def _batch(tokenizer, n=6, seed=3):
    src, tgt = synthetic_pairs(n, seed)
    return make_batch(tokenizer.encode_source(src), tokenizer.encode_target(tgt))


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("chunk_elements", [1, 100, 600, 10**9])  # 1 row ... all rows at once
def test_chunked_loss_and_gradients_equal_the_full_logits(toy_tokenizer, chunk_elements) -> None:
    model = tiny_model(toy_tokenizer, seed=4, dropout=0.0).train()
    batch = _batch(toy_tokenizer)
    assert (batch.tgt_out == 0).any(), "the batch should hold padding"
    scale = 1.0 / batch.n_target_tokens

    reference = sequence_loss(model(batch), batch.tgt_out, 0.1)
    (reference * scale).backward()
    expected = _grads(model)

    loss = chunked_output_loss(
        model.attentional(batch), batch.tgt_out, model.decoder.output, 0.1, chunk_elements, scale
    )
    got = _grads(model)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-5, atol=1e-5)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)

    with torch.no_grad():  # validation: no backward, same sum
        plain = chunked_output_loss(
            model.attentional(batch), batch.tgt_out, model.decoder.output, 0.0, chunk_elements
        )
        torch.testing.assert_close(plain, sequence_loss(model(batch), batch.tgt_out, 0.0))


def test_chunked_loss_under_bf16_autocast(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer, seed=4).train()
    batch = _batch(toy_tokenizer)
    with torch.no_grad():
        reference = float(sequence_loss(model(batch), batch.tgt_out, 0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.attentional(batch)
    loss = chunked_output_loss(
        hidden, batch.tgt_out, model.decoder.output, 0.1, 200, 1.0, torch.bfloat16
    )
    assert float(loss) == pytest.approx(reference, rel=0.02)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_with_chunked_loss_follows_the_reference(tmp_path, toy_dataset) -> None:
    runs = {}
    for chunk in (0, 150):
        rec = from_dict(toy_recipe(train={"max_steps": 6, "loss_chunk_elements": chunk}))
        progress = api.train(rec, tmp_path / str(chunk), data_dir=toy_dataset, progress_bar=False)
        runs[chunk] = (progress, ckpt.read(ckpt.step_checkpoints(tmp_path / str(chunk))[-1]))
    (p0, a), (p1, b) = runs[0], runs[150]
    assert p0.step == p1.step == 6
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-5)
    assert p1.best_bleu == p0.best_bleu
