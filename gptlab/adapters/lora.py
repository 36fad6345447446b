"""LoRA and rank-stabilized LoRA as a model transform: the GPT module knows nothing of adapters.

`apply_lora` swaps each targeted `nn.Linear` for a `LoraLinear` that adds scale · B(A(x)), freezes every other
weight, and initialises A Kaiming-uniform and B with zeros, so the model is unchanged at step 0. The scale is
alpha / r for LoRA and alpha / sqrt(r) for rsLoRA (`LoraConfig.scale`). Adapters are saved in PEFT's layout
(see `gptlab.adapters.peft_format`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gptlab.config import LoraConfig
from gptlab.errors import ConfigError
from gptlab.model.filters import LayerFilter, block_linears, linears, replace_module


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=base.weight.device)
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update scale · B·A, shaped like the base weight (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False


def apply_lora(model: nn.Module, cfg: LoraConfig, only: LayerFilter | None = None) -> nn.Module:
    """Wrap the layers `only` picks (default: the blocks' layers named by `lora.targets`) with adapters, in place,
    and freeze everything else; returns the model."""
    if cfg.r <= 0:
        raise ConfigError("lora.r must be at least 1 to add adapters, e.g. --set lora.r=16")
    if lora_layers(model):
        raise ConfigError("the model already has LoRA adapters; merge or remove them first")
    layers = linears(model, only or block_linears(cfg.target_list))
    if not layers:
        raise ConfigError("no linear layer matches the LoRA filter; check lora.targets")
    for p in model.parameters():
        p.requires_grad_(False)
    for fqn, base in layers.items():
        replace_module(model, fqn, LoraLinear(base, cfg.r, cfg.scale, cfg.dropout))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def merge(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back; all weights trainable again."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent_name, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), attr, layer.base_layer)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, under gptlab names: h.0.attn.c_attn.lora_A.weight, ..."""
    return {f"{name}.{part}.weight": getattr(layer, part).weight.detach().contiguous().cpu()
            for name, layer in lora_layers(model).items() for part in ("lora_A", "lora_B")}


def update_norms(model: nn.Module) -> dict[str, float]:
    """‖scale · B·A‖_F per adapted layer: how far the adapters have moved each weight."""
    with torch.no_grad():
        return {name: float(layer.delta_weight().norm()) for name, layer in lora_layers(model).items()}


def trainable_report(model: nn.Module) -> str:
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    return f"trainable parameters: {trainable:,} of {total:,} ({trainable / max(total, 1):.3%})"
