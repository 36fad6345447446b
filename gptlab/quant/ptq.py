"""Post-training quantization as a model transform: `quantize(model, QuantConfig, only=...)`.

Each selected `nn.Linear` is replaced by a `QuantLinear` holding integer weights. Which layers is a filter
`(module, fqn) -> bool` (gptlab.model.filters, torchao's convention), never a special case in the model: by default the blocks' four linear layers, with
`targets=all` the output head too (a tied head gets its own integer copy; the embedding table stays float).

Static activation scales and SmoothQuant need activation statistics: the per-input-channel largest |x| seen by
each layer over a few calibration batches. SmoothQuant (Xiao et al.) divides each input channel j by
s_j = max|X_j|^α / max|W_·j|^(1-α) and multiplies the weight's column j by s_j: the product is unchanged, and
the activation outliers move into the weights, which quantize per output channel and tolerate them better.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from gptlab.config import QuantConfig
from gptlab.errors import ConfigError
from gptlab.model.filters import LayerFilter, block_linears, linears, named, replace_module  # noqa: F401 (re-exported)
from gptlab.quant.fake import QuantSpec
from gptlab.quant.linear import QuantLinear

def weight_spec(cfg: QuantConfig) -> QuantSpec:
    return QuantSpec(cfg.bits, cfg.scheme == "symmetric", cfg.granularity, cfg.group_size, cfg.clip_ratio)


def target_filter(cfg: QuantConfig) -> LayerFilter:
    """The layers `cfg.targets` names: the blocks' linear layers, and the head with targets=all."""
    return block_linears(head=cfg.targets == "all")


def float_linears(model: nn.Module, only: LayerFilter) -> dict[str, nn.Linear]:
    return linears(model, only)


@torch.no_grad()
def feed_inputs(model: nn.Module, layers: dict[str, nn.Module], batches: Iterable[Tensor], record) -> None:
    """Run `batches` through the model in eval mode, calling record(name, x) with the input of each named layer
    flattened to (rows, channels); hooks are removed and the training mode restored afterwards."""
    def hook(name):
        return lambda module, args: record(name, args[0].detach().reshape(-1, args[0].shape[-1]))

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def activation_absmax(model: nn.Module, layers: dict[str, nn.Module], batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Per-input-channel max |x| entering each layer over the calibration batches."""
    stats: dict[str, Tensor] = {}

    def record(name: str, x: Tensor) -> None:
        a = x.abs().float().amax(0)
        stats[name] = torch.maximum(stats[name], a) if name in stats else a

    feed_inputs(model, layers, batches, record)
    return stats


def smoothing_factors(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    w = weight.detach().abs().float().amax(0).clamp_min(1e-5)
    a = act_absmax.clamp_min(1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp_min(1e-5)


def quantize(model: nn.Module, cfg: QuantConfig, only: LayerFilter | None = None,
             calibration: Iterable[Tensor] | None = None) -> nn.Module:
    """Replace the chosen linear layers by integer ones (in place); returns the model.

    `calibration` (batches of token ids) is needed for static activation scales and for smoothing.
    """
    only = only or target_filter(cfg)
    layers = float_linears(model, only)
    if not layers:
        raise ConfigError("no linear layer matches the quantization filter; check quant.targets")
    needs_stats = cfg.activations == "static" or cfg.smooth > 0
    if needs_stats and calibration is None:
        raise ConfigError("quant.activations=static and quant.smooth need calibration batches (the run's data)")
    stats = activation_absmax(model, layers, calibration) if needs_stats else {}
    spec = weight_spec(cfg)
    for name, linear in layers.items():
        smooth = smoothing_factors(stats[name], linear.weight, cfg.smooth) if cfg.smooth > 0 else None
        act_scale = None
        if cfg.activations == "static":
            a = stats[name] / smooth if smooth is not None else stats[name]
            act_scale = (a.max() / (2 ** (cfg.act_bits - 1) - 1)).clamp_min(1e-12)
        replace_module(model, name, QuantLinear.from_float(linear, spec, cfg.activations, cfg.act_bits, smooth,
                                                           act_scale, name))
    return model


def quantized_structure(model: nn.Module, cfg: QuantConfig, layers: Iterable[str] | None = None) -> nn.Module:
    """The layers `quantize` made, empty, for loading a saved quantized model's state into: the `layers` it
    recorded (whatever filter chose them), else those `cfg.targets` names."""
    spec = weight_spec(cfg)
    for name, linear in float_linears(model, named(layers) if layers is not None else target_filter(cfg)).items():
        q = QuantLinear(linear.in_features, linear.out_features, linear.bias is not None, spec, cfg.activations,
                        cfg.act_bits, cfg.smooth > 0, name)
        replace_module(model, name, q.to(linear.weight.device))
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's state as saved (each shared tensor once)."""
    from gptlab.train.checkpoint import model_state

    return sum(t.numel() * t.element_size() for t in model_state(model).values())


ON_LOAD = ("int8", "int4")  # `sample --quant`, `bench decode --quant`: weight formats applied to a float model


def quantize_on_load(model: nn.Module, name: str) -> nn.Module:
    """Every linear layer, head included, to int8 per channel or to int4 in groups of 32 inputs (per channel when
    the width is not a multiple of 32): the formats gptlab's CPU kernels decode fastest (see lesson 4 for what each
    costs in loss)."""
    if name not in ON_LOAD:
        raise ConfigError(f"unknown weight format {name!r}; choose one of {', '.join(ON_LOAD)}")
    if name == "int8":
        return quantize(model, QuantConfig(bits=8, targets="all"))
    widths = {m.in_features for m in model.modules() if isinstance(m, nn.Linear)}
    group = 32 if all(w % 32 == 0 for w in widths) else 0
    return quantize(model, QuantConfig(bits=4, group_size=group, targets="all"))
