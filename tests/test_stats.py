"""Statistics over runs against known answers: the normal-theory interval, hand-made cases and an
independent Spearman test."""

import numpy as np
import pytest
from scipy import stats

from rotelab.measures.stats import bootstrap_band, bootstrap_mean_ci, overlapping_neighbours, rank_trend


def test_bootstrap_interval_of_a_large_normal_sample_is_the_normal_one():
    v = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    lo, hi = bootstrap_mean_ci(v)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert lo == pytest.approx(v.mean() - half, abs=0.05 * half)
    assert hi == pytest.approx(v.mean() + half, abs=0.05 * half)


def test_bootstrap_interval_of_constant_or_single_values_is_the_value():
    assert bootstrap_mean_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert bootstrap_mean_ci([2.5]) == (2.5, 2.5)
    assert all(np.isnan(bootstrap_mean_ci([])))


def test_band_columns_are_the_per_column_intervals_and_skip_missing_runs():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(5, 7))
    lo, hi = bootstrap_band(stack, n_boot=2000)
    for j in range(7):   # the same draws as bootstrap_mean_ci with the same seed and count
        assert (lo[j], hi[j]) == pytest.approx(bootstrap_mean_ci(stack[:, j], n_boot=2000))
    stack[1:, 3] = np.nan   # only run 0 reached column 3
    lo, hi = bootstrap_band(stack, n_boot=2000)
    assert lo[3] == hi[3] == stack[0, 3]
    stack[:, 4] = np.nan
    lo, hi = bootstrap_band(stack, n_boot=2000)
    assert np.isnan(lo[4]) and np.isnan(hi[4])


def test_rank_trend_is_spearman_with_a_one_sided_t_test():
    rng = np.random.default_rng(3)
    x = np.repeat([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 4)
    y = 70 + 80 * np.minimum(x, 0.5) + rng.normal(0, 10, x.size)
    rho, p = rank_trend(x, y)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    r = np.corrcoef(rx, ry)[0, 1]
    t = r * np.sqrt((x.size - 2) / (1 - r * r))
    assert rho == pytest.approx(r)
    assert p == pytest.approx(stats.t.sf(t, x.size - 2))
    assert rank_trend(x, -y)[1] > 0.99   # a falling trend is no evidence of a rising one


def test_overlapping_neighbours():
    iv = {0.0: (1, 2), 0.2: (1.5, 3), 0.4: (3.5, 4), 0.6: (3.9, 5)}
    assert overlapping_neighbours(iv) == [(0.0, 0.2), (0.4, 0.6)]
