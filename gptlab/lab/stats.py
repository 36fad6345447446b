"""The statistics behind every lesson's verdicts, on `scipy.stats`.

Per arm: n, mean, standard deviation and a t-based 95 % confidence interval. Between two arms: the difference of
means with Welch's CI and p-value (or a paired t-test when seeds pair the runs), a bootstrap CI of the
difference, Hedges' g, and Holm's correction when a lesson makes several comparisons. `verdict` says it in words
and says "no significant difference" when that is the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Standardised difference (mean b − mean a) / pooled SD, with the small-sample correction."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return math.nan
    d = (b.mean() - a.mean()) / pooled
    return float(d * (1 - 3 / (4 * (na + nb) - 9)))


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, paired: bool = False,
                      n_resamples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of mean(b) − mean(a) (BCa is unstable at the few seeds lessons have)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    if paired:
        d = b - a
        means = d[rng.integers(0, len(d), (n_resamples, len(d)))].mean(1)
    else:
        means = (b[rng.integers(0, len(b), (n_resamples, len(b)))].mean(1)
                 - a[rng.integers(0, len(a), (n_resamples, len(a)))].mean(1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    n_a: int
    n_b: int
    diff: float  # mean(b) − mean(a)
    ci_low: float
    ci_high: float
    p: float
    test: str  # "welch" or "paired"
    hedges_g: float
    boot_low: float
    boot_high: float
    p_adjusted: float  # after Holm's correction across the lesson's comparisons (= p when alone)

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.p_adjusted < alpha)


def compare(a: Sequence[float], b: Sequence[float], name_a: str = "a", name_b: str = "b", paired: bool = False,
            confidence: float = 0.95) -> Comparison:
    """Compare arm b with arm a; `paired=True` when a[i] and b[i] share seed i."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired and len(a) != len(b):
        raise ValueError(f"a paired comparison needs as many runs in each arm ({len(a)} vs {len(b)})")
    diff = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        p, low, high = math.nan, math.nan, math.nan
    elif paired:
        res = stats.ttest_rel(b, a)
        ci = res.confidence_interval(confidence)
        p, low, high = float(res.pvalue), float(ci.low), float(ci.high)
    else:
        res = stats.ttest_ind(b, a, equal_var=False)
        ci = res.confidence_interval(confidence)
        p, low, high = float(res.pvalue), float(ci.low), float(ci.high)
    if math.isnan(p) and len(a) >= 2 and len(b) >= 2:  # zero variance in both arms
        p = 1.0 if diff == 0 else 0.0
        low = high = diff
    boot = bootstrap_diff_ci(a, b, confidence, paired)
    return Comparison(name_a, name_b, len(a), len(b), diff, low, high, p, "paired" if paired else "welch",
                      hedges_g(a, b), boot[0], boot[1], p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; monotone; capped at 1). NaN stays NaN."""
    p = np.asarray(p_values, float)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), np.nan)
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


def adjust(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The same comparisons with `p_adjusted` set by Holm's correction across all of them."""
    adjusted = holm([c.p for c in comparisons])
    return [replace(c, p_adjusted=q) for c, q in zip(comparisons, adjusted)]


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


def verdict(c: Comparison, metric: str = "val loss", lower_is_better: bool = True, alpha: float = 0.05,
            digits: int = 3) -> str:
    """One sentence, e.g. "untied lowers val loss by 0.031 (95 % CI 0.012 to 0.050, p = 0.004, n = 5 seeds per arm)"."""
    seeds = f"n = {c.n_a} seeds per arm" if c.n_a == c.n_b else f"n = {c.n_a} and {c.n_b} seeds"
    correction = "" if c.p_adjusted == c.p else f", Holm-adjusted {_fmt_p(c.p_adjusted)}"
    if c.n_a < 2 or c.n_b < 2:
        return f"{c.b} vs {c.a}: too few runs to test ({seeds})"
    if not c.significant(alpha):
        return (f"no significant difference in {metric} between {c.b} and {c.a} (difference {c.diff:+.{digits}f}, "
                f"95 % CI {c.ci_low:+.{digits}f} to {c.ci_high:+.{digits}f}, {_fmt_p(c.p)}{correction}, {seeds})")
    lowers = c.diff < 0
    verb = "lowers" if lowers else "raises"
    better = lowers == lower_is_better
    low, high = sorted((abs(c.ci_low), abs(c.ci_high)))
    return (f"{c.b} {verb} {metric} by {abs(c.diff):.{digits}f} vs {c.a} ({'better' if better else 'worse'}; "
            f"95 % CI {low:.{digits}f} to {high:.{digits}f}, {_fmt_p(c.p)}{correction}, {seeds})")


@dataclass(frozen=True)
class Trend:
    slope: float
    ci_low: float
    ci_high: float
    p: float
    n: int


def trend(x: Sequence[float], y: Sequence[float], groups: Sequence | None = None, confidence: float = 0.95) -> Trend:
    """Least-squares slope of y on x with its t-based CI and the p-value of "no trend".

    With `groups` (e.g. the seed of each run) each group gets its own intercept, so seed-to-seed offsets do
    not blur the trend: the within-group slope, with the degrees of freedom that model leaves (n − 1 − groups).
    Without, it is scipy's linregress."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    nan = Trend(math.nan, math.nan, math.nan, math.nan, len(x))
    if groups is None:
        if len(x) < 3 or np.ptp(x) == 0:
            return nan
        res = stats.linregress(x, y)
        slope, se, df = float(res.slope), float(res.stderr), len(x) - 2
    else:
        g = np.asarray(groups)
        xc, yc = x.copy(), y.copy()
        for key in np.unique(g):
            xc[g == key] -= x[g == key].mean()
            yc[g == key] -= y[g == key].mean()
        sxx = float((xc ** 2).sum())
        df = len(x) - 1 - len(np.unique(g))
        if df < 1 or sxx == 0:
            return nan
        slope = float((xc * yc).sum() / sxx)
        se = math.sqrt(float(((yc - slope * xc) ** 2).sum()) / df / sxx)
    if se == 0:
        return Trend(slope, slope, slope, 0.0 if slope != 0 else 1.0, len(x))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = float(2 * stats.t.sf(abs(slope / se), df))
    return Trend(slope, slope - half, slope + half, p, len(x))
