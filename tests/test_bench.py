"""Benchmarks measure what they say, on tiny shapes (no timing is asserted: machines are noisy)."""

import json

import pytest
import torch

from gptlab.bench.decode import weight_bytes_per_token
from gptlab.cli import main
from gptlab.config import build_config
from gptlab.model import GPT
from gptlab import native
from gptlab.quant import kernels

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
    printed = capsys.readouterr().out
    assert "% of the bandwidth bound" in printed
    expected = "gptlab float32 few-row product" if native.load() is not None else "torch's linear"
    assert result["kernel"].startswith(expected) and f"kernel:        {expected}" in printed


def test_bench_decode_refuses_more_tokens_than_the_context(capsys):
    assert main(["bench", "decode", *TINY, "--new-tokens", "60"]) == 2
    assert "exceed model.block_size=64" in capsys.readouterr().err


def test_bench_train_reports_mfu_and_ratio(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "train", *TINY, "--set", "train.batch_size=2", "--steps", "2", "--warmup", "1",
                 "--vs", "transformers", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0 < result["gptlab_mfu"] < 1 and result["ratio_vs_transformers"] > 0


def test_bench_train_compiles_the_model_when_the_config_asks(monkeypatch, capsys):
    """train.compile is honoured as the trainer honours it, not silently ignored."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    assert main(["bench", "train", *TINY, "--set", "train.batch_size=2", "--steps", "1", "--warmup", "0",
                 "--set", "train.compile=true"]) == 0
    assert len(compiled) == 1 and isinstance(compiled[0], GPT) and "torch.compile" in capsys.readouterr().out


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


@pytest.mark.parametrize("quant,kind,compiled", [("none", "f32", True), ("int8", "q8_0", False)])
def test_bench_decode_against_llama_cpp_on_a_gguf_of_the_same_weights(tmp_path, quant, kind, compiled):
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", *TINY, "--new-tokens", "8", "--repeats", "1", "--vs", "llama.cpp",
                 "--quant", quant, "--json", str(out)] + (["--compile"] if compiled else [])) == 0
    result = json.loads(out.read_text())
    assert result["llama_cpp_type"] == kind and result["llama_cpp_tokens_per_s"] > 0
    assert result["ratio_vs_llama_cpp"] == pytest.approx(result["gptlab_tokens_per_s"] / result["llama_cpp_tokens_per_s"])
    if compiled:  # the compiled step's ratio beside the eager one's
        assert result["compiled_ratio_vs_llama_cpp"] == pytest.approx(
            result["gptlab_compiled_tokens_per_s"] / result["llama_cpp_tokens_per_s"])
    else:
        assert "compiled_ratio_vs_llama_cpp" not in result
    assert 0 <= result["tokens_agreeing"] <= 8  # (near-ties of random weights may part; the GGUF tests check that)


def fake_minimal_script(root, train_body: str):
    """A stand-in checkout of the minimal GPT script: its preparation step insists on the local input.txt (the
    real one downloads otherwise) and its train.py prints in the real one's format."""
    from gptlab.bench.minimal_script import NEEDED

    for name in NEEDED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    (root / "data/shakespeare_char/prepare.py").write_text(
        "import os, sys\nhere = os.path.dirname(__file__)\n"
        "sys.exit(0 if os.path.getsize(os.path.join(here, 'input.txt')) > 0 else 3)\n")
    (root / "train.py").write_text(train_body)
    return root


def test_minimal_script_runs_from_a_copy_and_reads_its_final_evaluation(tmp_path):
    from gptlab.bench.minimal_script import CPU_RECIPE, run_minimal_script

    body = ("import sys\nassert sys.argv[1:] == ['config/train_shakespeare_char.py', *%r]\n"
            "print('step 0: train loss 4.1000, val loss 4.2000')\n"
            "for i, ms in enumerate([900.0, 30.0, 40.0, 50.0]): print(f'iter {i}: loss 2.0, time {ms:.2f}ms, mfu 1%%')\n"
            "print('step 2000: train loss 1.7650, val loss 1.8857')\n" % (list(CPU_RECIPE),))
    checkout = fake_minimal_script(tmp_path / "nanogpt", body)
    corpus = tmp_path / "input.txt"
    corpus.write_text("to be or not to be\n")
    result = run_minimal_script(checkout, corpus, threads=1)
    assert result["steps"] == 2000 and result["val_loss"] == 1.8857 and result["ms_per_iter"] == 40.0
    assert result["seconds"] > 0 and not (checkout / "data/shakespeare_char/input.txt").exists()  # the copy ran


def test_minimal_script_errors_name_the_problem(tmp_path):
    from gptlab.bench.minimal_script import run_minimal_script
    from gptlab.errors import GptlabError

    corpus = tmp_path / "input.txt"
    corpus.write_text("to be\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptlabError, match="train.py, model.py.*missing"):
        run_minimal_script(tmp_path / "empty", corpus, threads=1)
    broken = fake_minimal_script(tmp_path / "broken", "raise SystemExit('no CUDA here')\n")
    with pytest.raises(GptlabError, match="training failed \\(exit 1\\): no CUDA here"):
        run_minimal_script(broken, corpus, threads=1)
    silent = fake_minimal_script(tmp_path / "silent", "print('hello')\n")
    with pytest.raises(GptlabError, match="printed no 'step N"):
        run_minimal_script(silent, corpus, threads=1)


def test_time_to_loss_prints_the_recipe_both_ratios_and_the_script(tmp_path, capsys):
    """End to end on a small corpus with a target every recipe meets at its first check."""
    from tests.conftest import make_text

    corpus = tmp_path / "tiny.txt"
    corpus.write_text(make_text(20000, seed=0))
    checkout = fake_minimal_script(tmp_path / "nanogpt", "print('step 2000: train loss 1.7, val loss 1.9')\n")
    out = tmp_path / "ttl.json"
    assert main(["bench", "time-to-loss", "--corpus", str(corpus), "--target", "50", "--check-every", "1",
                 "--threads", "1", "--set", "train.beta2=0.95", "--vs-script", str(checkout), "--json", str(out)]) == 0
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["reference_reached"] and result["speedrun_reached"]
    assert result["reference_tokens"] == result["speedrun_tokens"] == 12 * 64  # one step each
    assert "train.beta2=0.95" in result["recipe"] and "train.threads=1" not in result["recipe"]
    assert "train.beta2=0.95" in printed.err and f"tokens {result['token_ratio']:.2f}×" in printed.out
    assert result["script_val_loss"] == 1.9 and result["script_ratio"] == pytest.approx(
        result["speedrun_whole_seconds"] / result["script_seconds"])
    assert "above the target" not in printed.out  # 1.9 ≤ 50


def test_time_to_loss_recipe_file_that_is_missing_is_named(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("abc" * 100)
    assert main(["bench", "time-to-loss", "--corpus", str(corpus), "--recipe", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
