"""Quantization: the round-trip error bound, integer storage, PTQ, SmoothQuant, QAT's gradients, the int8 kernel,
and the cross-check against torchao."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from gptlab.cli import main
from gptlab.config import ModelConfig, QuantConfig, RunConfig
from gptlab.data import load_data
from gptlab.evaluate import evaluate
from gptlab.model import GPT
from gptlab.quant.qat import QATLinear, convert_qat, prepare_qat
from gptlab.quant.linear import QuantLinear
from gptlab.quant.fake import QuantSpec, fake_quant
from gptlab.quant.ptq import quantize, quantized_layers
from gptlab.quant.fake import compute_scales, fake_quant_ste, grouped
from gptlab import native
from gptlab.quant import kernels
from tests.conftest import kernel_for
from gptlab.quant.kernels import int8_linear
from gptlab.quant.ptq import target_filter
from gptlab.quant.qat import gradient_ratio
from tests.conftest import tiny_config

specs = st.builds(QuantSpec, bits=st.integers(2, 8), symmetric=st.booleans(),
                  granularity=st.sampled_from(["tensor", "channel"]), group_size=st.sampled_from([0, 4, 8]))


def tensors(seed: int, rows: int, cols: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 10 ** torch.empty(1).uniform_(-3, 2, generator=g)
    if kind == "outlier":
        x[0, 0] = x.abs().max() * 50
    if kind == "constant":
        x = torch.full((rows, cols), float(x[0, 0]))
    if kind == "zero":
        x = torch.zeros(rows, cols)
    if kind == "positive":
        x = x.abs()
    return x


@settings(max_examples=150, deadline=None)
@given(spec=specs, seed=st.integers(0, 10_000), rows=st.integers(1, 5), groups=st.integers(1, 3),
       kind=st.sampled_from(["normal", "outlier", "constant", "zero", "positive"]))
def test_round_trip_error_is_within_half_a_step(spec, seed, rows, groups, kind):
    x = tensors(seed, rows, 8 * groups, kind)
    y = fake_quant(x, spec)
    assert torch.isfinite(y).all()
    scale, _ = compute_scales(x, spec)
    err = (grouped(x, spec) - grouped(y, spec)).abs()
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-30).all()
    assert torch.allclose(fake_quant(y, spec), y, rtol=1e-5, atol=1e-6 * float(scale.max()))  # idempotent
    if kind == "zero":
        assert torch.equal(y, x)


def test_levels_per_bit_width():
    x = torch.linspace(-1, 1, 1001)[None]
    for bits in (2, 3, 4, 8):
        assert len(fake_quant(x, QuantSpec(bits, True, "tensor")).unique()) == 2 ** bits - 1
        assert len(fake_quant(x, QuantSpec(bits, False, "tensor")).unique()) <= 2 ** bits


@pytest.mark.parametrize("bits,symmetric,granularity,group", [(8, True, "channel", 0), (4, True, "channel", 8),
                                                              (3, False, "tensor", 0), (6, False, "channel", 16),
                                                              (2, True, "channel", 0), (6, True, "tensor", 0),
                                                              (5, True, "channel", 0), (4, True, "channel", 32),
                                                              (4, False, "channel", 0)])
def test_integer_storage_holds_the_fake_quantized_weight(bits, symmetric, granularity, group):
    linear = nn.Linear(32, 24)
    spec = QuantSpec(bits, symmetric, granularity, group)
    q = QuantLinear.from_float(linear, spec)
    assert torch.allclose(q.dequantized(), fake_quant(linear.weight.detach(), spec), atol=1e-6)
    assert q.qweight.dtype in (torch.int8, torch.uint8)
    if bits <= 4:
        assert q.qweight.shape == (24, 16)  # two codes per byte
    for x in (torch.randn(3, 32), torch.randn(2, 50, 32)):  # a decode step and a batch (other int8 paths)
        with torch.no_grad():
            assert torch.allclose(q(x), F.linear(x, q.dequantized(), linear.bias), atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 9, 100])
@pytest.mark.parametrize("native_kernel", [True, False])
def test_int8_kernels_equal_dequantize_then_matmul(rows, native_kernel, monkeypatch):
    if not native_kernel:  # the torch.compile paths a machine without the C++ kernel takes
        monkeypatch.setattr(native, "_module", None)
        monkeypatch.setattr(native, "why_not", "turned off by the test")
    w = torch.randint(-127, 128, (40, 24), dtype=torch.int8)
    scale, bias, x = torch.rand(40) / 100, torch.randn(40), torch.randn(1, rows, 24)
    expected = F.linear(x, w.float() * scale[:, None], bias)
    with torch.no_grad():
        assert torch.allclose(int8_linear(x, w, scale, bias), expected, atol=1e-5)
    if not native_kernel:
        assert not kernels.status.startswith("gptlab")
    strided = torch.rand(80)[::2] / 100  # a layout the C++ kernel does not take: another path, the same result
    with torch.no_grad():
        assert torch.allclose(int8_linear(x, w, strided, bias), F.linear(x, w.float() * strided[:, None], bias),
                              atol=1e-5)


def test_a_reloaded_4bit_layer_uses_its_new_scales():
    q, other = (QuantLinear.from_float(nn.Linear(64, 40), QuantSpec(4, False, "channel", 32)) for _ in range(2))
    x = torch.randn(2, 64)
    with torch.no_grad():
        q(x)  # the kernel's scale layout is built and kept here ...
        q.load_state_dict(other.state_dict())  # ... and must not outlive the scales it came from
        assert torch.allclose(q(x), F.linear(x, other.dequantized(), other.bias), atol=1e-5)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("out_features,in_features,group", [(2305, 768, 32), (7, 64, 64), (33, 3072, 3072)])
@pytest.mark.parametrize("rows", [1, 3, 5])
def test_native_int4_kernel_matches_float_reference(out_features, in_features, group, rows, isa):
    kernel = kernel_for(isa)
    g = torch.Generator().manual_seed(rows)
    packed = torch.randint(0, 256, (out_features, in_features // 2), dtype=torch.uint8, generator=g)
    nibbles = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(out_features, in_features).double()
    groups = in_features // group
    scale = torch.rand(out_features, groups, generator=g) / 10
    offset = torch.randint(0, 16, (out_features, groups), generator=g).float()
    weight = ((nibbles.view(out_features, groups, group) - offset.double()[..., None]) * scale.double()[..., None])
    x, bias = torch.randn(rows, in_features, generator=g), torch.randn(out_features, generator=g)
    expected = (x.double() @ weight.view(out_features, in_features).t() + bias.double()).float()
    assert torch.allclose(kernel.int4_gemv(x, packed, scale, offset, group, bias), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError, match="group size"):
        kernel.int4_gemv(x, packed, scale, offset, 16, bias)


def test_a_build_lock_left_by_a_killed_build_is_cleared(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_KERNEL_CACHE", str(tmp_path))
    lock = native.build_directory() / "lock"
    lock.touch()
    assert native.build_directory() == lock.parent and lock.exists()  # a build in progress keeps its lock
    old = time.time() - native.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    native.build_directory()
    assert not lock.exists()


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("out_features,in_features", [(2305, 768), (7, 3), (64, 33), (9, 40)])
@pytest.mark.parametrize("rows", [1, 2, 5, 64])
def test_native_int8_kernel_matches_float_reference(out_features, in_features, rows, isa):
    kernel = kernel_for(isa)
    g = torch.Generator().manual_seed(rows)
    w = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=g)
    scale, bias = torch.rand(out_features, generator=g) / 100, torch.randn(out_features, generator=g)
    x = torch.randn(rows, in_features, generator=g)
    expected = (x.double() @ (w.double() * scale.double()[:, None]).t() + bias.double()).float()
    assert torch.allclose(kernel.int8_gemv(x, w, scale, bias), expected, rtol=1e-5, atol=1e-4)
    assert torch.allclose(kernel.int8_gemv(x, w, scale, torch.empty(0)), expected - bias, rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError, match="inputs"):
        kernel.int8_gemv(torch.randn(rows, in_features + 1), w, scale, bias)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = tiny_config(*[f"model.{k}={v}" for k, v in overrides.items()], "model.vocab_size=40")
    return GPT(cfg.model).eval()


def test_quantize_swaps_only_the_chosen_layers_and_int8_stays_close():
    model = tiny_model()
    x = torch.randint(0, 40, (2, 16))
    ref = model(x)
    q = quantize(copy.deepcopy(model), QuantConfig())
    names = {n for n, m in q.named_modules() if isinstance(m, QuantLinear)}
    assert names == {f"h.{i}.{l}" for i in range(2) for l in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert isinstance(q.lm_head, nn.Linear)  # the head is a filter away, not a special case
    assert (q(x) - ref).abs().max() < 2e-2 * ref.abs().max()
    only_first = quantize(copy.deepcopy(model), QuantConfig(bits=4), only=lambda m, fqn: fqn == "h.0.mlp.c_fc")
    assert [n for n, m in only_first.named_modules() if isinstance(m, QuantLinear)] == ["h.0.mlp.c_fc"]
    head = quantize(copy.deepcopy(model), QuantConfig(targets="all"))
    assert isinstance(head.lm_head, QuantLinear) and torch.equal(head.wte.weight, model.wte.weight)


def test_group_size_must_divide_the_rows():
    from gptlab.errors import ConfigError

    with pytest.raises(ConfigError, match="does not divide the 32 input channels"):
        quantize(tiny_model(), QuantConfig(bits=4, group_size=12))


def test_smoothing_moves_an_activation_outlier_into_the_weights():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(256, 64)
    x[:, 5] *= 60  # one outlier channel, as in LLM activations
    exact = linear(x)
    errors = {}
    for smooth in (0.0, 0.5):
        cfg = QuantConfig(bits=8, activations="static", smooth=smooth)
        wrapper = nn.ModuleDict({"layer": copy.deepcopy(linear)})
        wrapper.forward = lambda t, w=wrapper: w["layer"](t)
        quantize(wrapper, cfg, only=lambda m, fqn: fqn == "layer", calibration=[x])
        errors[smooth] = float((wrapper(x) - exact).detach().pow(2).mean())
    assert errors[0.5] < errors[0.0] / 3


def test_static_activation_scale_comes_from_calibration():
    linear = nn.Linear(8, 4)
    x = torch.randn(10, 8)
    wrapper = nn.ModuleDict({"layer": linear})
    wrapper.forward = lambda t: wrapper["layer"](t)
    quantize(wrapper, QuantConfig(activations="static"), only=lambda m, fqn: fqn == "layer", calibration=[x])
    assert float(wrapper["layer"].act_scale) == pytest.approx(float(x.abs().max()) / 127)


@pytest.mark.parametrize("mode", ["ste", "clipped", "lsq", "broken"])
def test_qat_gradients_follow_the_estimator(mode):
    spec = QuantSpec(3, True, "channel", 0, clip_ratio=0.5)
    w = torch.randn(16, 32, requires_grad=True)
    scale = compute_scales(w, spec)[0].clone().requires_grad_(True) if mode == "lsq" else None
    y = fake_quant_ste(w, spec, mode, scale)
    assert torch.allclose(y.detach(), fake_quant(w.detach(), spec), atol=1e-6)  # the same forward in every mode
    y.backward(torch.ones_like(y))
    outside = (w.detach().abs() > compute_scales(w, spec)[0] * spec.qmax * (1 + 1e-6)).float()
    assert outside.sum() > 0
    if mode == "ste":
        assert torch.equal(w.grad, torch.ones_like(w))
    elif mode == "broken":
        assert torch.equal(w.grad, torch.zeros_like(w))  # round() has no derivative: nothing reaches the weight
    else:  # clipped and LSQ: no gradient exactly where the value was clipped
        assert torch.equal(w.grad, 1 - outside)
    if mode == "lsq":
        assert scale.grad is not None and scale.grad.abs().sum() > 0


def test_prepare_and_convert_qat_keep_the_forward():
    model = tiny_model()
    x = torch.randint(0, 40, (2, 16))
    for mode in ("ste", "lsq"):
        qat = prepare_qat(copy.deepcopy(model), QuantConfig(bits=4, qat=mode))
        assert set(qat.state_dict()) >= set(model.state_dict())  # weights keep their names
        before = qat(x)
        converted = convert_qat(qat)
        assert not any(isinstance(m, QATLinear) for m in converted.modules())
        assert torch.allclose(converted(x), before, atol=1e-5)


def test_gradient_ratio_tells_a_working_ste_from_a_broken_one():
    model = tiny_model()
    x, y = torch.randint(0, 40, (2, 16)), torch.randint(0, 40, (2, 16))
    ok = gradient_ratio(prepare_qat(copy.deepcopy(model), QuantConfig(bits=4, qat="ste")), x, y)
    broken = gradient_ratio(prepare_qat(copy.deepcopy(model), QuantConfig(bits=4, qat="broken")), x, y)
    assert 0.5 < ok < 2 and broken == 0.0


def test_a_broken_ste_stops_training_within_a_few_steps(char_data, tmp_path, capsys):
    from tests.conftest import TINY

    args = ["train", "--data", str(char_data), "--out", str(tmp_path / "run")]
    for o in TINY + ["quant.qat=broken", "quant.bits=4"]:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no gradient reached any quantized weight for 3 steps (up to step 3)" in err
    assert "straight-through estimator is broken" in err and len(err.strip().splitlines()) == 1


def test_qat_runs_record_gradient_flow_and_resume_exactly(char_data, tmp_path):
    from gptlab.train.loop import Trainer, resume, train
    from gptlab.train.checkpoint import load_checkpoint

    cfg = tiny_config("quant.qat=lsq", "quant.bits=4", "train.max_steps=10", "train.eval_every=5",
                      "train.checkpoint_every=5")
    whole = train(char_data, tmp_path / "whole", cfg, progress=False)
    records = [json.loads(l) for l in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert all(0.5 < r["qat_grad_ratio"] < 2 and r["qat_grad_norm"] > 0 for r in steps)
    assert all(0 <= r["qat_clipped_frac"] < 0.5 for r in steps)
    def crash(step, loss):
        if step == 7:  # two steps past the checkpoint at 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tmp_path / "half", cfg, load_data(char_data), progress=False, on_step=crash).run()
    resumed = resume(tmp_path / "half", progress=False)
    assert resumed["final_loss"] == whole["final_loss"]
    a = load_checkpoint(tmp_path / "whole", "last", with_state=False).model
    b = load_checkpoint(tmp_path / "half", "last", with_state=False).model
    assert any(k.endswith("weight_scale") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_broken_ste_recorded_instead_of_stopping(char_data, tmp_path):
    from gptlab.train.loop import train

    summary = train(char_data, tmp_path / "run", tiny_config("quant.qat=broken", "quant.dead_gradient=record",
                                                             "train.max_steps=6"), progress=False)
    assert summary["dead_gradient_step"] == 3 and summary["step"] == 6


@pytest.fixture(scope="module")
def float_run(char_data, tmp_path_factory):
    from gptlab.train.loop import train

    out = tmp_path_factory.mktemp("quant") / "float"
    train(char_data, out, tiny_config("train.max_steps=40", "model.n_embd=64"), progress=False)
    return out


def test_quantize_cli_writes_a_smaller_run_that_evaluates_and_samples(float_run, tmp_path, capsys):
    out = tmp_path / "int4"
    assert main(["quantize", "--run", str(float_run), "--out", str(out), "--set", "quant.bits=4",
                 "--set", "quant.group_size=16", "--json", str(tmp_path / "q.json")]) == 0
    text = capsys.readouterr().out
    assert "weights int4 symmetric per group of 16" in text and "model on disk" in text
    r = json.loads((tmp_path / "q.json").read_text())
    assert r["bytes_quantized"] < 0.6 * r["bytes_float"]
    assert abs(r["val_loss_quantized"] - r["val_loss_float"]) < 0.3
    assert main(["eval", "--run", str(out), "--max-windows", "64"]) == 0
    assert f"val loss {r['val_loss_quantized']:.4f}" in capsys.readouterr().out  # the saved integers reload exactly
    assert main(["sample", "--run", str(out), "--prompt", "The", "--max-new-tokens", "5", "--seed", "1"]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["quantize", "--run", str(float_run), "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err and sorted(p.name for p in out.rglob("*")) == before
    assert main(["quantize", "--run", str(float_run), "--out", str(tmp_path / "x"), "--set", "model.n_layer=3"]) == 2
    assert "only quant.* settings" in capsys.readouterr().err


def test_sample_with_int8_weights_and_inspect(float_run, tmp_path, capsys):
    assert main(["sample", "--run", str(float_run), "--quant", "int8", "--prompt", "The", "--temperature", "0",
                 "--max-new-tokens", "8"]) == 0
    int8_text = capsys.readouterr().out
    assert main(["sample", "--run", str(float_run), "--prompt", "The", "--temperature", "0",
                 "--max-new-tokens", "8"]) == 0
    assert int8_text[:5] == capsys.readouterr().out[:5]
    assert main(["sample", "--run", str(float_run), "--quant", "int4", "--prompt", "The", "--temperature", "0",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("The")
    assert main(["quant", "inspect", "--run", str(float_run), "--set", "quant.bits=3", "--eval-windows", "4",
                 "--json", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    assert "h.1.mlp.c_proj" in out and "most sensitive:" in out
    records = json.loads((tmp_path / "i.json").read_text())
    assert len(records) == 8 and all(r["sensitivity"] is not None and r["act_kurtosis"] > 0 for r in records)


def test_qat_run_quantizes_to_what_it_trained(char_data, tmp_path, capsys):
    from gptlab.train.loop import train
    from gptlab.run import load_model

    run = tmp_path / "qat"
    train(char_data, run, tiny_config("quant.qat=ste", "quant.bits=4", "train.max_steps=10"), progress=False)
    qat_model, _, _ = load_model(run)
    assert main(["quantize", "--run", str(run), "--out", str(tmp_path / "q")]) == 0
    q_model, _, _ = load_model(tmp_path / "q")
    x = torch.randint(0, 20, (1, 16))
    assert torch.allclose(q_model(x), qat_model(x), atol=1e-5)
    assert main(["quantize", "--run", str(run), "--out", str(tmp_path / "q3"), "--set", "quant.bits=3"]) == 2
    assert "trained quantization-aware with quant.bits" in capsys.readouterr().err


@pytest.mark.parametrize("ours,theirs", [
    (QuantConfig(bits=8), "Int8WeightOnlyConfig"),
    (QuantConfig(bits=8, activations="token"), "Int8DynamicActivationInt8WeightConfig"),
])
def test_perplexity_matches_torchao(float_run, ours, theirs):
    import warnings

    from gptlab.interop.hf import quiet_transformers
    from gptlab.run import load_model

    quiet_transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization as tq
    model, _, cfg = load_model(float_run)
    val = load_data(json.loads((float_run / "run.json").read_text())["data"]).val
    base = evaluate(model, val, 32, max_windows=64).loss
    mine = evaluate(quantize(copy.deepcopy(model), ours), val, 32, max_windows=64).loss
    ao = copy.deepcopy(model)
    blocks = target_filter(QuantConfig())  # the same (module, fqn) filter both libraries take
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.quantize_(ao, getattr(tq, theirs)(), filter_fn=blocks)
        theirs_loss = evaluate(ao, val, 32, max_windows=64).loss
    assert abs(mine - theirs_loss) < 0.1 * abs(mine - base) + 2e-3, (base, mine, theirs_loss)


def test_a_model_quantized_with_a_custom_filter_reloads_as_it_was(tmp_path):
    from gptlab.model.filters import named
    from gptlab.run import load_model, write_model_run
    from gptlab.tokenizers import CharTokenizer

    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(vocab_size=31, n_layer=2, n_head=2, n_embd=32, block_size=16))
    model = quantize(GPT(cfg.model), QuantConfig(bits=4), only=named(["h.1.mlp.c_fc", "lm_head"]))
    idx = torch.randint(0, 31, (2, 16))
    with torch.no_grad():
        expected = model(idx)
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"), with_eot=True)
    write_model_run(tmp_path / "q", dataclasses.replace(cfg, quant=QuantConfig(bits=4)), tok, model,
                    {"quantized": True, "quantized_layers": sorted(quantized_layers(model))})
    loaded, _, _ = load_model(tmp_path / "q")
    assert sorted(quantized_layers(loaded)) == ["h.1.mlp.c_fc", "lm_head"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), expected)


def test_runs_record_their_transforms_and_loading_replays_them(char_data, tmp_path):
    from gptlab.run import load_model
    from gptlab.rundir import run_info
    from tests.conftest import TINY

    qat = tmp_path / "qat"
    assert main(["train", "--data", str(char_data), "--out", str(qat), "--set", "quant.qat=ste", "--set", "quant.bits=4",
                 *[a for t in TINY for a in ("--set", t)], "--set", "train.max_steps=2"]) == 0
    steps = run_info(qat)["transforms"]
    assert [s["name"] for s in steps] == ["qat"] and all(n.startswith("h.") for n in steps[0]["layers"])
    model, _, _ = load_model(qat)
    assert sorted(n for n, m in model.named_modules() if isinstance(m, QATLinear)) == steps[0]["layers"]
    out = tmp_path / "q"
    assert main(["quantize", "--run", str(qat), "--out", str(out)]) == 0
    assert [s["name"] for s in run_info(out)["transforms"]] == ["quantize"]  # the integer form replaces the QAT one
    loaded, _, _ = load_model(out)
    assert sorted(quantized_layers(loaded)) == run_info(out)["transforms"][0]["layers"]
