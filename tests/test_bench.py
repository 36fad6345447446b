"""Benchmarks measure what they say, on tiny shapes (no timing is asserted: machines are noisy)."""

import json

import pytest
import torch

from gptlab.bench.decode import weight_bytes_per_token
from gptlab.cli import main
from gptlab.config import build_config
from gptlab.model import GPT
from gptlab.quant import kernels, native

TINY = ["--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32", "--set",
        "model.vocab_size=300", "--set", "model.block_size=64"]


@pytest.mark.parametrize("tied", [True, False])
def test_decode_reads_every_weight_but_the_embedding_tables(tied):
    model = GPT(build_config(overrides=["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.vocab_size=300",
                                        f"model.tie_embeddings={tied}"]).model)
    everything = sum(p.numel() for p in model.parameters())  # a tied matrix is one parameter
    tables = model.positions.wpe.weight.numel() + (0 if tied else model.wte.weight.numel())  # one row read of each
    assert weight_bytes_per_token(model) == 4 * (everything - tables)


def test_decode_with_int8_weights_reads_a_quarter_of_the_linear_bytes():
    from gptlab.config import QuantConfig
    from gptlab.quant.ptq import quantize

    model = GPT(build_config(overrides=["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.vocab_size=300",
                                        "model.bias=false"]).model)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    before = weight_bytes_per_token(model)
    quantize(model, QuantConfig(bits=8, targets="all"))
    rows = sum(m.out_features for m in model.modules() if hasattr(m, "qweight"))  # one fp32 scale per row
    # the head's int8 copy replaces the tied fp32 table in what a token reads
    assert weight_bytes_per_token(model) == before - 4 * linears + linears + 4 * rows


@pytest.mark.parametrize("quant, fallback", [("int8", "fused int8 gemv"), ("int4", "not used yet")])
def test_bench_decode_quantized_against_fp32_transformers(tmp_path, quant, fallback):
    out = tmp_path / "decode.json"
    kernels.status = "not used yet"
    assert main(["bench", "decode", *TINY, "--new-tokens", "8", "--repeats", "1", "--vs", "transformers",
                 "--quant", quant, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = f"gptlab {quant} kernel" if native.load() is not None else fallback  # int4 falls back silently
    assert result["quant"] == quant and result["kernel"].startswith(expected)
    assert result["ratio_vs_transformers"] > 0 and 0 <= result["tokens_agreeing"] <= 8


def test_bench_decode_against_transformers_on_the_same_weights(tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", *TINY, "--new-tokens", "8", "--repeats", "1", "--vs", "transformers",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["same_tokens"] is True  # greedy decoding of the same weights agrees token for token
    assert result["gptlab_tokens_per_s"] > 0 and result["ratio_vs_transformers"] > 0
    assert result["bandwidth_bound_tokens_per_s"] == pytest.approx(
        result["read_bandwidth_gb_s"] * 1e9 / (result["weight_mb_per_token"] * 1e6))
    assert "% of the bandwidth bound" in capsys.readouterr().out


def test_bench_decode_refuses_more_tokens_than_the_context(capsys):
    assert main(["bench", "decode", *TINY, "--new-tokens", "60"]) == 2
    assert "exceed model.block_size=64" in capsys.readouterr().err


def test_bench_train_reports_mfu_and_ratio(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "train", *TINY, "--set", "train.batch_size=2", "--steps", "2", "--warmup", "1",
                 "--vs", "transformers", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0 < result["gptlab_mfu"] < 1 and result["ratio_vs_transformers"] > 0


def test_time_to_loss_stops_at_the_first_check_under_the_target(char_data):
    from gptlab.bench.time_to_loss import time_to_loss
    from gptlab.data import load_data

    from tests.conftest import tiny_config

    data = load_data(char_data)
    cfg = tiny_config("train.max_steps=40", "train.lr=3e-3", "model.block_size=64")
    full = time_to_loss(cfg, data, target=0.0, check_every=10, label="all")  # never reached: the whole schedule
    assert not full["reached"] and [s for s, _ in full["curve"]] == [0, 10, 20, 30, 40]
    target = full["curve"][2][1]  # the val loss at step 20: a rerun (same seed) must stop exactly there
    hit = time_to_loss(cfg, data, target=target, check_every=10, label="hit")
    assert hit["reached"] and hit["steps"] == 20 and hit["curve"] == full["curve"][:3]
    assert full["curve"][0][1] > 3.0 > full["curve"][-1][1]  # the reference evaluation sees learning


def test_time_to_loss_without_its_corpus_names_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "time-to-loss"]) == 2
    assert "--corpus" in capsys.readouterr().err


@pytest.mark.parametrize("quant,kind", [("none", "f32"), ("int8", "q8_0")])
def test_bench_decode_against_llama_cpp_on_a_gguf_of_the_same_weights(tmp_path, quant, kind):
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", *TINY, "--new-tokens", "8", "--repeats", "1", "--vs", "llama.cpp",
                 "--quant", quant, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["llama_cpp_type"] == kind and result["llama_cpp_tokens_per_s"] > 0
    assert result["ratio_vs_llama_cpp"] == pytest.approx(result["gptlab_tokens_per_s"] / result["llama_cpp_tokens_per_s"])
    assert 0 <= result["tokens_agreeing"] <= 8  # (near-ties of random weights may part; the GGUF tests check that)
