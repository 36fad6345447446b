"""A run's report: loss curves as a PNG and a short Markdown summary, rebuilt from the run's files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or wanted, on a server
import matplotlib.pyplot as plt  # noqa: E402

from gptlab.bands import Band, find_band, judge, run_identity, val_curve  # noqa: E402
from gptlab.io import atomic_write, atomic_write_text  # noqa: E402
from gptlab.train.metrics import read_metrics  # noqa: E402


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, title: str = "", band: Band | None = None) -> None:
    """Train and val loss against the step; with `band`, the reference band drawn under the val curve."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if band is not None:
        ax.fill_between(band.steps, band.lo, band.hi, color="tab:gray", alpha=0.25, lw=0,
                        label=f"reference val band (95 %, {len(band.seeds)} seeds)")
        ax.plot(band.steps, band.mean, color="tab:gray", ls="--", lw=1, label="reference val mean")
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


def band_verdict(run_dir: str | Path, bands: list[Band] | None = None, chosen: Band | None = None
                 ) -> tuple[Band | None, str]:
    """The reference band of the run's config (None if no band matches it) and, in words, where the run falls.
    A `chosen` band is used even for another config, and the verdict names the first setting that differs."""
    identity = run_identity(run_dir)
    band = chosen or find_band(identity, bands)
    if band is None:
        return None, ("no reference band for this config (bands exist for the bundled configs: `gptlab bands list`; "
                      "make one from ≥ 5 seeds with `gptlab bands make`)")
    verdict = f"{judge(band, val_curve(run_dir)).text} — band {band.name!r}: {band.title}"
    differs = [k for k in sorted(set(identity) | set(band.identity)) if identity.get(k) != band.identity.get(k)]
    if differs:
        k = differs[0]
        verdict += (f" (note: this run's config is not the band's: {k} is {identity.get(k)!r}, the band's "
                    f"{band.identity.get(k)!r}" + (f", and {len(differs) - 1} more" if len(differs) > 1 else "") + ")")
    return band, verdict


def write_summary(run_dir: str | Path, title: str, facts: dict[str, str], samples: list[str],
                  bands: list[Band] | None = None, chosen: Band | None = None) -> Path:
    """report.md beside loss_curve.png in the run directory; the loss curve over the config's reference band,
    and a line saying where the run falls in it (or that the config has none)."""
    run_dir = Path(run_dir)
    band, verdict = band_verdict(run_dir, bands, chosen)
    plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png", title, band)
    facts = {**facts, "against the reference band": verdict}
    lines = [f"# {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", "![loss curve](loss_curve.png)", "", "## Samples", ""]
    for i, s in enumerate(samples, 1):
        lines += [f"### Sample {i}", "", "```text", s.rstrip(), "```", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def run_facts(run_dir: str | Path) -> dict[str, str]:
    """What a run's files say about it, for a report rebuilt after the fact (`gptlab report --run`)."""
    from gptlab.config import RunConfig, from_dict, load_yaml

    run_dir = Path(run_dir)
    cfg = from_dict(RunConfig, load_yaml(run_dir / "config.yaml"))
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = max((r["step"] for r in records if isinstance(r.get("step"), int)), default=0)
    val = val_curve(run_dir)
    speeds = sorted(r["tokens_per_s"] for r in records if isinstance(r.get("tokens_per_s"), (int, float)))
    m, t = cfg.model, cfg.train
    facts = {"model": f"{m.n_layer} layers, {m.n_head} heads, d {m.n_embd}, context {m.block_size}, "
                      f"vocabulary {m.vocab_size}",
             "training": f"{steps} of {t.max_steps} steps × {t.batch_size * t.grad_accum} × {m.block_size} tokens, "
                         f"lr {t.lr:g}, seed {t.seed}"}
    if speeds:
        facts["speed"] = f"{speeds[len(speeds) // 2]:,.0f} tokens/s (median of the logged steps)"
    if val:
        best = min(val, key=lambda p: p[1])
        facts["val loss"] = f"best {best[1]:.4f} at step {best[0]}, last {val[-1][1]:.4f} at step {val[-1][0]}"
    return facts
