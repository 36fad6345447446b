"""The statistics behind every lesson's verdicts, on `scipy.stats`.

Per arm: n, mean, standard deviation and a t-based 95 % confidence interval. Between two arms: the difference of
means with Welch's CI and p-value (or a paired t-test when seeds pair the runs), a bootstrap CI of the
difference (from 10 runs per arm; fewer undercover), Hedges' g, Holm's correction with CIs at the levels consistent
with it, two one-sided tests (TOST) of equivalence within a margin the lesson states, and the minimum detectable
effect at 80 % power. `verdict` says it in words: a difference, equivalence, or "inconclusive" — never "no
difference" from a large p-value alone.
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


BOOTSTRAP_MIN_N = 10  # below this the percentile bootstrap covers ~85 % instead of 95 %: not reported
POWER = 0.8


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    n_a: int
    n_b: int
    diff: float  # mean(b) − mean(a)
    ci_low: float  # t-based CI of the difference at `ci_level` (after `adjust`: consistent with Holm's p)
    ci_high: float
    p: float
    test: str  # "welch" or "paired"
    hedges_g: float
    boot_low: float  # percentile bootstrap CI; NaN below BOOTSTRAP_MIN_N runs per arm (it would undercover)
    boot_high: float
    p_adjusted: float  # after Holm's correction across the lesson's comparisons (= p when alone)
    se: float = math.nan  # standard error of the difference and its degrees of freedom (t distribution)
    df: float = math.nan
    ci_level: float = 0.95
    margin: float = math.nan  # equivalence margin stated by the lesson (same units as the metric)
    p_equivalent: float = math.nan  # TOST: max of the two one-sided p-values against ±margin
    p_equivalent_adjusted: float = math.nan  # Holm-adjusted across the lesson's equivalence tests
    # smallest |difference| detectable with 80 % power at this SD and n: at α = 0.05 alone, at α/m in a family of m
    mde: float = math.nan
    dropped: int = 0  # runs left out because their seed was missing from the other arm

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.p_adjusted < alpha)

    def equivalent(self, alpha: float = 0.05) -> bool:
        return bool(self.p_equivalent_adjusted < alpha)

    def ci_at(self, level: float) -> tuple[float, float]:
        if not (self.se > 0 and self.df > 0):
            return (self.diff, self.diff) if self.se == 0 else (math.nan, math.nan)
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return self.diff - half, self.diff + half


def _se_df(a: np.ndarray, b: np.ndarray, paired: bool) -> tuple[float, float]:
    if paired:
        d = b - a
        return float(d.std(ddof=1) / math.sqrt(len(d))), float(len(d) - 1)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = va + vb
    if se2 == 0:
        return 0.0, float(len(a) + len(b) - 2)
    df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch–Satterthwaite
    return float(math.sqrt(se2)), float(df)


def tost(diff: float, se: float, df: float, margin: float) -> float:
    """Two one-sided t-tests of |true difference| < margin: the larger one-sided p (small = equivalent)."""
    if not (margin > 0) or math.isnan(diff) or math.isnan(se) or not df > 0:
        return math.nan
    if se == 0:
        return 0.0 if abs(diff) < margin else 1.0
    p_low = stats.t.sf((diff + margin) / se, df)  # H0: diff <= -margin
    p_high = stats.t.cdf((diff - margin) / se, df)  # H0: diff >= +margin
    return float(max(p_low, p_high))


def minimum_detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = POWER) -> float:
    """The |difference| a two-sided t-test at `alpha` detects with probability `power`, given its SE."""
    if not (se >= 0 and df > 0):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def compare(a: Sequence[float], b: Sequence[float], name_a: str = "a", name_b: str = "b", paired: bool = False,
            confidence: float = 0.95, margin: float = math.nan) -> Comparison:
    """Compare arm b with arm a; `paired=True` when a[i] and b[i] share seed i (see `compare_by_seed`).
    `margin`: the lesson's equivalence margin, for the TOST "no effect" test."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired and len(a) != len(b):
        raise ValueError(f"a paired comparison needs as many runs in each arm ({len(a)} vs {len(b)})")
    diff = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        p, se, df = math.nan, math.nan, math.nan
    else:
        res = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
        p = float(res.pvalue)
        se, df = _se_df(a, b, paired)
    if math.isnan(p) and len(a) >= 2 and len(b) >= 2:  # zero variance in both arms
        p = 1.0 if diff == 0 else 0.0
    small = min(len(a), len(b)) < BOOTSTRAP_MIN_N
    boot = (math.nan, math.nan) if small else bootstrap_diff_ci(a, b, confidence, paired)
    c = Comparison(name_a, name_b, len(a), len(b), diff, math.nan, math.nan, p, "paired" if paired else "welch",
                   hedges_g(a, b), boot[0], boot[1], p, se=se, df=df, ci_level=confidence, margin=margin,
                   mde=minimum_detectable_effect(se, df, 1 - confidence))
    low, high = c.ci_at(confidence)
    p_eq = tost(diff, se, df, margin)
    return replace(c, ci_low=low, ci_high=high, p_equivalent=p_eq, p_equivalent_adjusted=p_eq)


