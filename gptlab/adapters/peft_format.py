"""Adapters on disk in PEFT's layout, so they move both ways between gptlab and `peft` + `transformers`.

    ADAPTER_DIR/adapter_config.json          {"peft_type": "LORA", "r", "lora_alpha", "use_rslora", "target_modules", ...}
    ADAPTER_DIR/adapter_model.safetensors    base_model.model.transformer.h.N.attn.c_attn.lora_A.weight (r, in), ...

GPT-2's Conv1D stores its weight as (in, out), but PEFT's lora_A / lora_B are plain Linear layers, (r, in) and
(out, r), in both libraries: adapter tensors need no transpose (merging into a Conv1D does, which PEFT handles).
"""

from __future__ import annotations

import json
import re
from pathlib import Path


from gptlab.adapters.lora import apply_lora, lora_state
from gptlab.config import LORA_TARGETS, LoraConfig
from gptlab.errors import CheckpointError, ConfigError
from gptlab.io import atomic_write, atomic_write_json
from gptlab.paths import inside
from gptlab.tensorfile import read_tensors, require_finite, write_tensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model.transformer."
KEY = re.compile(r"^base_model\.model\.transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
                 r"\.lora_([AB])(?:\.default)?\.weight$")


def is_adapter(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def save_adapter(model, cfg: LoraConfig, out: str | Path, base_model: str = "") -> None:
    """Write the model's adapters as a PEFT LoRA adapter directory (weights first, config last, each atomic)."""
    save_adapter_state(lora_state(model), cfg, out, base_model)


def save_adapter_state(state: dict, cfg: LoraConfig, out: str | Path, base_model: str = "") -> None:
    """The same from a state dict (e.g. a checkpoint's): its lora_A / lora_B entries are written."""
    out = Path(out)
    weights = {PREFIX + name: t.contiguous() for name, t in state.items() if ".lora_A." in name or ".lora_B." in name}
    if not weights:
        raise ConfigError("the model has no LoRA adapters to save")
    atomic_write(out / WEIGHTS_FILE, lambda p: write_tensors(weights, p, metadata={"format": "pt"}))
    atomic_write_json(out / CONFIG_FILE, {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg.r, "lora_alpha": cfg.alpha, "use_rslora": cfg.scaling == "rslora",
        "target_modules": cfg.target_list, "lora_dropout": cfg.dropout, "fan_in_fan_out": True, "bias": "none",
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
        "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False,
    })


def read_adapter(directory: str | Path) -> tuple[LoraConfig, dict]:
    """The adapter's LoraConfig and its weights under gptlab names; anything gptlab cannot reproduce is refused."""
    directory = Path(directory)
    if not is_adapter(directory):
        raise CheckpointError(f"{directory} is not a LoRA adapter directory (no {CONFIG_FILE}); make one with "
                              "`gptlab finetune` or peft's save_pretrained")
    try:
        config = json.loads(inside(directory, directory / CONFIG_FILE, str(directory)).read_bytes())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the adapter in {directory}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory / CONFIG_FILE} must hold a JSON object, not {type(config).__name__}")
    tensors = read_tensors(inside(directory, directory / WEIGHTS_FILE, str(directory)), "adapter weights")
    require_finite(tensors, f"the adapter in {directory}")
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{directory} holds a {config.get('peft_type')} adapter; gptlab reads LoRA only")
    for key, plain in (("use_dora", False), ("bias", "none"), ("rank_pattern", {}), ("alpha_pattern", {}),
                       ("modules_to_save", None), ("layers_to_transform", None)):
        if config.get(key, plain) not in (plain, [], {}, None, False, "none"):
            raise CheckpointError(f"{directory}: {key}={config[key]!r} is not supported; gptlab reads plain LoRA "
                                  "adapters on every block")
    state, targets, layers = {}, set(), set()
    for key, t in tensors.items():
        m = KEY.match(key)
        if m is None:
            raise CheckpointError(f"{directory}: unexpected tensor {key}; gptlab reads LoRA on the blocks' attn.c_attn, "
                                  "attn.c_proj, mlp.c_fc and mlp.c_proj")
        layer, target, part = m.groups()
        state[f"h.{layer}.{target}.lora_{part}.weight"] = t.float()
        targets.add(target)
        layers.add(int(layer))
    try:
        cfg = LoraConfig(r=int(config["r"]), alpha=float(config["lora_alpha"]),
                         scaling="rslora" if config.get("use_rslora") else "lora",
                         targets=",".join(t for t in LORA_TARGETS if t in targets),
                         dropout=float(config.get("lora_dropout") or 0.0))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{directory}/{CONFIG_FILE} is incomplete or invalid: {e}") from None
    return cfg, {"state": state, "layers": sorted(layers)}


def load_adapter(model, directory: str | Path) -> LoraConfig:
    """Add the adapter in `directory` to `model` (in place); returns its config."""
    cfg, found = read_adapter(directory)
    if found["layers"] != list(range(len(model.h))):
        raise CheckpointError(f"{directory} has adapters for blocks {found['layers']} but the model has "
                              f"{len(model.h)} blocks; was it trained on another base model?")
    apply_lora(model, cfg)
    expected = lora_state(model)
    for name, t in found["state"].items():
        if t.shape != expected[name].shape:
            raise CheckpointError(f"{directory}: {name} has shape {tuple(t.shape)} but this base model needs "
                                  f"{tuple(expected[name].shape)}; was it trained on another base model?")
    missing = sorted(set(expected) - set(found["state"]))
    if missing:
        raise CheckpointError(f"{directory} lacks {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict(found["state"], strict=False)
    return cfg
