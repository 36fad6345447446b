"""The plotting pieces every lesson figure shares: a mean with its 95 % CI band, one colour per variant, the
finishing touches and an atomic PNG write."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gptlab.io import atomic_write  # noqa: E402
from gptlab.lab import stats  # noqa: E402


def band(samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95 % CI bounds of each list of per-seed values (a bound is the mean where one run gives none)."""
    summaries = [stats.summarize(v) for v in samples]
    mean = np.array([s.mean for s in summaries])
    low = np.array([s.mean if math.isnan(s.ci_low) else s.ci_low for s in summaries])
    high = np.array([s.mean if math.isnan(s.ci_high) else s.ci_high for s in summaries])
    return mean, low, high


def save_figure(fig, ax, path: Path, title: str, legend_cols: int = 1) -> None:
    """The finishing touches every lesson plot shares, then an atomic PNG write."""
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=legend_cols)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def colors(variants: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(variants)}


def write_figure(fig, path: Path) -> None:
    """Save a finished figure as a PNG, atomically, and free it."""
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