def compare_by_seed(a: dict[int, float], b: dict[int, float], name_a: str = "a", name_b: str = "b",
                    margin: float = math.nan) -> Comparison:
    """Paired by seed id (same seed = same batches): only seeds both arms ran are used, matched by id, never by
    list position; with fewer than 2 shared seeds the arms are compared unpaired (Welch)."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return compare(list(a.values()), list(b.values()), name_a, name_b, paired=False, margin=margin)
    c = compare([a[s] for s in shared], [b[s] for s in shared], name_a, name_b, paired=True, margin=margin)
    return replace(c, dropped=len(a) + len(b) - 2 * len(shared))


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


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Confidence levels that make each CI agree with Holm's step-down decision at `alpha`.

    With p sorted ascending and k the first rank Holm does not reject, a rejected comparison at rank j gets a
    CI at level 1 − α/(m − j) (it excludes 0, since p_j ≤ α/(m − j)), and every comparison not rejected gets
    1 − α/(m − k) (it includes 0, since p ≥ p_k > α/(m − k)). So a CI excludes zero exactly when the adjusted
    p-value beside it is below α."""
    p = np.asarray(p_values, float)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    levels = [1 - alpha] * len(p)
    k = next((j for j, idx in enumerate(order) if p[idx] > alpha / (m - j)), m)
    for j, idx in enumerate(order):
        levels[idx] = 1 - alpha / (m - j) if j < k else 1 - alpha / (m - k)
    return levels


def adjust(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """One Holm family: adjusted p-values, CIs at the levels consistent with them, and Holm-adjusted TOST p."""
    adjusted = holm([c.p for c in comparisons])
    levels = holm_levels([c.p for c in comparisons], alpha)
    equivalent = holm([c.p_equivalent for c in comparisons])
    m = max(1, sum(not math.isnan(c.p) for c in comparisons))
    out = []
    for c, q, level, q_eq in zip(comparisons, adjusted, levels, equivalent):
        low, high = c.ci_at(level)
        # detectable after the correction: at α/m, Holm's strictest step (an upper bound of what Holm needs)
        out.append(replace(c, p_adjusted=q, ci_low=low, ci_high=high, ci_level=level, p_equivalent_adjusted=q_eq,
                           mde=minimum_detectable_effect(c.se, c.df, alpha / m)))
    return out


def outcome(c: Comparison, alpha: float = 0.05) -> str:
    """"lower" / "higher" (b against a, significant after Holm), "equivalent" (TOST within the margin) or
    "inconclusive" (neither: more seeds, or a wider margin, would be needed to say)."""
    if c.significant(alpha):
        return "lower" if c.diff < 0 else "higher"
    return "equivalent" if c.equivalent(alpha) else "inconclusive"


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


def _level(c: Comparison) -> str:
    return f"{100 * c.ci_level:.{0 if round(100 * c.ci_level, 6).is_integer() else 1}f} % CI"


def verdict(c: Comparison, metric: str = "val loss", lower_is_better: bool = True, alpha: float = 0.05,
            digits: int = 3) -> str:
    """One sentence: a significant difference with its (Holm-consistent) CI; or "equivalent within ±margin"
    when the TOST shows it; otherwise "inconclusive", with the minimum detectable effect at the seeds used.
    A p-value above α alone never becomes "no difference"."""
    seeds = f"n = {c.n_a} seeds per arm" if c.n_a == c.n_b else f"n = {c.n_a} and {c.n_b} seeds"
    correction = "" if c.p_adjusted == c.p else f", Holm-adjusted {_fmt_p(c.p_adjusted)}"
    if c.n_a < 2 or c.n_b < 2:
        return f"{c.b} vs {c.a}: too few runs to test ({seeds})"
    ci = f"{_level(c)} {c.ci_low:+.{digits}f} to {c.ci_high:+.{digits}f}"
    if c.significant(alpha):
        lowers = c.diff < 0
        verb = "lowers" if lowers else "raises"
        better = lowers == lower_is_better
        small = (f"; smaller than the ±{c.margin:g} margin that matters (TOST {_fmt_p(c.p_equivalent_adjusted)})"
                 if c.equivalent(alpha) else "")
        return (f"{c.b} {verb} {metric} by {abs(c.diff):.{digits}f} vs {c.a} ({'better' if better else 'worse'}; "
                f"difference {ci}, {_fmt_p(c.p)}{correction}, {seeds}{small})")
    if c.equivalent(alpha):
        eq = f"TOST {_fmt_p(c.p_equivalent_adjusted)}" + (" Holm-adjusted" if c.p_equivalent_adjusted != c.p_equivalent
                                                           else "")
        return (f"{c.b} and {c.a} are equivalent in {metric} within ±{c.margin:g} (difference {c.diff:+.{digits}f}, "
                f"{eq}, {seeds})")
    margin = f"; equivalence within ±{c.margin:g} not shown" if c.margin > 0 else ""
    return (f"inconclusive: {c.b} vs {c.a} differ by {c.diff:+.{digits}f} in {metric} ({ci}, {_fmt_p(c.p)}{correction}, "
            f"{seeds}){margin}; the smallest difference these seeds detect with 80 % power"
            f"{' after the correction' if c.p_adjusted != c.p else ''} is ±{c.mde:.{digits}f}")


@dataclass(frozen=True)
class Trend:
    slope: float
    ci_low: float
    ci_high: float
    p: float
    n: int
    se: float = math.nan  # of the slope, with the t distribution's degrees of freedom (for TOST on the slope)
    df: float = math.nan


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
        return Trend(slope, slope, slope, 0.0 if slope != 0 else 1.0, len(x), 0.0, float(df))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = float(2 * stats.t.sf(abs(slope / se), df))
    return Trend(slope, slope - half, slope + half, p, len(x), float(se), float(df))
