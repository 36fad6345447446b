"""The figures of the quantization lesson's report, kept beside the lesson so the lesson file reads like the lesson."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gptlab.lab import stats


def plot_bits(results, path: Path, bits: tuple[int, ...], variants: list[str]) -> bool:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import write_figure

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    drawn = False
    for variant in variants:
        xs, means, errs = [], [], []
        for b in bits:
            s = stats.summarize(results.values(f"w{b}", variant, "loss_increase"))
            if s.n:
                xs.append(b)
                means.append(s.mean)
                errs.append(0 if math.isnan(s.ci_low) else s.half_width)
        if xs:
            drawn = True
            ax.errorbar(xs, means, yerr=errs, fmt="o-", capsize=3, lw=1.2, ms=4, label=variant)
    if not drawn:
        plt.close(fig)
        return False
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("weight bits")
    ax.set_xticks(bits)
    ax.invert_xaxis()
    ax.set_ylabel("val loss increase over float (symlog)")
    ax.set_title("Quantization damage by bit width (mean, 95 % CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    write_figure(fig, path)
    return True


def plot_sensitivity(per_bits: dict[int, dict[str, float]], path: Path) -> None:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import write_figure

    bits = sorted(per_bits, reverse=True)
    names = list(per_bits[bits[0]])
    grid = np.array([[per_bits[b][n] for n in names] for b in bits])
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 2.8), dpi=110)
    im = ax.imshow(grid, aspect="auto", cmap="magma_r")
    ax.set_yticks(range(len(bits)), [f"int{b}" for b in bits])
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    fig.colorbar(im, ax=ax, label="Δ val loss")
    ax.set_title("Val loss increase when only this layer is quantized", fontsize=10)
    write_figure(fig, path)


def plot_gradient_flow(results, path: Path, qat_bits: tuple[int, ...]) -> bool:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import write_figure
    from gptlab.train.metrics import read_metrics

    keys = ("qat_grad_ratio", "qat_zero_grad_frac", "qat_clipped_frac")
    estimators = ("qat-ste", "qat-clipped", "qat-lsq", "qat-broken")
    conditions = [f"w{b}" for b in qat_bits if any(c.condition == f"w{b}" and c.variant in estimators
                                                  for c in results.cells)]
    if not conditions:
        return False
    fig, axes = plt.subplots(len(conditions), 3, figsize=(13, 3.2 * len(conditions)), dpi=110, squeeze=False)
    for row, condition in zip(axes, conditions):
        for variant in estimators:
            series = []
            for c in results.arm(condition, variant):
                path_ = results.cell_dir(c) / "metrics.jsonl"
                series.append({r["step"]: r for r in read_metrics(path_) if "qat_grad_ratio" in r})
            if not series:
                continue
            steps = sorted(set.intersection(*(set(s) for s in series)))
            for ax, key in zip(row, keys):
                values = np.array([[s[t][key] for t in steps] for s in series], dtype=float)
                ax.plot(steps, values.mean(0), label=variant, lw=1.4)
                if len(series) > 1:
                    ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15, lw=0)
        for ax, key in zip(row, keys):
            ax.set_title(f"{condition}: {key}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    write_figure(fig, path)
    return True
