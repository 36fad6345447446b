"""Diagnostics before quantizing: where the outliers are and which layers the model is sensitive to.

Per layer: weight statistics (max |w|, median |w|, their ratio, kurtosis), the statistics of the activations
entering the layer over calibration batches (max and median of the per-channel max |x|, outlier channels, whose
max |x| exceeds OUTLIER_FACTOR × the median channel's, and kurtosis), and the sensitivity: the change in val loss
when only that layer is quantized with the given config.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from gptlab.config import QuantConfig
from gptlab.evaluate import evaluate
from gptlab.quant.ptq import feed_inputs, float_linears, quantize, target_filter

OUTLIER_FACTOR = 6.0


@dataclass
class LayerStats:
    name: str
    weight_max: float
    weight_median: float
    weight_kurtosis: float
    act_max: float
    act_channel_median: float
    act_outlier_channels: int
    act_kurtosis: float
    sensitivity: float | None = None  # val loss change when only this layer is quantized

    @property
    def act_ratio(self) -> float:
        return self.act_max / max(self.act_channel_median, 1e-12)


def kurtosis(x: Tensor) -> float:
    """Pearson kurtosis E[(x-μ)⁴]/σ⁴: 3 for a Gaussian, large when a few values dominate."""
    x = x.detach().double().flatten()
    d = x - x.mean()
    var = d.pow(2).mean()
    return float(d.pow(4).mean() / var.pow(2)) if var > 0 else 0.0


@torch.no_grad()
def layer_stats(model: nn.Module, batches: Iterable[Tensor], cfg: QuantConfig) -> list[LayerStats]:
    layers = float_linears(model, target_filter(cfg))
    moments: dict[str, list] = {name: [None, 0.0, 0.0, 0.0, 0.0, 0] for name in layers}  # absmax, Σx, Σx², Σx³, Σx⁴, n

    def record(name: str, x: Tensor) -> None:
        x = x.double()
        m = moments[name]
        a = x.abs().amax(0)
        m[0] = a if m[0] is None else torch.maximum(m[0], a)
        m[1] += float(x.sum()); m[2] += float(x.pow(2).sum()); m[3] += float(x.pow(3).sum())
        m[4] += float(x.pow(4).sum()); m[5] += x.numel()

    feed_inputs(model, layers, batches, record)
    out = []
    for name, layer in layers.items():
        absmax, s1, s2, s3, s4, n = moments[name]
        mu = s1 / n
        var = s2 / n - mu ** 2
        m4 = s4 / n - 4 * mu * s3 / n + 6 * mu ** 2 * s2 / n - 3 * mu ** 4
        median = float(absmax.median())
        w = layer.weight.detach().abs()
        out.append(LayerStats(name, float(w.max()), float(w.median()), kurtosis(layer.weight),
                              float(absmax.max()), median, int((absmax > OUTLIER_FACTOR * median).sum()),
                              m4 / var ** 2 if var > 0 else 0.0))
    return out


def sensitivity(model: nn.Module, cfg: QuantConfig, val_tokens: np.ndarray, length: int, max_windows: int,
                calibration: list[Tensor] | None = None) -> dict[str, float]:
    """Val loss change when only one layer is quantized, for each layer the config targets."""
    base = evaluate(model, val_tokens, length, max_windows=max_windows).loss
    out = {}
    for name in float_linears(model, target_filter(cfg)):
        single = quantize(copy.deepcopy(model), cfg, only=lambda m, fqn, name=name: fqn == name, calibration=calibration)
        out[name] = evaluate(single, val_tokens, length, max_windows=max_windows).loss - base
    return out


def inspect_model(model: nn.Module, cfg: QuantConfig, calibration: list[Tensor], val_tokens: np.ndarray,
                  length: int, max_windows: int = 32, with_sensitivity: bool = True) -> list[LayerStats]:
    stats = layer_stats(model, calibration, cfg)
    if with_sensitivity:
        sens = sensitivity(model, cfg, val_tokens, length, max_windows, calibration)
        for s in stats:
            s.sensitivity = sens[s.name]
    return stats


def stats_table(stats: list[LayerStats]) -> list[list[str]]:
    rows = [["layer", "max|w|", "median|w|", "w kurtosis", "max|x|", "median channel max|x|", "ratio",
             f"outlier channels (>{OUTLIER_FACTOR:g}×)", "x kurtosis", "Δ val loss alone"]]
    for s in stats:
        rows.append([s.name, f"{s.weight_max:.3f}", f"{s.weight_median:.4f}", f"{s.weight_kurtosis:.1f}",
                     f"{s.act_max:.2f}", f"{s.act_channel_median:.3f}", f"{s.act_ratio:.1f}",
                     str(s.act_outlier_channels), f"{s.act_kurtosis:.1f}",
                     "—" if s.sensitivity is None else f"{s.sensitivity:+.4f}"])
    return rows


def as_records(stats: list[LayerStats]) -> list[dict]:
    return [{**asdict(s), "act_ratio": s.act_ratio} for s in stats]
