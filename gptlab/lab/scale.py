"""Effect versus scale: a lesson's headline comparisons rerun at several model sizes and training budgets, the
effect's trend fitted against log-parameters and log-tokens, and the trend said in words.

A `scale` profile's conditions are SIZE-BUDGET pairs (`scale_conditions`); the grid's settings carry
{"scale": {"sizes": [...], "budgets": [...]}} so the report knows to add this section. Within one budget the
effect (b − a, paired by seed) is regressed on log2(parameters) with one intercept per seed; within one size, on
log2(tokens). The words:

- flips: the effect is significant with one sign at the smallest scale and with the other at the largest;
- grows / shrinks: the slope's CI excludes zero, and the effect's magnitude rises / falls with scale;
- holds: the slope is within ±margin per doubling (two one-sided tests on the slope);
- inconclusive: none of these at these seeds.

The largest scale measured is always stated: a trend over a decade of small models is not a law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402

from gptlab.document import Block  # noqa: E402
from gptlab.lab import stats  # noqa: E402
from gptlab.lab.grid import Condition, Dataset  # noqa: E402
from gptlab.lab.plots import write_figure  # noqa: E402


# The model sizes the lessons' scale profiles share: ~25k to ~800k parameters in the blocks (a char vocabulary adds
# little; a BPE one adds V × d), and two one-layer shapes to try a profile in seconds.
SIZES = {"xs": {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32},
         "s": {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 64},
         "m": {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128}}
QUICK_SIZES = {"xxs": {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16},
               "xs": {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32}}


def schedule(steps: int, warmup_fraction: float = 0.1) -> dict[str, int]:
    """A budget of optimizer steps with warmup, evaluation, checkpoints and logging scaled with it, so every budget
    has the same schedule shape."""
    return {"train.max_steps": steps, "train.warmup_steps": max(1, int(steps * warmup_fraction)),
            "train.eval_every": max(1, steps // 6), "train.checkpoint_every": max(1, steps // 3),
            "train.log_every": max(1, steps // 30)}


def scale_conditions(dataset: Dataset, sizes: dict[str, dict[str, Any]], budgets: dict[str, int],
                     warmup_fraction: float = 0.1) -> tuple[Condition, ...]:
    """SIZE-BUDGET conditions: each size's model overrides at each budget of optimizer steps (`schedule`)."""
    return tuple(Condition(f"{size}-{budget}", dataset, {**model, **schedule(steps, warmup_fraction)},
                           f"{size} model, {steps} steps")
                 for size, model in sizes.items() for budget, steps in budgets.items())


def split_condition(name: str) -> tuple[str, str]:
    """(size, budget) of a SIZE-BUDGET condition name."""
    size, _, budget = name.rpartition("-")
    return size, budget


def scale_settings(sizes: dict, budgets: dict) -> dict[str, Any]:
    return {"scale": {"sizes": list(sizes), "budgets": list(budgets)}}


@dataclass(frozen=True)
class Point:
    size: str
    budget: str
    parameters: float
    tokens: float
    diffs: dict[int, float]  # seed -> b − a

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.diffs.values()))) if self.diffs else math.nan

    def ci(self) -> tuple[float, float]:
        d = np.array(list(self.diffs.values()))
        if len(d) < 2:
            return math.nan, math.nan
        half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        return float(d.mean() - half), float(d.mean() + half)


def classify(points: list[Point], trend: stats.Trend, margin: float) -> str:
    """Words for how the effect moves along the points (sorted smallest scale first)."""
    first, last = points[0].ci(), points[-1].ci()
    if all(not math.isnan(v) for v in (*first, *last)):
        if (first[1] < 0 < last[0]) or (first[0] > 0 > last[1]):
            return "flips"
    if math.isnan(trend.slope):
        return "inconclusive"
    if trend.ci_low > 0 or trend.ci_high < 0:
        overall = np.mean([p.mean for p in points])
        return "grows" if trend.slope * overall > 0 else "shrinks"
    return "holds" if stats.tost(trend.slope, trend.se, trend.df, margin) < 0.05 else "inconclusive"


def fit(points: list[Point], axis: str) -> stats.Trend:
    """The within-seed slope of the effect on log2(parameters) or log2(tokens) over `points`."""
    x, y, g = [], [], []
    for p in points:
        for seed, d in p.diffs.items():
            x.append(math.log2(p.parameters if axis == "parameters" else p.tokens))
            y.append(d)
            g.append(seed)
    return stats.trend(x, y, groups=g)


def points(results, a: str | None, b: str, metric: str, sizes: list[str], budgets: list[str]) -> list[Point]:
    """One Point per size and budget where both arms ran; with `a` None the "difference" is b's own value (an
    effect each cell measured against its own reference, such as the loss a quantization adds)."""
    out = []
    for size in sizes:
        for budget in budgets:
            condition = f"{size}-{budget}"
            arm_b = {c.seed: c for c in results.arm(condition, b)}
            arm_a = arm_b if a is None else {c.seed: c for c in results.arm(condition, a)}
            shared = sorted(set(arm_a) & set(arm_b))
            if not shared:
                continue
            diffs = {s: float(arm_b[s].summary[metric]) - (0.0 if a is None else float(arm_a[s].summary[metric]))
                     for s in shared}
            out.append(Point(size, budget, float(np.mean([arm_a[s].summary["parameters"] for s in shared])),
                             float(np.mean([arm_a[s].summary["tokens"] for s in shared])), diffs))
    return out


