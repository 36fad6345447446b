"""A sequential paired comparison: add seeds until the difference is shown, equivalence is shown, or the budget ends.

Looking after every new seed pair and stopping at the first p < 0.05 would find a "difference" far more often
than 5 % of the time when there is none. Here every look uses one critical value `c` for the paired t statistic
(a Pocock-type boundary), chosen so that the chance of crossing it at *any* look from `n_min` to `n_max` seeds is
`alpha` when the true difference is zero. Under normally distributed seed differences the t statistic's
distribution does not depend on the unknown spread, so `c` is found once per design by simulating the null
(`boundary`). At each look:

- |t| > c: the arms differ (the interval mean ± c·SE excludes 0);
- the interval mean ± c·SE lies inside ±margin: the arms are equivalent within the margin (both one-sided tests
  pass at the same boundary, so a false equivalence claim is no likelier than a false difference);
- otherwise add a seed, until `n_max`: then inconclusive, with the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def boundary(n_min: int, n_max: int, alpha: float = 0.05, sims: int = 200_000, seed: int = 0) -> float:
    """The |t| every look must exceed so that P(any look crosses | no difference) = alpha."""
    if not 2 <= n_min <= n_max:
        raise ValueError(f"need 2 <= n_min <= n_max, got {n_min}, {n_max}")
    rng = np.random.default_rng(seed)
    largest = np.zeros(sims)
    total, squares = np.zeros(sims), np.zeros(sims)
    for n in range(1, n_max + 1):
        x = rng.standard_normal(sims)
        total += x
        squares += x * x
        if n >= n_min:
            mean = total / n
            sd = np.sqrt(np.maximum(squares - n * mean * mean, 1e-300) / (n - 1))
            largest = np.maximum(largest, np.abs(mean / (sd / math.sqrt(n))))
    return float(np.quantile(largest, 1 - alpha))


@dataclass(frozen=True)
class Look:
    n: int
    mean: float  # mean of the paired differences (B − A)
    half_width: float  # c · SE: the interval that every look's decision reads
    t: float
    status: str  # "different" | "equivalent" | "continue" | "inconclusive"

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def look(differences: list[float], c: float, margin: float, last: bool = False) -> Look:
    """The decision after these paired differences; `last`: no more seeds may be added."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n < 2:
        raise ValueError("a look needs at least two paired differences")
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    t = mean / se if se > 0 else (math.inf if mean else 0.0)
    half = c * se
    if abs(t) > c:
        status = "different"
    elif margin > 0 and -margin < mean - half and mean + half < margin:
        status = "equivalent"
    else:
        status = "inconclusive" if last else "continue"
    return Look(n, mean, half, t, status)


def run_sequence(draw, n_min: int, n_max: int, margin: float, alpha: float = 0.05) -> list[Look]:
    """Every look of one sequential comparison; `draw(k)` returns the k-th paired difference (k from 0)."""
    c = boundary(n_min, n_max, alpha)
    differences = [draw(k) for k in range(n_min)]
    looks = []
    while True:
        looks.append(look(differences, c, margin, last=len(differences) >= n_max))
        if looks[-1].status != "continue":
            return looks
        differences.append(draw(len(differences)))
