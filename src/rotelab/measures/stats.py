"""Statistics over runs: bootstrap intervals of a mean, rank trends, intervals that overlap."""

from __future__ import annotations

import warnings

import numpy as np


def bootstrap_mean_ci(values, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement, n_boot times,
    from a fixed seed so a report is reproducible). One value gives (v, v)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_band(stack: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """Per column of `stack` (runs x points, NaN where a run has no value), the percentile bootstrap
    interval of the mean over the runs that have a value there: resampled runs, the same draws for
    every column. Returns (lo, hi); a column with one run gives its value."""
    stack = np.asarray(stack, dtype=float)
    idx = np.random.default_rng(seed).integers(0, stack.shape[0], size=(n_boot, stack.shape[0]))
    draws = stack[idx]                                       # n_boot x runs x points
    have = ~np.isnan(draws)
    counts = have.sum(axis=1)
    sums = np.where(have, draws, 0.0).sum(axis=1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)   # a draw of only missing runs: none
    a = (1 - level) / 2
    with warnings.catch_warnings():   # a column without any run is NaN, as it should be
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(means, a, axis=0), np.nanquantile(means, 1 - a, axis=0)


def rank_trend(x, y) -> tuple[float, float]:
    """Spearman's rank correlation of y with x over every (run) pair, and its one-sided p-value
    against no increasing trend (scipy's asymptotic t approximation)."""
    from scipy.stats import spearmanr
    r = spearmanr(x, y, alternative="greater")
    return float(r.statistic), float(r.pvalue)


def overlapping_neighbours(intervals: dict) -> list[tuple]:
    """The pairs of neighbouring keys (in sorted order) whose (lo, hi) intervals overlap."""
    keys = sorted(intervals)
    return [(a, b) for a, b in zip(keys, keys[1:])
            if intervals[a][0] <= intervals[b][1] and intervals[b][0] <= intervals[a][1]]
