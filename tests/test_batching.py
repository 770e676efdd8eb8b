import torch

from nmt.batching import BucketedBatches, make_batch
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


def test_make_batch_pads_and_shifts() -> None:
    batch = make_batch([[5, 6, EOS_ID], [7, EOS_ID]], [[8, 9], [10]])
    assert batch.src.tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [3, 2]
    assert batch.tgt_in is not None and batch.tgt_out is not None
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, 9], [BOS_ID, 10, PAD_ID]]
    assert batch.tgt_out.tolist() == [[8, 9, EOS_ID], [10, EOS_ID, PAD_ID]]
    assert batch.n_target_tokens == 5


def _lengths(n: int, seed: int) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 40, (n,), generator=g).tolist(), torch.randint(
        1, 40, (n,), generator=g
    ).tolist()


def test_bucketed_batches_cover_everything_within_budget() -> None:
    src, tgt = _lengths(1000, 0)
    batches = BucketedBatches(src, tgt, batch_tokens=300, max_sentences=16, seed=1)
    epoch = batches.epoch(0)
    flat = sorted(i for b in epoch for i in b)
    assert flat == list(range(1000))
    for b in epoch:
        width = max(max(src[i], tgt[i] + 1) for i in b)
        assert len(b) <= 16
        assert len(b) == 1 or width * len(b) <= 300


def test_batch_order_depends_on_seed_and_epoch_only() -> None:
    src, tgt = _lengths(500, 1)
    a = BucketedBatches(src, tgt, 200, 32, seed=7)
    b = BucketedBatches(src, tgt, 200, 32, seed=7)
    assert a.epoch(3) == b.epoch(3)
    assert a.epoch(0) != a.epoch(1)
    assert BucketedBatches(src, tgt, 200, 32, seed=8).epoch(0) != a.epoch(0)


def test_buckets_group_similar_lengths() -> None:
    src, tgt = _lengths(2000, 2)
    epoch = BucketedBatches(src, tgt, 400, 64, seed=0).epoch(0)
    padded = sum(max(src[i] for i in b) * len(b) for b in epoch)
    assert sum(src) / padded > 0.8  # random batching would waste about half
