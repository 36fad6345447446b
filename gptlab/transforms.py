"""A run's model = its architecture (config.yaml) + the transforms applied to it, in order, recorded in run.json.

    run.json  "transforms": [{"name": "lora", "layers": [...]}, {"name": "quantize", "layers": [...]}, ...]

Each transform is a function on a built model (gptlab.adapters.lora.apply_lora, gptlab.quant.prepare_qat,
gptlab.quant.quantize) that picks layers with one filter signature, `(module, fqn) -> bool`. Loading a run
replays the recorded transforms in order on the layers they touched, so a model transformed with any filter
reloads exactly as it was. Adding a technique adds one entry to `STRUCTURES`, not a branch in the loader.
"""

from __future__ import annotations

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


# name -> how to rebuild the structure the transform left (the weights come from the checkpoint afterwards)
STRUCTURES: dict[str, Callable[[nn.Module, RunConfig, dict[str, Any]], None]] = {
    "lora": _lora, "qat": _qat, "quantize": _quantize,
}


def recorded(model: nn.Module, name: str) -> dict[str, Any]:
    """The recipe entry for a transform just applied to `model`: its name and the layers it touched."""
    from gptlab.adapters.lora import lora_layers
    from gptlab.quant.qat import qat_layers
    from gptlab.quant.ptq import quantized_layers

    layers = {"lora": lora_layers, "qat": qat_layers, "quantize": quantized_layers}[name](model)
    return {"name": name, "layers": sorted(layers)}


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
        build = STRUCTURES.get(step.get("name")) if isinstance(step, dict) else None
        if build is None:
            raise CheckpointError(f"unknown transform {step!r} in run.json; this gptlab knows "
                                  f"{', '.join(STRUCTURES)}")
        build(model, cfg, step)
    return model
