"""gptlab's C++ decode attention (gptlab.native): the library's masked attention's result, for every instruction
set this CPU runs, and hidden slots never read."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from gptlab import native
from gptlab.model.attention import one_token_attention
from tests.conftest import kernel_for


def reference(q, k, v, visible):
    """float64 softmax(q·kᵀ/√d)·v over the visible slots."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (weights @ v.double()).float()


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_decode_attention_equals_the_float64_reference(isa):
    kernel = kernel_for(isa)  # built here, not inside a timed example (the first build takes ~30 s)

    @given(batch=st.integers(1, 2), heads=st.integers(1, 5), slots=st.integers(1, 70),
           head_dim=st.sampled_from([1, 7, 8, 16, 20, 64, 72]), seed=st.integers(0, 2**16))
    def check(batch, heads, slots, head_dim, seed):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(batch, heads, 1, head_dim, generator=g)
        k, v = (torch.randn(batch, heads, slots, head_dim, generator=g) for _ in range(2))
        visible = torch.rand(1, slots, generator=g) < 0.6  # (query, slot), as the attention builds it
        visible[0, torch.randint(slots, (1,), generator=g)] = True  # at least one key to attend to
        got = kernel.decode_attention(q, k, v, visible)
        assert got.shape == (batch, heads, 1, head_dim)
        assert torch.allclose(got, reference(q, k, v, visible), atol=1e-5, rtol=1e-5)
        library = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        assert torch.allclose(got, library, atol=1e-5, rtol=1e-5)

    check()


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_hidden_slots_are_never_read(isa):
    kernel = kernel_for(isa)
    q, k, v = torch.randn(1, 3, 1, 16), torch.randn(1, 3, 40, 16), torch.randn(1, 3, 40, 16)
    visible = torch.arange(40)[None] < 25  # the slots a fixed-size cache has written so far
    expected = reference(q, k, v, visible)
    k[:, :, 25:], v[:, :, 25:] = float("nan"), float("nan")  # what an unread slot may hold
    assert torch.allclose(kernel.decode_attention(q, k, v, visible), expected, atol=1e-5)
    assert F.scaled_dot_product_attention(q, k, v, attn_mask=visible).isnan().all()  # the library reads them all


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_decode_attention_refuses_bad_operands(isa):
    kernel = kernel_for(isa)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(RuntimeError, match="one entry per slot"):
        kernel.decode_attention(q, k, k, torch.ones(4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernel.decode_attention(q, k.transpose(2, 3), k.transpose(2, 3), torch.ones(5, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="q must be"):
        kernel.decode_attention(q.double(), k, k, torch.ones(5, dtype=torch.bool))


def test_the_operator_and_the_module_give_the_same_result_and_compile():
    if native.load() is None:
        pytest.skip(f"the C++ kernels are not used here: {native.why_not}")
    q, k, v = torch.randn(1, 4, 1, 32), torch.randn(1, 4, 30, 32), torch.randn(1, 4, 30, 32)
    visible = torch.arange(30)[None] <= 11
    direct = native.load().decode_attention(q, k, v, visible)
    assert torch.equal(native.operator("decode_attention")(q, k, v, visible), direct)
    traced = torch.compile(lambda *a: one_token_attention(*a) * 1.0, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(traced(q, k, v, visible), direct)


def test_without_the_kernels_attention_takes_the_library_path(monkeypatch):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "why_not", "turned off by the test")
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    visible = torch.arange(9)[None] < 4
    with torch.no_grad():
        assert torch.allclose(one_token_attention(q, k, v, visible), reference(q, k, v, visible), atol=1e-5)


def gelu_inputs(n: int, seed: int) -> torch.Tensor:
    """Ordinary pre-activations, the saturated tails, zero and tiny values; n not a multiple of a vector."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.tensor([0.0, -0.0, 1e-8, -1e-8, 3.0, -3.0, 9.5, -9.5, 88.0, -88.0, 1e4, -1e4])
    return torch.cat([torch.randn(n, generator=g) * 3, torch.linspace(-12, 12, 997), edges])


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("n", [1, 15, 40_000])
def test_gelu_and_its_gradient_equal_the_float64_reference(isa, n):
    kernel = kernel_for(isa)
    x = gelu_inputs(n, seed=n)
    grad = torch.randn_like(x)
    x64 = x.double().requires_grad_()
    expected = F.gelu(x64, approximate="tanh")
    expected.backward(grad.double())
    assert torch.allclose(kernel.gelu_tanh(x).double(), expected.detach(), atol=1e-6, rtol=1e-6)
    torch_own = torch.ops.aten.gelu_backward(grad, x, approximate="tanh").double()  # torch's float32, as a yardstick
    error = (kernel.gelu_tanh_backward(grad, x).double() - x64.grad).abs().max()
    assert error <= max(1e-5, 2 * (torch_own - x64.grad).abs().max())


def test_the_model_gelu_trains_as_torchs_does(monkeypatch):
    from gptlab.model.gelu import gelu_tanh

    x = gelu_inputs(2999, seed=1).reshape(-1, 8).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    (gelu_tanh(x) * torch.arange(8)).sum().backward()
    (F.gelu(reference, approximate="tanh") * torch.arange(8)).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-5)
    with torch.no_grad():  # decoding: the kernel without autograd, the same values
        assert torch.allclose(gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=1e-6)
    monkeypatch.setattr(native, "_module", None)  # a machine without the kernels: torch's, exactly
    monkeypatch.setattr(native, "why_not", "turned off by the test")
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("rows,vocab", [(1, 1), (7, 17), (33, 85), (4, 50257)])
def test_cross_entropy_and_its_gradient_equal_the_float64_reference(isa, rows, vocab):
    kernel = kernel_for(isa)
    g = torch.Generator().manual_seed(rows * vocab)
    logits = torch.randn(rows, vocab, generator=g) * 4
    logits[0, 0] = 60.0  # a confident row: the sum is dominated by one term
    targets = torch.randint(vocab, (rows,), generator=g)
    if rows > 1:
        targets[1] = -100  # left out, as the library's ignore_index
    x64 = logits.double().requires_grad_()
    expected = F.cross_entropy(x64, targets)
    expected.backward(torch.tensor(0.5, dtype=torch.float64))
    loss, lse = kernel.cross_entropy(logits, targets)
    assert abs(loss.item() - expected.item()) <= 1e-5 * max(1.0, abs(expected.item()))
    assert torch.allclose(lse.double(), torch.logsumexp(x64.detach(), -1), atol=1e-5)
    loss_too, unit_grad = kernel.cross_entropy_with_grad(logits, targets)
    assert abs(loss_too.item() - expected.item()) <= 1e-5 * max(1.0, abs(expected.item()))
    assert torch.allclose(0.5 * unit_grad.double(), x64.grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_cross_entropy_refuses_a_target_outside_the_vocabulary(isa):
    kernel = kernel_for(isa)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        kernel.cross_entropy(torch.randn(3, 10), torch.tensor([1, 10, 2]))
    with pytest.raises(RuntimeError, match="one entry per row"):
        kernel.cross_entropy(torch.randn(3, 10), torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        kernel.cross_entropy_with_grad(torch.randn(3, 10), torch.tensor([1, -1, 2]))


def test_the_training_loss_is_the_library_cross_entropy(monkeypatch):
    from gptlab.train.losses import lm_loss

    logits = (torch.randn(2, 9, 85) * 3).requires_grad_()
    targets = torch.randint(85, (2, 9))
    reference = logits.detach().clone().requires_grad_()
    loss = lm_loss(logits, targets)
    expected = F.cross_entropy(reference.view(-1, 85), targets.view(-1))
    (loss * 3).backward()
    (expected * 3).backward()
    assert torch.allclose(loss, expected, atol=1e-6) and torch.allclose(logits.grad, reference.grad, atol=1e-7)
    # an incoming gradient of 1 (the gradient computed with the loss, handed on as it is), twice over one graph
    logits.grad = reference.grad = None
    loss = lm_loss(logits, targets)
    loss.backward(retain_graph=True)
    loss.backward()
    F.cross_entropy(reference.view(-1, 85), targets.view(-1)).backward()
    assert torch.allclose(logits.grad, 2 * reference.grad, atol=1e-7)
    with torch.no_grad():  # no gradient asked for: the loss alone
        assert torch.allclose(lm_loss(logits, targets), expected, atol=1e-6)
    monkeypatch.setattr(native, "_module", None)  # a machine without the kernels: the library's, exactly
    monkeypatch.setattr(native, "why_not", "turned off by the test")
    assert torch.equal(lm_loss(logits, targets), F.cross_entropy(logits.view(-1, 85), targets.view(-1)))


def test_a_lock_left_by_a_killed_load_does_not_block_the_next(tmp_path):
    """torch's builder takes its lock file on every load; a finished build is imported without it."""
    import os
    import shutil
    import subprocess
    import sys

    if not native.supported_isas():
        pytest.skip("no kernel build for this CPU")
    isa = native.supported_isas()[0]
    kernel_for(isa)  # the session's build, copied below rather than built again (~30 s)
    built = native.build_directory(isa)
    copy = tmp_path / built.name
    shutil.copytree(built, copy)
    (copy / "lock").touch()  # what a process killed while loading leaves behind
    code = f"from gptlab import native; print(native.build('{isa}').isa)"
    env = {**os.environ, "GPTLAB_KERNEL_CACHE": str(tmp_path)}
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == isa
    assert "building" not in again.stderr
