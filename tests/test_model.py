import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT, count_parameters, flops_per_token
from gptlab.model.flops import embedding_parameters

SCHEMES = ["learned", "sinusoidal", "rope", "alibi", "none"]


def small(positions="learned", **kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=53, n_layer=2, n_head=3, n_embd=24, block_size=48, positions=positions, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("positions", SCHEMES)
@settings(max_examples=8, deadline=None)
@given(length=st.integers(2, 40), prefix=st.integers(1, 39), batch=st.integers(1, 3), chunk=st.integers(1, 4))
def test_cached_decode_equals_full_forward(positions, length, prefix, batch, chunk):
    model = small(positions, rope_fraction=0.5)
    prefix = min(prefix, length - 1)
    idx = torch.randint(0, 53, (batch, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(batch, length)
        parts = [model(idx[:, :prefix], cache=cache)]
        for t in range(prefix, length, chunk):  # the rest in chunks of `chunk` tokens
            parts.append(model(idx[:, t: t + chunk], cache=cache))
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def reference_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The same model written out with explicit softmax attention: checks the fused path's masks and biases."""
    cfg, T = model.cfg, idx.shape[1]
    pos = torch.arange(T)
    x = model.positions.embed(model.wte(idx), pos)
    for block in model.h:
        h = block.ln_1(x)
        q, k, v = block.attn.c_attn(h).view(1, T, 3, cfg.n_head, cfg.head_dim).permute(2, 0, 3, 1, 4)
        q, k = model.positions.rotate(q, k, pos)
        scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
        bias = model.positions.attn_bias(pos, pos)
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, T, cfg.n_embd)
        x = x + block.attn.c_proj(y)
        x = x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(x)), approximate="tanh"))
    return model.lm_head(model.ln_f(x))


@pytest.mark.parametrize("positions", SCHEMES)
def test_fused_attention_matches_explicit_softmax(positions):
    model = small(positions)
    idx = torch.randint(0, 53, (1, 30))
    with torch.no_grad():
        assert torch.allclose(model(idx), reference_forward(model, idx), atol=1e-5)


def test_gpt2_small_parameter_count_and_flops():
    model = GPT(ModelConfig())  # GPT-2 124M
    assert count_parameters(model) == 124_439_808
    n = 124_439_808 - 1024 * 768
    assert flops_per_token(model, 1024) == 6 * n + 12 * 12 * 768 * 1024
    untied = GPT(ModelConfig(n_layer=1, tie_embeddings=False))
    tied = GPT(ModelConfig(n_layer=1))
    assert count_parameters(untied) - count_parameters(tied) == 50257 * 768
    assert embedding_parameters(untied) == 2 * 50257 * 768 + 1024 * 768


def test_tied_head_is_the_embedding_and_untied_is_not():
    m = small()
    assert m.lm_head.weight.data_ptr() == m.wte.weight.data_ptr()
    u = small(tie_embeddings=False)
    assert u.lm_head.weight.data_ptr() != u.wte.weight.data_ptr()


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=1000, n_layer=8, n_head=4, n_embd=256, block_size=64))
    residual = 0.02 / math.sqrt(2 * 8)
    assert abs(model.h[0].attn.c_proj.weight.std().item() - residual) < 0.1 * residual
    assert abs(model.h[0].mlp.c_proj.weight.std().item() - residual) < 0.1 * residual
    assert abs(model.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.h[0].attn.c_attn.bias == 0)


def test_learned_positions_refuse_beyond_their_table_and_others_do_not():
    idx = torch.randint(0, 53, (1, 60))  # block_size is 48
    with pytest.raises(GptlabError, match="beyond the learned position table"):
        small("learned")(idx)
    for scheme in ["sinusoidal", "rope", "alibi", "none"]:
        assert small(scheme)(idx).shape == (1, 60, 53)


def test_no_bias_option_removes_every_bias():
    m = small(bias=False)
    assert not [n for n, _ in m.named_parameters() if n.endswith(".bias")]


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=53, n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.5))
    idx = torch.randint(0, 53, (2, 16))
    m.train()
    assert not torch.equal(m(idx), m(idx))
    m.eval()
    assert torch.equal(m(idx), m(idx))


@pytest.mark.parametrize("positions", SCHEMES)
def test_manual_attention_path_equals_the_fused_one_with_and_without_cache(positions):
    fused, manual = small(positions), small(positions, attention="manual")
    manual.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 53, (2, 30))
    with torch.no_grad():
        assert torch.allclose(manual(idx), fused(idx), atol=1e-5)
        cache = manual.new_cache(2, 30)
        steps = [manual(idx[:, :20], cache=cache)] + [manual(idx[:, t: t + 1], cache=cache) for t in range(20, 30)]
    assert torch.allclose(torch.cat(steps, 1), fused(idx), atol=1e-5)


def test_activation_checkpointing_keeps_gradients_and_holds_less():
    import copy

    from gptlab.train.efficiency import checkpoint_blocks, saved_bytes

    model = small().train()
    checkpointed = checkpoint_blocks(copy.deepcopy(model))
    idx = torch.randint(0, 53, (2, 40))
    assert saved_bytes(lambda: checkpointed(idx).sum()) < saved_bytes(lambda: model(idx).sum()) / 2
    model(idx).logsumexp(-1).sum().backward()
    checkpointed(idx).logsumexp(-1).sum().backward()
    for a, b in zip(model.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_relu2_mlp_and_zero_initialised_projections():
    import dataclasses

    from gptlab.model.mlp import MLP

    cfg = ModelConfig(vocab_size=20, n_layer=2, n_head=2, n_embd=16, block_size=8, activation="relu2")
    torch.manual_seed(0)
    mlp = MLP(cfg)
    x = torch.randn(3, 16)
    torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))
    torch.manual_seed(0)
    gelu = MLP(dataclasses.replace(cfg, activation="gelu"))
    assert not torch.allclose(gelu(x), mlp(x))
    model = GPT(dataclasses.replace(cfg, zero_init_proj=True))
    projections = [m for n, m in model.named_modules() if n.endswith("c_proj")]
    assert len(projections) == 4 and all(torch.count_nonzero(m.weight) == 0 for m in projections)
    assert torch.count_nonzero(model.h[0].mlp.c_fc.weight) > 0
    idx = torch.randint(0, 20, (2, 8))
    model(idx).sum().backward()  # every block starts as the identity, and its projections get gradients to grow
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in projections)
