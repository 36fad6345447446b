"""Quantizing a run directory (`gptlab quantize`) and inspecting one (`gptlab quant inspect`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from gptlab.config import QuantConfig, RunConfig, apply_overrides
from gptlab.data import TokenData, eval_batches, load_data
from gptlab.errors import ConfigError
from gptlab.evaluate import evaluate
from gptlab.io import check_distinct
from gptlab.run import load_model, write_model_run
from gptlab.rundir import check_data_for_run, check_model_run_out, run_data_dir, run_info

MODEL_FILE_GLOB = "checkpoints/*/model.safetensors"


def calibration_batches(data: TokenData, cfg: RunConfig, n: int | None = None, seed: int | None = None,
                        batch_size: int = 8) -> list[torch.Tensor]:
    """`quant.calib_batches` windows batches from the training split, drawn with `quant.calib_seed`."""
    n = n or cfg.quant.calib_batches
    seed = cfg.quant.calib_seed if seed is None else seed
    return [x for x, _ in eval_batches(data.train, n, batch_size, cfg.model.block_size, seed=10_000 + seed)]


def quant_overrides(overrides: list[str]) -> list[str]:
    for text in overrides:
        if not text.split("=", 1)[0].strip().startswith("quant."):
            raise ConfigError(f"--set {text}: gptlab quantize takes only quant.* settings (e.g. quant.bits=4)")
    return overrides


def disk_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(run_dir).glob(MODEL_FILE_GLOB))


def quantize_run(run_dir: str | Path, out: str | Path, overrides: list[str] | None = None,
                 data_dir: str | Path | None = None, eval_windows: int = 64, overwrite: bool = False) -> dict:
    """Write a quantized copy of a run: post-training quantization of a float run, or the integer form of a
    quantization-aware one. Returns the val loss before and after and the sizes on disk."""
    from gptlab.quant.qat import convert_qat
    from gptlab.quant.ptq import quantize
    from gptlab.transforms import recorded

    run_dir = Path(run_dir)
    if eval_windows < 1:
        raise ConfigError(f"--eval-windows must be at least 1, got {eval_windows}")
    check_distinct(out, run_dir)
    check_model_run_out(out, overwrite)
    model, tok, cfg = load_model(run_dir, "best")
    if run_info(run_dir).get("quantized"):
        raise ConfigError(f"{run_dir} is already quantized; quantize the float run it came from")
    if cfg.lora.r > 0:
        raise ConfigError(f"{run_dir} is a LoRA fine-tune; merge it first with `gptlab merge`")
    wanted = apply_overrides(cfg, quant_overrides(overrides or []))
    data = load_data(run_data_dir(run_dir, data_dir))
    check_data_for_run(run_dir, tok, data)
    length = cfg.model.block_size
    float_loss = None
    if cfg.quant.qat != "none":  # it becomes exactly what it was trained to be
        changed = [f.name for f in dataclasses.fields(QuantConfig)
                   if getattr(wanted.quant, f.name) != getattr(cfg.quant, f.name)]
        if changed:
            raise ConfigError(f"{run_dir} was trained quantization-aware with {', '.join('quant.' + k for k in changed)} "
                              "as saved in its config; quantize it with those settings")
        from gptlab.quant.qat import float_weights

        with float_weights(model):
            float_loss = evaluate(model, data.val, length, max_windows=eval_windows).loss
        convert_qat(model)
        qcfg = wanted.quant
    else:
        float_loss = evaluate(model, data.val, length, max_windows=eval_windows).loss
        qcfg = wanted.quant
        quantize(model, qcfg, calibration=calibration_batches(data, wanted))
    quant_loss = evaluate(model, data.val, length, max_windows=eval_windows).loss
    if not (math.isfinite(float_loss) and math.isfinite(quant_loss)):
        raise ConfigError(f"the val loss is {float_loss} before and {quant_loss} after quantizing {run_dir}; "
                          "nothing was written")
    final_cfg = dataclasses.replace(cfg, quant=qcfg)
    info = {"data": run_info(run_dir).get("data"), "quantized": True, "source": str(run_dir.resolve()),
            "val_loss_float": float_loss, "val_loss_quantized": quant_loss,
            "transforms": [recorded(model, "quantize")]}  # reloaded as recorded, whatever filter chose the layers
    write_model_run(out, final_cfg, tok, model, info, overwrite)
    return {"val_loss_float": float_loss, "val_loss_quantized": quant_loss, "bytes_float": disk_bytes(run_dir),
            "bytes_quantized": disk_bytes(Path(out)), "eval_windows": eval_windows, "length": length}


def inspect_run(run_dir: str | Path, overrides: list[str] | None = None, data_dir: str | Path | None = None,
                eval_windows: int = 32, with_sensitivity: bool = True):
    from gptlab.quant.inspect import inspect_model

    if eval_windows < 1:
        raise ConfigError(f"--eval-windows must be at least 1, got {eval_windows}")
    model, tok, cfg = load_model(run_dir, "best")
    if run_info(run_dir).get("quantized") or cfg.quant.qat != "none":
        raise ConfigError(f"{run_dir} is already quantized; inspect the float run")
    cfg = apply_overrides(cfg, quant_overrides(overrides or []))
    data = load_data(run_data_dir(run_dir, data_dir))
    check_data_for_run(run_dir, tok, data)
    return cfg.quant, inspect_model(model, cfg.quant, calibration_batches(data, cfg), data.val,
                                    cfg.model.block_size, eval_windows, with_sensitivity)


def describe(q: QuantConfig) -> str:
    granularity = "per tensor" if q.granularity == "tensor" else (f"per group of {q.group_size}" if q.group_size
                                                                 else "per channel")
    acts = "" if q.activations == "none" else f", activations int{q.act_bits} {q.activations}"
    smooth = f", SmoothQuant α={q.smooth:g}" if q.smooth else ""
    return f"weights int{q.bits} {q.scheme} {granularity}{acts}{smooth} on {q.targets}"
