"""The static decode step (a fixed-size cache, compiled once) gives what eager decoding gives, without recompiling."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from gptlab import static_decode
from gptlab.config import ModelConfig
from gptlab.generate import generate
from gptlab.model import GPT
from gptlab.static_decode import StaticDecoder


def model(positions="rope", block=64, **extra):
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=block, positions=positions,
                        **extra)).eval()
    for p in m.parameters():  # larger weights than GPT-2's init, so logits differ clearly from token to token
        p.data.mul_(5)
    return m


@pytest.fixture
def counted(monkeypatch):
    """The compiled step traced by Dynamo but run without Inductor: fast, and it counts the graphs compiled."""
    counter = CompileCounter()
    torch._dynamo.reset()
    monkeypatch.setattr(static_decode, "_compiled_step", torch.compile(
        static_decode._last_logits, backend=counter, dynamic=False, fullgraph=True))
    yield counter
    torch._dynamo.reset()


@pytest.mark.parametrize("positions,extra", [("learned", {}), ("rope", {"qk_norm": True}), ("alibi", {}),
                                             ("sinusoidal", {}), ("none", {"norm_placement": "post"})])
@torch.no_grad()
def test_each_step_gives_the_growing_caches_logits(positions, extra):
    m = model(positions, **extra)
    tokens = [3, 14, 15, 9, 2, 6, 5, 35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 2, 6, 43]
    cache = m.new_cache(1, 8)
    expected = [m(torch.tensor([tokens[:5]]), cache=cache)[:, -1]]
    for t in tokens[5:]:
        cache.reserve(cache.length + 1)
        expected.append(m(torch.tensor([[t]]), cache=cache)[:, -1])
    decoder = StaticDecoder(m, len(tokens), compiled=False)
    got = [decoder.prefill(tokens[:5])] + [decoder.step(torch.tensor(t)) for t in tokens[5:]]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_the_compiled_step_is_traced_once_for_the_whole_generation(counted):
    m = model("learned")
    eager = list(generate(m, [1, 2, 3], 40, temperature=0))
    assert list(generate(m, [1, 2, 3], 40, temperature=0, compiled=True)) == eager
    assert counted.frame_count == 1  # not once per position: the step's shapes never change
    assert list(generate(m, [4, 5], 30, temperature=0, compiled=True))  # a similar length: the same capacity
    assert counted.frame_count == 1
    assert static_decode.status == "compiled static step (compiled already in this process)"


def test_seeded_sampling_draws_the_same_tokens_compiled(counted):
    m = model("alibi")
    kw = dict(temperature=0.8, top_k=10, top_p=0.9, seed=3)
    assert list(generate(m, [7, 8], 50, compiled=True, **kw)) == list(generate(m, [7, 8], 50, **kw))


def test_a_step_that_cannot_compile_runs_eagerly_and_says_why(monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(static_decode, "_compiled_step", broken)
    m = model("rope")
    assert list(generate(m, [1, 2], 20, temperature=0, compiled=True)) == list(generate(m, [1, 2], 20,
                                                                                          temperature=0))
    assert static_decode.status == "eager static step (torch.compile failed: RuntimeError: no C++ compiler found)"


def test_past_the_learned_table_decoding_slides_its_window_eagerly(counted):
    m = model("learned", block=32)  # 5 + 40 positions: the window slides, which a fixed cache cannot
    expected = list(generate(m, [1, 2, 3, 4, 5], 40, temperature=0))
    assert list(generate(m, [1, 2, 3, 4, 5], 40, temperature=0, compiled=True)) == expected
    assert counted.frame_count == 0
    assert static_decode.status == ("eager (5 + 40 tokens outgrow the model's 32 positions: its window slides, "
                                    "which a fixed-size cache cannot)")


def test_a_full_static_cache_refuses_another_step():
    decoder = StaticDecoder(model(), 1, compiled=False)
    decoder.prefill([i % 61 for i in range(decoder.capacity)])
    with pytest.raises(ValueError, match="static cache is full"):
        decoder.step(torch.tensor(0))


@pytest.mark.slow
def test_inductor_compiles_the_step_and_keeps_the_greedy_tokens():
    torch._dynamo.reset()
    m = model("rope", qk_norm=True)
    expected = list(generate(m, [1, 2, 3], 24, temperature=0))
    assert list(generate(m, [1, 2, 3], 24, temperature=0, compiled=True)) == expected
    if not static_decode.status.startswith("compiled"):
        pytest.skip(f"torch.compile does not work on this machine: {static_decode.status}")


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_quantized_layers_call_their_kernels_inside_the_compiled_step(bits, counted):
    from gptlab import native
    from gptlab.quant.ptq import quantize_on_load

    m = GPT(ModelConfig(vocab_size=61, n_layer=2, n_head=2, n_embd=64, block_size=64)).eval()
    quantize_on_load(m, bits)
    expected = list(generate(m, [1, 2, 3], 20, temperature=0))
    assert list(generate(m, [1, 2, 3], 20, temperature=0, compiled=True)) == expected
    if native.load() is not None:  # the kernels as torch operators: traced, not a reason to decode eagerly
        assert static_decode.status.startswith("compiled static step") and counted.frame_count == 1
