"""gptlab's C++ causal attention for training (gptlab.native, csrc/causal_attention.cpp): the float64 reference's
output, log-sum-exp and gradients for every instruction set this CPU runs, and the model taking it exactly where
queries and keys go into attention as projected."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptlab import native
from gptlab.config import ModelConfig
from gptlab.model import GPT
from gptlab.model import attention as attention_module
from gptlab.model.causal_attention import kernel_applies
from gptlab.train.losses import lm_loss
from tests.conftest import kernel_for


def reference(qkv: torch.Tensor):
    """float64 output (B, T, H, D), log-sum-exp (B, H, T) and gradient function of the causal attention."""
    qkv64 = qkv.double().requires_grad_()
    q, k, v = qkv64.permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    T = qkv.shape[1]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2)

    def gradient(grad: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(y, qkv64, grad.double())
        return g

    return y.detach(), torch.logsumexp(scores.detach(), -1), gradient


def loaded_kernel():
    """The loaded kernels, when they can run the causal attention here; else a skip naming why not."""
    kernel = native.load()
    if kernel is None or not kernel.has_blas:
        pytest.skip(f"no causal attention kernel here: {native.why_not or 'torch exports no sgemm_'}")
    return kernel


def check(kernel, B: int, T: int, H: int, D: int, sharpness: float = 1.0, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3, H, D, generator=g)
    qkv[:, :, :2] *= sharpness  # larger q·k: peaked weights, the softmax's hard case
    grad = torch.randn(B, T, H, D, generator=g)
    y_ref, lse_ref, gradient = reference(qkv)
    expected = gradient(grad)
    outputs = []
    for keep in (False, True):  # the backward recomputing the weights, or reading those the forward kept
        y, lse, weights = kernel.causal_attention(qkv, keep)
        outputs.append(y)
        assert y.shape == (B, T, H, D) and lse.shape == (B, H, T)
        kept = sum(min(64, T - i0) * min(i0 + 64, T) for i0 in range(0, T, 64))  # blocks of 64 queries × keys seen
        assert kernel.kept_weights_per_pair(T) == kept
        assert weights.numel() == (B * H * kept if keep else 0)
        assert torch.allclose(y.double(), y_ref, atol=2e-6 * sharpness, rtol=1e-5)
        assert torch.allclose(lse.double(), lse_ref, atol=1e-5 * sharpness, rtol=1e-6)
        dqkv = kernel.causal_attention_backward(grad, qkv, y, lse, weights)
        assert torch.allclose(dqkv.double(), expected, atol=1e-5 * sharpness ** 2, rtol=1e-4)
    assert torch.equal(*outputs)  # keeping the weights changes no output bit (a model under no_grad as with grad)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("B,T,H,D,sharpness", [
    (1, 1, 1, 8, 1.0),      # one token sees itself only
    (2, 5, 3, 7, 1.0),      # D shorter than a vector
    (2, 100, 2, 32, 1.0),   # a partial second block of queries
    (1, 130, 2, 64, 3.0),   # three blocks, the last of two rows; sharp weights
    (4, 256, 2, 64, 1.0),   # the training shape's blocks
])
def test_causal_attention_and_its_gradient_equal_the_float64_reference(isa, B, T, H, D, sharpness):
    check(kernel_for(isa), B, T, H, D, sharpness)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 150), H=st.integers(1, 3), D=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_any_shape_matches_the_reference(B, T, H, D, seed):
    kernel = loaded_kernel()
    check(kernel, B, T, H, D, seed=seed)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(2, 140), cut=st.integers(0, 139), keep=st.booleans(), seed=st.integers(0, 2**16))
def test_no_query_sees_a_later_token(T, cut, keep, seed):
    """Changing the tokens after `cut` leaves every output up to `cut` bit for bit, and a loss on those outputs
    sends exactly no gradient to the later tokens: the blocks' hidden scores are computed but never used."""
    kernel = loaded_kernel()
    cut = cut % (T - 1)
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(2, T, 3, 2, 16, generator=g)
    changed = qkv.clone()
    changed[:, cut + 1:] = torch.randn(changed[:, cut + 1:].shape, generator=g) * 5
    y, lse, weights = kernel.causal_attention(qkv, keep)
    y_changed, lse_changed, _ = kernel.causal_attention(changed, keep)
    assert torch.equal(y[:, : cut + 1], y_changed[:, : cut + 1])
    assert torch.equal(lse[:, :, : cut + 1], lse_changed[:, :, : cut + 1])
    grad = torch.randn(y.shape, generator=g)
    grad[:, cut + 1:] = 0
    dqkv = kernel.causal_attention_backward(grad, qkv, y, lse, weights)
    assert torch.count_nonzero(dqkv[:, cut + 1:]) == 0


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_causal_attention_refuses_bad_operands(isa):
    kernel = kernel_for(isa)
    with pytest.raises(RuntimeError, match=r"\(B, T, 3, H, D\)"):
        kernel.causal_attention(torch.randn(2, 4, 2, 8), False)  # four dimensions
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernel.causal_attention(torch.randn(2, 4, 3, 1, 8).transpose(0, 1), False)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernel.causal_attention(torch.randn(2, 4, 3, 1, 8, dtype=torch.float64), False)
    qkv = torch.randn(2, 4, 3, 1, 8)
    y, lse, weights = kernel.causal_attention(qkv, True)
    with pytest.raises(RuntimeError, match="grad and y"):
        kernel.causal_attention_backward(torch.randn(2, 4, 8), qkv, y, lse, weights)
    with pytest.raises(RuntimeError, match="kept weights or empty"):
        kernel.causal_attention_backward(torch.randn(y.shape), qkv, y, lse, weights[1:])


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=80, vocab_size=50, bias=True, dropout=0.0)
    return GPT(ModelConfig(**{**cfg, **overrides}))


