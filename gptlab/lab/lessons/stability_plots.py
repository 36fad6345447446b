"""The figures of the stability lesson's report (kept beside the lesson so the lesson file reads like the lesson)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptlab.train.metrics import read_metrics


def plot_lr_curves(results, lrs: list[float], path: Path, baseline: str) -> None:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import band, save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for variant in results.variants:
        mean, low, high = band([results.values(f"lr{lr:g}", variant, "val_loss") for lr in lrs])
        line, = ax.plot(lrs, mean, marker="o", label=variant, lw=1.4, ls="-" if variant == baseline else "--")
        ax.fill_between(lrs, low, high, color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final val loss (diverged = ln vocabulary)")
    save_figure(fig, ax, path, "Final loss against learning rate (mean, 95 % CI over seeds)", legend_cols=2)


def plot_attention_growth(results, lrs: list[float], path: Path) -> float:
    """Max attention logit over steps, mean over seeds, at the second-highest learning rate; returns that rate."""
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import save_figure

    lr = lrs[-2] if len(lrs) > 2 else lrs[-1]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for variant in results.variants:
        runs = []
        for c in results.arm(f"lr{lr:g}", variant):
            cell = results.cell_dir(c) / "metrics.jsonl"
            runs.append({r["step"]: r["max_attn_logit"] for r in read_metrics(cell) if "max_attn_logit" in r})
        steps = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
        if steps:
            ax.plot(steps, [np.mean([r[s] for r in runs]) for s in steps], label=variant, lw=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("largest attention logit (probe window)")
    save_figure(fig, ax, path, f"Attention-logit growth at lr {lr:g} (mean over seeds; diverged runs end early)",
                legend_cols=2)
    return lr
