"""The gradient norm the trainer logs and clips with: torch's `get_total_norm` to float32 rounding, faster."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gptlab.train.grad_norm import total_norm


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=3), min_size=1, max_size=6),
       scale=st.sampled_from([1e-12, 1e-3, 1.0, 1e6]), seed=st.integers(0, 2**16))
def test_equals_torchs_total_norm(shapes, scale, seed):
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(*shape, generator=g) * scale for shape in shapes]
    expected = torch.nn.utils.get_total_norm(grads)
    norm = total_norm(grads)
    assert norm.dtype == torch.float32 and norm.shape == ()
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_large_tensor_and_a_transposed_one():
    grads = [torch.randn(3_000_000), torch.randn(300, 200).t()]  # the second is not contiguous: torch's path
    assert total_norm(grads).item() == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-6)


def test_squares_past_float32_and_non_finite_values_get_torchs_answer():
    huge = [torch.full((10,), 1e20), torch.ones(3)]  # each square overflows float32
    assert torch.equal(total_norm(huge), torch.nn.utils.get_total_norm(huge))
    assert math.isnan(total_norm([torch.ones(4), torch.tensor([float("nan")])]).item())
    assert math.isinf(total_norm([torch.tensor([float("inf"), 1.0])]).item())


def test_other_dtypes_and_no_gradients():
    bf16 = [torch.randn(50).bfloat16()]
    assert torch.equal(total_norm(bf16), torch.nn.utils.get_total_norm(bf16))
    assert total_norm([]).item() == 0.0
