"""Calibrating a lesson's test pipeline on real training runs (`gptlab lab run LESSON --profile calibrate`).

The calibrate profile trains the lesson's baseline arm, under its first condition with the full profile's
settings (`calibrate-quick`: the quick profile's), with `CALIBRATION_SEEDS` seeds. Every run is the same
recipe, so any difference between two groups of them is seed noise. The report splits the seeds at random into
two arms of the size the lesson uses ("A/A" splits) many times and counts how often the lesson's own tests call
a difference significant: a calibrated pipeline does so in about 5 % of splits. It also checks what the t-tests
assume: that seed noise is close to normal (Shapiro–Wilk, and a QQ plot to look at).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats as sps

from gptlab.lab import stats
from gptlab.lab.grid import Grid

CALIBRATION_SEEDS = 20
SPLITS = 2000
SOURCES = {"calibrate": "full", "calibrate-quick": "quick"}


def calibration_grid(full: Grid, baseline: str) -> Grid:
    """The baseline arm under the first condition, with CALIBRATION_SEEDS seeds and the same settings."""
    variant = next(v for v in full.variants if v.name == baseline)
    condition = next(c for c in full.conditions if full.applies(c, variant))
    return Grid((condition,), (variant,), tuple(range(CALIBRATION_SEEDS)), full.base)


def aa_rates(values: dict[int, float], n_per_arm: int, margin: float, splits: int = SPLITS, seed: int = 0,
             alpha: float = 0.05) -> dict[str, float]:
    """Share of random A/A splits (two disjoint groups of `n_per_arm` runs of the same recipe) in which Welch's
    test, and a paired test on random pseudo-pairs, reject at `alpha`; and how often TOST shows equivalence
    within `margin` (the chance that a true null effect is called "equivalent" at these seeds)."""
    x = np.array([values[s] for s in sorted(values)], float)
    n = min(n_per_arm, len(x) // 2)
    rng = np.random.default_rng(seed)
    welch = paired = equivalent = 0
    for _ in range(splits):
        idx = rng.permutation(len(x))
        a, b = x[idx[:n]], x[idx[n: 2 * n]]
        welch += stats.compare(a, b).p < alpha
        c = stats.compare(a, b, paired=True, margin=margin)
        paired += c.p < alpha
        equivalent += c.p_equivalent < alpha
    return {"n_per_arm": n, "splits": splits, "welch": welch / splits, "paired": paired / splits,
            "equivalent": equivalent / splits}


def rate_ci(rate: float, trials: int) -> tuple[float, float]:
    """Wilson interval of a rate. The splits reuse the same runs, so this is the Monte-Carlo error only."""
    z = 1.959963984540054
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def plot_qq(values: list[float], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import save_figure

    fig, ax = plt.subplots(figsize=(5, 4.2), dpi=110)
    (theoretical, ordered), (slope, intercept, _) = sps.probplot(values, dist="norm")
    ax.scatter(theoretical, ordered, s=14, label="seeds")
    ax.plot(theoretical, slope * np.asarray(theoretical) + intercept, color="C1", lw=1.2, label="normal fit")
    ax.set_xlabel("normal quantile")
    ax.set_ylabel("final value")
    save_figure(fig, ax, path, title)


def calibration_blocks(results, lesson, directory: Path) -> list:
    """The report of a calibrate profile: the seed noise, its normality, and the A/A false-positive rates."""
    from gptlab.document import Block

    condition, variant = results.conditions[0], results.variants[0]
    values = results.by_seed(condition, variant, lesson.metric)
    if len(values) < 4:
        return [Block("p", f"Calibration needs at least 4 finished seeds; {len(values)} so far.")]
    source = SOURCES.get(results.meta.get("profile"), "full")
    n_arm = len(lesson.grid(source).seeds)
    s = stats.summarize(list(values.values()))
    shapiro = sps.shapiro(list(values.values()))
    rates = aa_rates(values, n_arm, lesson.equivalence_margin)
    plot_qq(list(values.values()), directory / "qq.png", f"{lesson.title}: {variant} seeds against a normal")
    rows = [["test", "A/A false-positive rate (α = 0.05)", "Monte-Carlo 95 % interval"]]
    for key, label in (("welch", "Welch (unpaired arms)"), ("paired", "paired on random pseudo-pairs")):
        low, high = rate_ci(rates[key], rates["splits"])
        rows.append([label, f"{rates[key]:.1%}", f"{low:.1%} to {high:.1%}"])
    normal = "consistent with normal noise" if shapiro.pvalue >= 0.05 else "not normal: treat t-test p-values with care"
    calibrated = all(rate <= 0.075 for rate in (rates["welch"], rates["paired"]))
    return [
        Block("h2", "Calibration of the test pipeline"),
        Block("p", f"{len(values)} runs of the same recipe ({variant} under {condition}, the {source} profile's "
                   f"settings); {lesson.metric_label} {s.mean:.4f} ± {s.std:.4f} (SD over seeds). "
                   f"{rates['splits']} random A/A splits into two arms of {rates['n_per_arm']} runs (the {source} "
                   "profile's seeds per arm): a calibrated test calls about 5 % of them significant."),
        Block("table", items=rows),
        Block("p", f"Verdict: the pipeline is {'calibrated' if calibrated else 'NOT calibrated'} at this lesson's "
                   f"settings ({'both rates' if calibrated else 'a rate'} {'within' if calibrated else 'above'} "
                   f"7.5 %). Seed noise: Shapiro–Wilk W = {shapiro.statistic:.3f}, p = {shapiro.pvalue:.3f} "
                   f"({normal}). With no true difference, TOST shows equivalence within ±{lesson.equivalence_margin:g} "
                   f"in {rates['equivalent']:.0%} of the splits: the chance of a correct \"equivalent\" at these seeds."),
        Block("img", "qq.png", items=["seed noise against a normal distribution (QQ plot)"]),
    ]
