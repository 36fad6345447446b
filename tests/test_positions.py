"""RoPE context extension (linear, NTK-aware, YaRN) and learned positions past their table."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gptlab.config import ConfigError, ModelConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.model.positions import RotaryPositions, rope_frequencies

from tests.test_model import reference_forward

METHODS = ["linear", "ntk", "yarn"]


def rope_model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=53, n_layer=2, n_head=2, n_embd=32, block_size=16, positions="rope", **kw)).eval()


@pytest.mark.parametrize("method", METHODS)
def test_factor_one_is_plain_rope(method):
    plain = rope_frequencies(16, 10000.0)
    scaled = rope_frequencies(16, 10000.0, method, 1.0, 64)
    assert torch.equal(plain[0], scaled[0]) and scaled[1] == 1.0


@settings(max_examples=20, deadline=None)
@given(factor=st.floats(1.0, 16.0), position=st.integers(0, 4000))
def test_linear_scaling_reads_position_p_as_p_over_factor(factor, position):
    cfg = ModelConfig(n_head=2, n_embd=32, positions="rope", rope_scaling="linear", rope_scaling_factor=factor)
    scaled, plain = RotaryPositions(cfg), RotaryPositions(ModelConfig(n_head=2, n_embd=32, positions="rope"))
    cos, sin = scaled._cos_sin(torch.tensor([position]))
    ref_angles = torch.tensor([position / factor], dtype=torch.float64)[:, None] * plain.inv_freq.double()[None]
    ref = torch.cat([ref_angles, ref_angles], -1)
    torch.testing.assert_close(cos.double(), ref.cos(), atol=2e-4, rtol=0)
    torch.testing.assert_close(sin.double(), ref.sin(), atol=2e-4, rtol=0)


def test_ntk_keeps_the_highest_frequency_and_divides_the_lowest_by_the_factor():
    plain, _ = rope_frequencies(16, 10000.0)
    ntk, factor = rope_frequencies(16, 10000.0, "ntk", 8.0)
    assert factor == 1.0 and float(ntk[0]) == pytest.approx(float(plain[0]))
    assert float(ntk[-1]) == pytest.approx(float(plain[-1]) / 8.0, rel=1e-5)
    assert torch.all(ntk[1:] < plain[1:])


def test_yarn_matches_the_transformers_reference():
    from gptlab.interop.hf import quiet_transformers

    quiet_transformers()
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for head_dim, base, factor, original in [(32, 10000.0, 4.0, 64), (64, 500000.0, 8.0, 256), (16, 10000.0, 2.0, 16)]:
        config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, max_position_embeddings=original,
                             rope_parameters={"rope_type": "yarn", "rope_theta": base, "factor": factor,
                                              "original_max_position_embeddings": original})
        ref_freq, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
        freq, attention_factor = rope_frequencies(head_dim, base, "yarn", factor, original)
        torch.testing.assert_close(freq, ref_freq.float(), rtol=1e-6, atol=0)
        assert attention_factor == pytest.approx(ref_factor)
    assert attention_factor == pytest.approx(0.1 * math.log(2.0) + 1)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=5, deadline=None)
@given(length=st.integers(2, 60), prefix=st.integers(1, 59), chunk=st.integers(1, 5))
def test_every_extension_decodes_with_the_cache_like_the_full_forward(method, length, prefix, chunk):
    model = rope_model(rope_scaling=method, rope_scaling_factor=4.0, rope_fraction=0.5)
    prefix = min(prefix, length - 1)
    idx = torch.randint(0, 53, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2, length)
        parts = [model(idx[:, :prefix], cache=cache)]
        for t in range(prefix, length, chunk):
            parts.append(model(idx[:, t: t + chunk], cache=cache))
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_extension_matches_explicit_softmax_attention(method):
    model = rope_model(rope_scaling=method, rope_scaling_factor=4.0)
    idx = torch.randint(0, 53, (1, 50))
    with torch.no_grad():
        assert torch.allclose(model(idx), reference_forward(model, idx), atol=1e-5)


def test_extension_changes_only_positions_beyond_what_it_keeps():
    plain, yarn = rope_model(), rope_model(rope_scaling="yarn", rope_scaling_factor=4.0)
    assert set(plain.state_dict()) == set(yarn.state_dict())  # no new weights: applies to any trained RoPE run
    idx = torch.randint(0, 53, (1, 64))
    with torch.no_grad():
        assert not torch.allclose(plain(idx), yarn(idx))


def test_learned_positions_past_the_table_error_or_clamp_when_asked():
    torch.manual_seed(0)
    cfg = dict(vocab_size=53, n_layer=1, n_head=2, n_embd=16, block_size=8)
    strict = GPT(ModelConfig(**cfg)).eval()
    clamped = GPT(ModelConfig(**cfg, learned_overflow="clamp")).eval()
    clamped.load_state_dict(strict.state_dict())
    idx = torch.randint(0, 53, (1, 20))
    with pytest.raises(GptlabError, match="learned_overflow=clamp"):
        strict(idx)
    assert clamped.max_positions() is None
    with torch.no_grad():
        out = clamped(idx)
        torch.testing.assert_close(out[:, :8], strict(idx[:, :8]))  # inside the table: unchanged
        x = clamped.wte(idx) + clamped.positions.wpe.weight[torch.arange(20).clamp(max=7)]
        torch.testing.assert_close(clamped.positions.embed(clamped.wte(idx), torch.arange(20)), x)
    with pytest.raises(ConfigError, match="rope_scaling_factor"):
        ModelConfig(rope_scaling_factor=0.5)


def test_sinusoid_table_has_the_scale_of_a_freshly_initialised_embedding():
    from gptlab.model.positions import SinusoidalPositions

    scheme = SinusoidalPositions(ModelConfig(n_embd=64, n_head=4, positions="sinusoidal"))
    table = scheme.embed(torch.zeros(512, 64), torch.arange(512))
    assert float(table.pow(2).mean().sqrt()) == pytest.approx(0.02, rel=0.02)
    assert float(table[0, 32]) == pytest.approx(0.02 * math.sqrt(2))  # cos(0), scaled


def test_sinusoid_transformer_recipe_and_learned_gain():
    from gptlab.model import GPT
    from gptlab.model.positions import SINUSOID_SCALE, SinusoidalPositions

    tokens = torch.randn(8, 64) * 0.02
    original = SinusoidalPositions(ModelConfig(n_embd=64, n_head=4, positions="sinusoidal",
                                               sinusoidal_scale="transformer"))
    unit = original.embed(torch.zeros(8, 64), torch.arange(8))
    assert float(unit[0, 32]) == pytest.approx(1.0)  # a unit-amplitude table ...
    torch.testing.assert_close(original.embed(tokens, torch.arange(8)), tokens * 8.0 + unit)  # ... over √d · tokens
    cfg = ModelConfig(vocab_size=11, n_layer=1, n_embd=16, n_head=2, block_size=8, positions="sinusoidal",
                      sinusoidal_scale="learned")
    model = GPT(cfg)
    assert float(model.positions.gain) == pytest.approx(SINUSOID_SCALE)
    model(torch.randint(0, 11, (2, 8))).sum().backward()
    assert model.positions.gain.grad is not None and float(model.positions.gain.grad) != 0.0  # it trains
    from gptlab.train.optim import param_groups

    no_decay = {id(p) for p in param_groups(model, 0.1)[1]["params"]}
    assert id(model.positions.gain) in no_decay  # a scale, like a norm's: never decayed


@pytest.mark.parametrize("scheme", ["rope", "alibi"])
def test_a_scheme_prepares_once_per_forward_for_every_block(scheme, monkeypatch):
    from gptlab.model import GPT

    model = GPT(ModelConfig(vocab_size=11, n_layer=4, n_head=2, n_embd=16, block_size=8, positions=scheme)).eval()
    calls = []
    original = type(model.positions).prepare
    monkeypatch.setattr(type(model.positions), "prepare", lambda self, q, k: calls.append(1) or original(self, q, k))
    cache = model.new_cache(1, 8)
    model(torch.randint(0, 11, (1, 5)), cache=cache)
    model(torch.randint(0, 11, (1, 1)), cache=cache)
    assert len(calls) == 2  # one per forward pass, not one per block (4 blocks)