def loss_and_grads(model: GPT, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = lm_loss(model(x), x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_the_model_trains_as_with_torchs_attention(monkeypatch):
    loaded_kernel()
    model = tiny_model()
    x = torch.randint(50, (3, 70), generator=torch.Generator().manual_seed(1))  # 70: a partial second block
    calls = []
    kernel_path = attention_module.causal_attention
    monkeypatch.setattr(attention_module, "causal_attention", lambda qkv: calls.append(1) or kernel_path(qkv))
    loss, grads = loss_and_grads(model, x)
    assert len(calls) == 2  # one per layer
    monkeypatch.setattr(attention_module, "kernel_applies", lambda qkv, dropout: False)
    loss_ref, grads_ref = loss_and_grads(model, x)
    assert len(calls) == 2
    assert torch.allclose(loss, loss_ref, atol=1e-6)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("overrides,why", [
    ({"positions": "rope"}, "queries and keys are rotated"),
    ({"qk_norm": True}, "queries and keys are normalised"),
    ({"positions": "alibi"}, "attention has a bias"),
    ({"attention": "manual"}, "the materialised attention is asked for"),
    ({"dropout": 0.1}, "attention dropout while training"),
])
def test_torchs_attention_where_the_kernel_does_not_apply(monkeypatch, overrides, why):
    model = tiny_model(**overrides).train()
    calls = []
    monkeypatch.setattr(attention_module, "causal_attention", lambda qkv: calls.append(1))
    model(torch.randint(50, (2, 9)))
    assert calls == [], why


def test_kernel_applies_only_to_float32_cpu_tensors_and_with_the_kernels(monkeypatch):
    qkv = torch.randn(1, 4, 3, 1, 8)
    if native.load() is not None and native.load().has_blas:
        assert kernel_applies(qkv, 0.0)
    assert not kernel_applies(qkv, 0.1)
    assert not kernel_applies(qkv.double(), 0.0)
    assert not kernel_applies(qkv.bfloat16(), 0.0)
    monkeypatch.setattr(native, "_module", SimpleNamespace(has_blas=False))  # a torch without sgemm_
    assert not kernel_applies(qkv, 0.0)
    monkeypatch.setattr(native, "_module", None)  # a machine without a compiler: torch's attention
    monkeypatch.setattr(native, "why_not", "turned off by the test")
    assert not kernel_applies(qkv, 0.0)
    model = tiny_model()
    x = torch.randint(50, (2, 9))
    assert torch.isfinite(lm_loss(model(x), x))


def test_torch_compile_traces_torchs_attention_in_one_graph(monkeypatch):
    """A graph cannot call the Python module, and the compiler fuses torch's attention with its neighbours; the
    check must not send the tracer into native.load() (its lock would split the graph)."""
    calls = []
    monkeypatch.setattr(attention_module, "causal_attention", lambda qkv: calls.append(1))
    x = torch.randint(50, (2, 9))
    explained = torch._dynamo.explain(tiny_model().train())(x)
    assert explained.graph_break_count == 0 and calls == []
