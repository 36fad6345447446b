"""LoRA / rsLoRA: the transform, merge, scale conventions, the rank theory, PEFT files both ways, the CLI."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from gptlab.adapters.lora import (LoraLinear, apply_lora, lora_layers, merge, merge_and_unload, trainable_report,
                                  unmerge, update_norms)
from gptlab.adapters.peft_format import load_adapter, save_adapter
from gptlab.cli import main
from gptlab.config import ConfigError, LoraConfig, ModelConfig
from gptlab.errors import CheckpointError
from gptlab.interop.hf import export_hf, quiet_transformers
from gptlab.model import GPT
from gptlab.run import load_model

from tests.test_interop_hf import gptlab_run, hf_model_dir

quiet_transformers()


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{"vocab_size": 31, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32, **kw}))


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


IDX = torch.randint(0, 31, (2, 20), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("targets", ["attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj", "attn.c_attn", "mlp.c_proj"])
def test_lora_starts_as_the_base_model_and_trains_only_adapters(targets):
    model = tiny_gpt()
    before = model(IDX)
    apply_lora(model, LoraConfig(r=4, alpha=8, targets=targets))
    assert torch.equal(model(IDX), before)  # B = 0: unchanged at step 0
    n_targets = len(targets.split(","))
    assert len(lora_layers(model)) == 2 * n_targets
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert "trainable parameters:" in trainable_report(model)


@pytest.mark.parametrize("scaling", ["lora", "rslora"])
def test_scale_is_alpha_over_r_or_sqrt_r_with_alpha_not_r(scaling):
    cfg = LoraConfig(r=16, alpha=4, scaling=scaling)  # α ≠ r, so a mixed-up convention shows
    assert cfg.scale == pytest.approx(0.25 if scaling == "lora" else 1.0)
    base = nn.Linear(8, 5)
    layer = LoraLinear(base, cfg.r, cfg.scale)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 8)
    expected = base(x) + cfg.scale * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected)


def test_merge_equals_adapter_forward_and_unmerge_restores_the_base():
    model = tiny_gpt(bias=True)
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(r=3, alpha=7, scaling="rslora"))
    randomize_adapters(model)
    adapted = model(IDX)
    merge(model)
    assert (model(IDX) - adapted).abs().max() < 1e-5
    unmerge(model)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base_layer.weight, base_weights[f"{name}.weight"], atol=1e-6, rtol=0)
    assert (model(IDX) - adapted).abs().max() < 1e-5
    merge_and_unload(model)
    assert not lora_layers(model) and (model(IDX) - adapted).abs().max() < 1e-5
    assert set(model.state_dict()) == set(base_weights)  # a plain GPT again


def test_update_norm_is_the_scaled_product():
    model = tiny_gpt()
    apply_lora(model, LoraConfig(r=2, alpha=3))
    randomize_adapters(model)
    name, layer = next(iter(lora_layers(model).items()))
    expected = (1.5 * layer.lora_B.weight @ layer.lora_A.weight).norm().detach()
    assert update_norms(model)[name] == pytest.approx(expected.item(), rel=1e-5)


def test_rank_theory_on_random_data():
    """At init (A Kaiming-uniform, B = 0) the gradient reaching B is scale·g·(Ax)ᵀ, with ‖Ax‖ ∝ √r: so it
    shrinks as 1/√r under LoRA's α/r and stays flat under rsLoRA's α/√r; after one SGD step the change in the
    layer's output, scale²·‖Ax‖²·g, shrinks as 1/r under LoRA and stays flat under rsLoRA."""
    ranks = [1, 4, 16, 64, 256]
    d_in, d_out, n = 512, 256, 1  # one example: E‖Ax‖² = r·Var(A)·‖x‖² exactly
    slopes = {}
    for scaling in ("lora", "rslora"):
        grads, changes = [], []
        for r in ranks:
            g_norms, c_norms = [], []
            for seed in range(200):  # ‖Ax‖² is chi-square with r dof: noisy at r = 1
                torch.manual_seed(seed)
                layer = LoraLinear(nn.Linear(d_in, d_out), r, LoraConfig(r=r, alpha=8, scaling=scaling).scale)
                x = torch.randn(n, d_in)
                upstream = torch.randn(n, d_out)  # a random loss gradient with respect to the output
                (layer(x) * upstream).sum().backward()
                g_norms.append(layer.lora_B.weight.grad.norm().item())
                before = layer(x).detach()
                with torch.no_grad():
                    layer.lora_B.weight -= 1e-3 * layer.lora_B.weight.grad
                c_norms.append((layer(x).detach() - before).norm().item())
            grads.append(np.mean(g_norms))
            changes.append(np.mean(c_norms))
        slopes[scaling] = (np.polyfit(np.log(ranks), np.log(grads), 1)[0],
                           np.polyfit(np.log(ranks), np.log(changes), 1)[0])
    assert slopes["lora"][0] == pytest.approx(-0.5, abs=0.05)
    assert slopes["rslora"][0] == pytest.approx(0.0, abs=0.05)
    assert slopes["lora"][1] == pytest.approx(-1.0, abs=0.05)
    assert slopes["rslora"][1] == pytest.approx(0.0, abs=0.05)


