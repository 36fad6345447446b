"""The figures of the positions lesson's report (kept beside the lesson so the lesson file reads like the lesson)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np



def _style(reading: str) -> dict:
    return {"ls": "--" if "+" in reading else "-", "marker": "o" if "+" not in reading else "x"}


def plot_lengths(results, table: dict, path: Path, multiples: tuple[int, ...]) -> None:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import band, save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for reading, by_length in table.items():
        xs = [m for m in multiples if by_length[f"{m}x"]]
        mean, low, high = band([by_length[f"{m}x"] for m in xs])
        line, = ax.plot(xs, mean, label=reading, **_style(reading))
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(multiples, [f"{m}×" for m in multiples])
    ax.set_yscale("log")
    ax.set_xlabel("evaluation length / training length")
    ax.set_ylabel("val loss (log scale)")
    save_figure(fig, ax, path, "Loss against evaluation length (mean, 95 % CI over seeds)", legend_cols=2)


def plot_positions(results, path: Path) -> None:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import save_figure

    curves: dict[str, list[list[float]]] = {}
    train_length = None
    for c in results.cells:
        f = results.cell_dir(c) / "per_position.json"
        if f.is_file():
            data = json.loads(f.read_text())
            train_length = data["train_length"]
            for reading, curve in data["curves"].items():
                curves.setdefault(reading, []).append(curve)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for reading, runs in curves.items():
        mean = np.mean(np.array(runs), axis=0)
        window = max(1, len(mean) // 64)  # smooth a little: single positions are noisy
        smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window // 2, smooth, lw=1.2, label=reading, ls=_style(reading)["ls"])
    if train_length:
        ax.axvline(train_length - 1, color="k", ls=":", lw=1, label="training length")
    ax.set_yscale("log")
    ax.set_xlabel("position in the window")
    ax.set_ylabel("loss of the token at that position (log)")
    save_figure(fig, ax, path, "Where each scheme breaks down (mean over seeds, longest length)", legend_cols=2)
