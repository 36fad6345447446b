"""A run's model = its architecture (config.yaml) + the transforms applied to it, in order, recorded in run.json.

    run.json  "transforms": [{"name": "lora", "layers": [...]}, {"name": "quantize", "layers": [...]}, ...]

Each transform is a function on a built model (gptlab.adapters.lora.apply_lora, gptlab.quant.prepare_qat,
gptlab.quant.quantize) that picks layers with one filter signature, `(module, fqn) -> bool`. Loading a run
replays the recorded transforms in order on the layers they touched, so a model transformed with any filter
reloads exactly as it was. Adding a technique adds one entry to `TRANSFORMS` (how to find the layers it
touched, how to rebuild them), not a branch in the loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from gptlab.config import RunConfig
from gptlab.model.filters import named


def _lora(model: nn.Module, cfg: RunConfig, step: dict[str, Any]) -> None:
    from gptlab.adapters.lora import apply_lora

    apply_lora(model, cfg.lora, named(step["layers"]) if "layers" in step else None)


def _qat(model: nn.Module, cfg: RunConfig, step: dict[str, Any]) -> None:
    from gptlab.quant.qat import prepare_qat

    prepare_qat(model, cfg.quant, named(step["layers"]) if "layers" in step else None)


def _quantize(model: nn.Module, cfg: RunConfig, step: dict[str, Any]) -> None:
    from gptlab.quant.ptq import quantized_structure

    quantized_structure(model, cfg.quant, step.get("layers"))


def _lora_layers(model: nn.Module) -> list[str]:
    from gptlab.adapters.lora import lora_layers

    return list(lora_layers(model))


def _qat_layers(model: nn.Module) -> list[str]:
    from gptlab.quant.qat import qat_layers

    return list(qat_layers(model))


def _quantized_layers(model: nn.Module) -> list[str]:
    from gptlab.quant.ptq import quantized_layers

    return list(quantized_layers(model))


@dataclass(frozen=True)
class Transform:
    layers: Callable[[nn.Module], list[str]]  # the layers a transform touched, read off the transformed model
    rebuild: Callable[[nn.Module, RunConfig, dict[str, Any]], None]  # that structure again on a fresh model (the
    # weights come from the checkpoint afterwards); with no "layers" in the step, on the config's default layers
    in_training: Callable[[RunConfig], bool] = lambda cfg: False  # applied by training when the config asks;
    # otherwise by a command on a finished run (quantize)


TRANSFORMS: dict[str, Transform] = {
    "lora": Transform(_lora_layers, _lora, in_training=lambda cfg: cfg.lora.r > 0),
    "qat": Transform(_qat_layers, _qat, in_training=lambda cfg: cfg.quant.qat != "none"),
    "quantize": Transform(_quantized_layers, _quantize),
}


def apply_for_training(model: nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """Apply, in order, the transforms a training config asks for; returns their recipe entries for run.json.

    Activation checkpointing and compile are not transforms in this sense: they wrap how the model runs, not the
    structure its weights fit, so the Trainer applies them from the config on every start and resume and loading
    never needs them."""
    steps = []
    for name, transform in TRANSFORMS.items():
        if transform.in_training(cfg):
            transform.rebuild(model, cfg, {})
            steps.append(recorded(model, name))
    return steps


def recorded(model: nn.Module, name: str) -> dict[str, Any]:
    """The recipe entry for a transform just applied to `model`: its name and the layers it touched."""
    return {"name": name, "layers": sorted(TRANSFORMS[name].layers(model))}


def recipe(cfg: RunConfig, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The transforms of a run: as recorded, or for a run written before recipes were, as its config implies."""
    if isinstance(info.get("transforms"), list):
        return info["transforms"]
    steps: list[dict[str, Any]] = []
    if cfg.lora.r > 0:
        steps.append({"name": "lora"})
    if info.get("quantized"):
        steps.append({"name": "quantize", **({"layers": info["quantized_layers"]} if "quantized_layers" in info
                                             else {})})
    elif cfg.quant.qat != "none":
        steps.append({"name": "qat"})
    return steps


def replay(model: nn.Module, cfg: RunConfig, steps: list[dict[str, Any]]) -> nn.Module:
    from gptlab.errors import CheckpointError

    for step in steps:
        transform = TRANSFORMS.get(step.get("name")) if isinstance(step, dict) else None
        if transform is None:
            raise CheckpointError(f"unknown transform {step!r} in run.json; this gptlab knows "
                                  f"{', '.join(TRANSFORMS)}")
        transform.rebuild(model, cfg, step)
    return model