def test_bad_lora_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="lora.targets: unknown lm_head"):
        LoraConfig(r=4, targets="attn.c_attn,lm_head")
    with pytest.raises(ConfigError, match="lora.r must be at least 1"):
        apply_lora(tiny_gpt(), LoraConfig(r=0))
    model = apply_lora(tiny_gpt(), LoraConfig(r=2))
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora(model, LoraConfig(r=2))


# -- PEFT files, both ways ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scaling,targets", [("lora", "attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj"),
                                              ("rslora", "attn.c_attn,mlp.c_proj")])
def test_gptlab_adapter_loads_in_peft_with_the_same_logits(tmp_path, scaling, targets):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    run = gptlab_run(tmp_path, 2, 3, 48, tied=True)
    export_hf(run, tmp_path / "hf")
    model, _, _ = load_model(run)
    cfg = LoraConfig(r=6, alpha=10, scaling=scaling, targets=targets)  # α ≠ r
    apply_lora(model, cfg)
    randomize_adapters(model)
    save_adapter(model, cfg, tmp_path / "adapter", base_model=str(tmp_path / "hf"))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        diff = (peft_model(IDX).logits - model.eval()(IDX)).abs().max().item()
    assert diff < 1e-4


def test_peft_trained_adapter_loads_in_gptlab_with_the_same_logits(tmp_path):
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    hf_dir, hf = hf_model_dir(tmp_path, 2, 2, 32, tied=True)
    assert main(["import", "hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    peft_cfg = PeftLoraConfig(r=4, lora_alpha=12, use_rslora=True, target_modules=["c_attn", "c_proj", "c_fc"],
                              fan_in_fan_out=True, task_type="CAUSAL_LM")
    peft_model = get_peft_model(hf, peft_cfg)
    # A few real optimisation steps with peft, so the adapter is a trained one, not an initial one.
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft_model(IDX, labels=IDX).loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model, _, _ = load_model(tmp_path / "run")
    cfg = load_adapter(model, tmp_path / "peft")
    assert (cfg.r, cfg.alpha, cfg.scaling) == (4, 12.0, "rslora")
    assert cfg.target_list == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    with torch.no_grad():
        diff = (peft_model.eval()(IDX).logits - model.eval()(IDX)).abs().max().item()
    assert diff < 1e-4 and max(update_norms(model).values()) > 0


def test_unsupported_or_broken_adapters_are_refused(tmp_path):
    model = tiny_gpt()
    apply_lora(model, LoraConfig(r=2))
    save_adapter(model, LoraConfig(r=2), tmp_path / "a")
    config = json.loads((tmp_path / "a/adapter_config.json").read_text())
    (tmp_path / "a/adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True is not supported"):
        load_adapter(tiny_gpt(), tmp_path / "a")
    with pytest.raises(CheckpointError, match="not a LoRA adapter directory"):
        load_adapter(tiny_gpt(), tmp_path)
    (tmp_path / "a/adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_adapter(tiny_gpt(n_embd=32), tmp_path / "a")


# -- the commands ----------------------------------------------------------------------------------------------
def test_finetune_sample_merge_and_resume(tmp_path, char_data, capsys):
    base = tmp_path / "base"
    small = ["--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32",
             "--set", "model.block_size=32", "--set", "train.batch_size=4", "--set", "train.eval_batches=2"]
    assert main(["train", "--data", str(char_data), "--out", str(base), *small, "--set", "train.max_steps=20",
                 "--set", "train.eval_every=10"]) == 0
    ft = ["--set", "lora.r=4", "--set", "lora.alpha=8", "--set", "lora.scaling=rslora", "--set", "train.lr=0.01",
          "--set", "train.batch_size=4", "--set", "train.eval_batches=2", "--set", "train.eval_every=5",
          "--set", "train.checkpoint_every=5", "--set", "train.warmup_steps=2",
          "--set", "train.schedule=constant"]  # so stopping at 10 and resuming to 20 is the same run as 20
    # Interrupted at step 10 and resumed to 20 == straight to 20.
    assert main(["finetune", "--run", str(base), "--data", str(char_data), "--out", str(tmp_path / "ft"), *ft,
                 "--set", "train.max_steps=20"]) == 0
    assert main(["finetune", "--run", str(base), "--data", str(char_data), "--out", str(tmp_path / "ft2"), *ft,
                 "--set", "train.max_steps=10"]) == 0
    assert main(["finetune", "--resume", str(tmp_path / "ft2"), "--set", "train.max_steps=20"]) == 0
    out = capsys.readouterr().out
    assert "effective scale 4" in out and "trainable parameters:" in out  # α/√r = 8/2
    a, _, _ = load_model(tmp_path / "ft", "last")
    b, _, _ = load_model(tmp_path / "ft2", "last")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    base_model, _, _ = load_model(base, "best")
    frozen = {k: v for k, v in a.state_dict().items() if "lora_" not in k}
    for k, v in base_model.state_dict().items():  # the base weights did not move
        assert torch.equal(frozen[k.replace("c_attn.", "c_attn.base_layer.").replace("c_proj.", "c_proj.base_layer.")
                                   .replace("c_fc.", "c_fc.base_layer.")], v), k
    assert (tmp_path / "ft/adapter_config.json").is_file() and (tmp_path / "ft/adapter_model.safetensors").is_file()

    assert main(["sample", "--run", str(base), "--adapter", str(tmp_path / "ft"), "--prompt", "the",
                 "--max-new-tokens", "10", "--seed", "0", "--temperature", "0"]) == 0
    with_adapter = capsys.readouterr().out
    assert main(["sample", "--run", str(tmp_path / "ft"), "--prompt", "the", "--max-new-tokens", "10", "--seed",
                 "0", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == with_adapter
    assert main(["merge", "--run", str(base), "--adapter", str(tmp_path / "ft"), "--out", str(tmp_path / "m")]) == 0
    assert main(["sample", "--run", str(tmp_path / "m"), "--prompt", "the", "--max-new-tokens", "10", "--seed",
                 "0", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == with_adapter.splitlines()[-1]
    merged, _, cfg = load_model(tmp_path / "m")
    assert cfg.lora.r == 0 and not lora_layers(merged)

    assert main(["export", "hf", "--run", str(tmp_path / "ft"), "--out", str(tmp_path / "hf")]) == 2
    assert "is a LoRA fine-tune" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert main(["finetune", "--run", str(base), "--data", str(char_data), "--out", str(tmp_path / "x")]) == 2
    assert "give a rank, e.g. --set lora.r=16" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path / "ft2"), "--set", "lora.r=8"]) == 2
    assert "different LoRA settings" in capsys.readouterr().err