def pair_name(a: str | None, b: str) -> str:
    return b if a is None else f"{a} → {b}"


def bits_per_byte_factor(results, condition: str) -> float | None:
    """1 nat/token in bits/byte on the condition's validation text, when the run recorded its text units."""
    datasets = {c["name"]: c["dataset"] for c in results.meta.get("grid", {}).get("conditions", [])}
    per_token = results.text_units().get(datasets.get(condition), {}).get("bytes_per_token")
    return 1 / (math.log(2) * per_token) if per_token else None


def is_scale(results) -> bool:
    """Whether `results` come from a scale profile (SIZE-BUDGET conditions)."""
    return bool(results.meta.get("grid", {}).get("settings", {}).get("scale"))


def scale_blocks(results, pairs: list[tuple[str | None, str]], metrics: list[tuple[str, str]], margin: float,
                 directory: Path) -> list[Block]:
    """The section for a scale profile's report (nothing for other profiles); `metrics`: (summary key, label)
    pairs, each headline comparison read on each (all losses in nats per token; the table adds bits per byte)."""
    if not is_scale(results):
        return []
    scale = results.meta["grid"]["settings"]["scale"]
    sizes, budgets = scale["sizes"], scale["budgets"]
    blocks = [Block("h2", "Effect versus scale"),
              Block("p", f"Each headline difference (mean of b − a in {' and '.join(l for _, l in metrics)}, paired "
                         "by seed, 95 % t CI) at "
                         "every model size and training budget. Trend: the within-seed slope of the difference on "
                         "log2(parameters) at each budget, and on log2(tokens) at each size, with its 95 % CI. "
                         f"Words: flips (significant with opposite signs at the two ends); grows / shrinks (slope CI "
                         f"excludes 0; magnitude rises / falls); holds (slope within ±{margin:g} per doubling by "
                         "TOST); else inconclusive. A comparison named by one variant is that variant's own "
                         "effect, measured inside each cell against its reference. Bits per byte (on each "
                         "condition's validation text) put char and BPE vocabularies on one scale. These CIs are per comparison, not Holm-adjusted: read them as "
                         "the shape of the effect, and the Comparisons table for tests.")]
    rows = [["comparison", "metric", "along", "at", "points", "slope per doubling (95 % CI)", "trend"]]
    effect_rows = [["comparison", "metric", "size", "budget", "parameters", "tokens", "difference (95 % CI)", "in bits/byte",
                    "seeds"]]
    largest = (0.0, 0.0)
    figure_pairs = []
    for metric, label in metrics:
        for a, b in pairs:
            pts = points(results, a, b, metric, sizes, budgets)
            if not pts:
                continue
            figure_pairs.append((a, b, pts, label))
            for p in pts:
                low, high = p.ci()
                factor = bits_per_byte_factor(results, f"{p.size}-{p.budget}")
                effect_rows.append([pair_name(a, b), label, p.size, p.budget, f"{p.parameters:,.0f}",
                                    f"{p.tokens:,.0f}", f"{p.mean:+.4f} ({low:+.4f} to {high:+.4f})",
                                    f"{p.mean * factor:+.4f}" if factor else "—", str(len(p.diffs))])
                largest = (max(largest[0], p.parameters), max(largest[1], p.tokens))
            for along, key, fixed in (("parameters", "budget", budgets), ("tokens", "size", sizes)):
                for value in fixed:
                    line = sorted((p for p in pts if getattr(p, key) == value),
                                  key=lambda p: p.parameters if along == "parameters" else p.tokens)
                    if len(line) < 2:
                        continue
                    t = fit(line, along)
                    rows.append([pair_name(a, b), label, along, f"{key} {value}", str(len(line)),
                                 f"{t.slope:+.4f} ({t.ci_low:+.4f} to {t.ci_high:+.4f})", classify(line, t, margin)])
    blocks += [Block("table", items=effect_rows), Block("table", items=rows),
               Block("p", f"Largest scale measured: {largest[0]:,.0f} parameters, {largest[1]:,.0f} training tokens. "
                          "What holds here may not hold beyond it.")]
    if figure_pairs:
        plot_scale(figure_pairs, sizes, budgets, directory / "scale.png")
        blocks.append(Block("img", "scale.png", items=["effect against parameters and tokens"]))
    return blocks


def plot_scale(pairs, sizes: list[str], budgets: list[str], path: Path) -> None:
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3.2 * len(pairs)), dpi=110, squeeze=False)
    for row, (a, b, pts, metric_label) in enumerate(pairs):
        for col, (along, key, fixed) in enumerate((("parameters", "budget", budgets), ("tokens", "size", sizes))):
            ax = axes[row][col]
            for value in fixed:
                line = sorted((p for p in pts if getattr(p, key) == value), key=lambda p: getattr(p, along))
                if not line:
                    continue
                xs = [getattr(p, along) for p in line]
                means = [p.mean for p in line]
                cis = [p.ci() for p in line]
                err = [[m - lo for m, (lo, _) in zip(means, cis)], [hi - m for m, (_, hi) in zip(means, cis)]]
                ax.errorbar(xs, means, yerr=np.nan_to_num(err), marker="o", capsize=3, label=f"{key} {value}")
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(along)
            ax.set_ylabel(f"Δ {metric_label}")
            ax.set_title(f"{pair_name(a, b)} ({metric_label}) against {along}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    write_figure(fig, path)
