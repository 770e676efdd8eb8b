import pytest
import torch

from nmt.attention import BahdanauAttention, LuongAttention


@pytest.mark.parametrize(
    ("attention", "query_size"),
    [
        (BahdanauAttention(6, 8), 6),
        (LuongAttention(6, 8, "general"), 6),
        (LuongAttention(8, 8, "dot"), 8),
    ],
)
def test_weights_sum_to_one_and_ignore_padding(attention, query_size: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(3, 4, query_size)
    memory = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    context, weights = attention(q, memory, attention.project_keys(memory), mask)
    assert context.shape == (3, 4, 8) and weights.shape == (3, 4, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    assert (weights[~mask.unsqueeze(1).expand_as(weights)] == 0).all()
    # Changing padded memory must not change anything.
    memory2 = memory.clone()
    memory2[1, 3:] = 100.0
    context2, _ = attention(q, memory2, attention.project_keys(memory2), mask)
    torch.testing.assert_close(context2[1], context[1])
    # The single visible position takes all the weight.
    torch.testing.assert_close(context[2], memory[2, 0].expand(4, 8))


def test_dot_attention_needs_equal_sizes() -> None:
    with pytest.raises(ValueError, match="equal sizes"):
        LuongAttention(6, 8, "dot")
