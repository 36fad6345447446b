"""gptlab's float32 few-row matrix product (native/csrc/float_gemv.cpp) and the model's `Linear` that takes it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gptlab import native
from gptlab.config import ModelConfig
from gptlab.model import GPT
from gptlab.model import linear as linear_module
from gptlab.model.linear import Linear, few_rows_kernel_applies
from tests.conftest import kernel_for


def check_against_float64(kernel, rows: int, out_features: int, in_features: int, with_bias: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(rows, in_features, generator=g), torch.randn(out_features, in_features, generator=g)
    bias = torch.randn(out_features, generator=g) if with_bias else None
    expected = F.linear(x.double(), w.double(), bias.double() if with_bias else None)
    got = kernel.float_gemv(x, w, bias if with_bias else torch.empty(0))
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    # float32 sums of `in_features` products of unit normals: error ~ eps · √in · |terms|
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=2e-6 * in_features)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("out_features,in_features", [(1, 1), (7, 13), (9, 16), (33, 100), (768, 3072),
                                                      (50257, 64)])
def test_the_kernel_equals_the_float64_reference(isa, out_features, in_features):
    kernel = kernel_for(isa)
    for rows in (1, 2, 3, 4, 5, 9):  # 1-4 in one block, more in blocks of 4
        check_against_float64(kernel, rows, out_features, in_features, with_bias=rows % 2 == 1, seed=rows)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), out_features=st.integers(1, 70), in_features=st.integers(1, 130),
       with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_any_shape_equals_the_float64_reference(isa, rows, out_features, in_features, with_bias, seed):
    check_against_float64(kernel_for(isa), rows, out_features, in_features, with_bias, seed)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_the_kernel_refuses_bad_operands(isa):
    kernel = kernel_for(isa)
    x, w = torch.randn(2, 8), torch.randn(5, 8)
    with pytest.raises(RuntimeError, match="inputs but w has"):
        kernel.float_gemv(torch.randn(2, 9), w, torch.empty(0))
    with pytest.raises(RuntimeError, match="w must be contiguous float32"):
        kernel.float_gemv(x, torch.randn(8, 5).t(), torch.empty(0))
    with pytest.raises(RuntimeError, match="bias must be"):
        kernel.float_gemv(x, w, torch.randn(4))
    with pytest.raises(RuntimeError, match="x must be"):
        kernel.float_gemv(x.double(), w, torch.empty(0))


def test_the_layer_takes_the_kernel_only_for_a_few_rows_without_autograd():
    layer = Linear(16, 8)
    with torch.no_grad():
        assert few_rows_kernel_applies(torch.randn(1, 1, 16), layer.weight, layer.bias) == (native.load() is not None)
        assert not few_rows_kernel_applies(torch.randn(1, 5, 16), layer.weight, layer.bias)  # a prompt: the GEMM
        assert not few_rows_kernel_applies(torch.randn(1, 0, 16), layer.weight, layer.bias)
        assert not few_rows_kernel_applies(torch.randn(1, 1, 16).double(), layer.weight.double(), None)
    assert not few_rows_kernel_applies(torch.randn(1, 1, 16), layer.weight, layer.bias)  # training: autograd


def test_kernel_operands_are_refused_whenever_autograd_needs_a_gradient():
    x, w, bias = torch.randn(1, 8), torch.randn(4, 8), torch.randn(4)
    assert native.inference_operands(x, w, bias, torch.float32)  # grad mode, but nothing asks for a gradient
    for needs in (x, w, bias):
        needs.requires_grad_()
        assert not native.inference_operands(x, w, bias, torch.float32)
        with torch.no_grad():
            assert native.inference_operands(x, w, bias, torch.float32)
        needs.requires_grad_(False)
    assert not native.inference_operands(x, w, bias, torch.int8)  # the weights are not of the kernel's type
    assert not native.inference_operands(x, w.t(), None, torch.float32)  # not contiguous
    assert not native.inference_operands(x.double(), w, None, torch.float32)


def test_the_layer_gives_what_nn_linear_gives_and_still_trains():
    torch.manual_seed(0)
    ours, plain = Linear(48, 20), torch.nn.Linear(48, 20)
    plain.load_state_dict(ours.state_dict())
    for shape in [(1, 1, 48), (2, 1, 48), (4, 48), (3, 7, 48)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.allclose(ours(x), plain(x), rtol=1e-5, atol=1e-5)
    x = torch.randn(1, 1, 48, requires_grad=True)  # with autograd on: the library product, gradients as usual
    ours(x).sum().backward()
    assert torch.allclose(ours.weight.grad, x.detach().reshape(1, 48).expand(20, 48))


def test_decoding_with_and_without_the_kernel_gives_the_same_logits(monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=50, block_size=32)).eval()
    prompt = torch.tensor([[3, 1, 4, 1, 5]])

    def decode_logits():
        cache = model.new_cache(1, 16)
        with torch.no_grad():
            steps = [model(prompt, cache=cache)[:, -1]]
            for token in (9, 2, 6):
                steps.append(model(torch.tensor([[token]]), cache=cache)[:, -1])
        return torch.stack(steps)

    with_kernel = decode_logits()
    monkeypatch.setattr(linear_module, "FEW_ROWS", 0)
    assert torch.allclose(with_kernel, decode_logits(), rtol=1e-5, atol=1e-5)


def test_the_operator_runs_inside_a_compiled_graph():
    if native.load() is None:
        pytest.skip(f"the C++ kernels are not used here: {native.why_not}")
    layer = Linear(40, 24)
    x = torch.randn(1, 1, 40)
    compiled = torch.compile(lambda v: layer(v) * 1.0, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = F.linear(x, layer.weight, layer.bias)
        assert torch.allclose(compiled(x), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(native.operator("float_gemv")(x.view(1, 40), layer.weight, layer.bias),
                           native.load().float_gemv(x.view(1, 40), layer.weight, layer.bias))
