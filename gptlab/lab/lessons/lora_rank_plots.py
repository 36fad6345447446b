"""The figures of the lora-rank lesson's report (kept beside the lesson so the lesson file reads like the lesson)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gptlab.lab import stats


def plot_rank(results, analysis: dict, loss_png: Path, delta_png: Path, full_name: str) -> None:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import write_figure

    cells = [c for c in results.cells if c.summary.get("scaling")]
    colors = {"lora": "tab:blue", "rslora": "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    for ax, label in zip(axes, ("shared", "tuned")):
        for method in ("lora", "rslora"):
            lr = analysis["shared_lr"] if label == "shared" else analysis["tuned"][method]
            ranks = sorted(analysis["rank_means"].get((method, lr), {}))
            summaries = [stats.summarize([c.summary["val_loss"] for c in cells if c.summary["scaling"] == method
                                          and c.summary["lr"] == lr and c.summary["rank"] == r]) for r in ranks]
            mean = np.array([s.mean for s in summaries])
            low = np.array([s.ci_low if not math.isnan(s.ci_low) else s.mean for s in summaries])
            high = np.array([s.ci_high if not math.isnan(s.ci_high) else s.mean for s in summaries])
            ax.plot(ranks, mean, "o-", color=colors[method], label=f"{method} (lr {lr:g})")
            ax.fill_between(ranks, low, high, color=colors[method], alpha=0.2, lw=0)
        lr_full = analysis["shared_lr"] if label == "shared" else analysis["tuned"].get(full_name)
        full = stats.summarize([c.summary["val_loss"] for c in cells if c.summary["scaling"] == full_name
                                and c.summary["lr"] == lr_full])
        if full.n:
            ax.axhline(full.mean, color="k", ls="--", lw=1, label=f"full fine-tuning (lr {lr_full:g})")
            if not math.isnan(full.ci_low):
                ax.axhspan(full.ci_low, full.ci_high, color="k", alpha=0.08)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        ax.set_title(f"{label} learning rate", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("final val loss (poems)")
    fig.suptitle("Fine-tuning loss against rank (mean, 95 % CI over seeds)", fontsize=11)
    write_figure(fig, loss_png)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    lr = analysis["shared_lr"]
    for method in ("lora", "rslora"):
        ranks = sorted(analysis["rank_means"].get((method, lr), {}))
        means = [np.mean([c.summary["delta_norm"] for c in cells if c.summary["scaling"] == method
                          and c.summary["lr"] == lr and c.summary["rank"] == r]) for r in ranks]
        ax.plot(ranks, means, "o-", color=colors[method], label=method)
    full = [c.summary["delta_norm"] for c in cells if c.summary["scaling"] == full_name and c.summary["lr"] == lr]
    if full:
        ax.axhline(np.mean(full), color="k", ls="--", lw=1, label="full fine-tuning")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("‖ΔW‖ after fine-tuning (all adapted layers)")
    ax.set_title(f"Size of the update (shared lr {lr:g})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    write_figure(fig, delta_png)
