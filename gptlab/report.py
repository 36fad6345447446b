"""A run's report: loss curves as a PNG and a short Markdown summary, rebuilt from the run's files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or wanted, on a server
import matplotlib.pyplot as plt  # noqa: E402

from gptlab.io import atomic_write, atomic_write_text  # noqa: E402
from gptlab.train.metrics import read_metrics  # noqa: E402


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, title: str = "") -> None:
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def plot_per_position(curves: dict[int, list[float]], out_png: str | Path, title: str = "",
                      train_length: int | None = None) -> None:
    """Mean loss of the token at each position of the window, one line per evaluated length."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for length, curve in sorted(curves.items()):
        ax.plot(range(len(curve)), curve, lw=1, label=f"length {length}")
    if train_length:
        ax.axvline(train_length - 1, color="k", ls=":", lw=1, label="training length")
    ax.set_xlabel("position in the window")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or "loss per position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def write_summary(run_dir: str | Path, title: str, facts: dict[str, str], samples: list[str]) -> Path:
    """report.md beside loss_curve.png in the run directory."""
    run_dir = Path(run_dir)
    plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png", title)
    lines = [f"# {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", "![loss curve](loss_curve.png)", "", "## Samples", ""]
    for i, s in enumerate(samples, 1):
        lines += [f"### Sample {i}", "", "```text", s.rstrip(), "```", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
