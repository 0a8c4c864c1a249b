"""Statistics over runs: intervals of a mean that say their kind and n, rank trends, intervals that overlap.

Over a few seeds a percentile bootstrap undercovers (simulated in the tests: a normal sample's mean is
covered 75% of the time at n = 3); Student's t is exact for normal samples at any n, so an interval of
a mean over runs is a t interval from 3 runs on, the range of the two at 2, and the value itself at 1,
and every interval carries its n and its kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """An interval of a mean over n runs; `kind` says what it is ("t 95%", "range of 2", "one run")."""
    mean: float
    lo: float
    hi: float
    n: int
    kind: str

    def __str__(self):
        if self.n == 1:
            return f"{self.mean:.3g} (one run)"
        return f"{self.mean:.3g} [{self.lo:.3g}, {self.hi:.3g}] ({self.kind}, n = {self.n})"


def mean_interval(values, level: float = 0.95) -> Interval:
    """The mean of `values` (NaN left out) with Student's t interval at `level` from 3 values on, the
    range of 2 values (not a confidence interval: said so by its kind), or the value itself."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "no runs")
    mean = float(v.mean())
    if n == 1:
        return Interval(mean, mean, mean, 1, "one run")
    if n == 2:
        return Interval(mean, float(v.min()), float(v.max()), 2, "range of 2")
    from scipy.stats import t
    half = float(t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, f"t {level:.0%}")


def mean_band(stack: np.ndarray, level: float = 0.95):
    """Per column of `stack` (runs x points, NaN where a run has no value), the lo and hi of
    mean_interval over the runs that have a value there."""
    cols = [mean_interval(c, level) for c in np.asarray(stack, dtype=float).T]
    return np.array([c.lo for c in cols]), np.array([c.hi for c in cols])


def rank_trend(x, y, exact_up_to: int = 9) -> tuple[float, float]:
    """Spearman's rank correlation of y with x over every (run) pair, and its one-sided p-value
    against no increasing trend: for up to `exact_up_to` pairs exact, over every permutation of y
    against x (ties keep their average ranks; 9 pairs: 362,880 permutations), where the asymptotic t
    approximation is poor; beyond, scipy's t approximation."""
    from scipy.stats import rankdata, spearmanr
    r = spearmanr(x, y, alternative="greater")
    n = len(np.asarray(x))
    if n > exact_up_to or n < 2:
        return float(r.statistic), float(r.pvalue)
    import itertools
    rx, ry = rankdata(x), rankdata(y)
    centred = rx - rx.mean()
    # rho is an increasing function of sum(ry[perm] * centred): its ranks' denominators do not move
    stat = np.array(list(itertools.permutations(ry)), dtype=np.float64) @ centred
    observed = float(ry @ centred)
    return float(r.statistic), float(np.mean(stat >= observed - 1e-9))


def overlapping_neighbours(intervals: dict) -> list[tuple]:
    """The pairs of neighbouring keys (in sorted order) whose (lo, hi) intervals overlap."""
    keys = sorted(intervals)
    return [(a, b) for a, b in zip(keys, keys[1:])
            if intervals[a][0] <= intervals[b][1] and intervals[b][0] <= intervals[a][1]]
