"""Information estimators against cases with known answers."""

import math

import numpy as np
import pytest

from rotelab.measures.information import (binning_estimate, binning_mi, binning_mi_reference, discrete_mi, entropy_of_ids,
                                          kde_entropy_bounds, kde_mi, ksg_mi, mixed_ksg_mi, row_ids)

EDGES = np.linspace(-1, 1, 30)


def test_entropy_and_mi_of_hand_computed_distributions():
    assert entropy_of_ids([0, 1, 2, 3]) == pytest.approx(2.0)
    assert entropy_of_ids([0, 0, 0, 1]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    # joint: (0,0) (0,0) (1,1) (1,0): H(A)=1, H(B)=H(3/4,1/4), H(A,B)=1.5
    a, b = [0, 0, 1, 1], [0, 0, 1, 0]
    hb = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert discrete_mi(a, b) == pytest.approx(1 + hb - 1.5)


def test_row_ids_groups_equal_rows():
    ids = row_ids(np.array([[1, 2], [3, 4], [1, 2], [1, 3]]))
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3


def test_invertible_layer_keeps_all_input_information():
    rng = np.random.default_rng(0)
    n = 512
    x = rng.integers(0, 2, (n, 12))
    x_ids = row_ids(x)
    t = x * 0.5 - 0.25   # distinct inputs fall in distinct bins
    ixt, ity = binning_mi(t, x_ids, rng.integers(0, 2, n), edges=EDGES)
    assert ixt == pytest.approx(entropy_of_ids(x_ids))


def test_layer_that_ignores_its_input_has_no_information():
    rng = np.random.default_rng(0)
    x_ids = np.arange(100)
    ixt, ity = binning_mi(np.full((100, 5), 0.3), x_ids, rng.integers(0, 3, 100), edges=EDGES)
    assert ixt == 0.0 and ity == 0.0


def test_label_layer_carries_all_label_information():
    y = np.repeat([0, 1, 2, 3], 25)
    onehot = np.eye(4)[y] * 0.9
    ixt, ity = binning_mi(onehot, np.arange(100), y, edges=EDGES)
    assert ity == pytest.approx(2.0) and ixt == pytest.approx(2.0)


@pytest.mark.parametrize("kw", [dict(edges=EDGES), dict(bin_size=0.07)])
def test_binning_equals_the_direct_implementation(kw):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, (800, 6))          # repeated inputs: H(T|X) matters only if T varies per x
    t = np.tanh(rng.standard_normal((800, 4)) + x[:, :4])
    y = rng.integers(0, 2, 800)
    fast = binning_mi(t, row_ids(x), y, **kw)
    slow = binning_mi_reference(t, row_ids(x), y, **kw)
    assert fast == pytest.approx(slow, abs=1e-9)


def test_bounds_hold_on_random_activations():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(10, 300))
        y = rng.integers(0, 3, n)
        t = rng.standard_normal((n, int(rng.integers(1, 6))))
        ixt, ity = binning_mi(t, np.arange(n), y, bin_size=float(rng.uniform(0.05, 2)))
        assert -1e-12 <= ity <= entropy_of_ids(y) + 1e-12
        assert -1e-12 <= ixt <= math.log2(n) + 1e-12
        assert ity <= ixt + 1e-9          # data processing: Y - X - T with X identified per sample


def test_kde_single_point_and_far_apart_points():
    var = 0.01
    lo, up = kde_entropy_bounds(np.zeros((50, 3)), var)
    gauss = 3 / 2 * math.log(2 * math.pi * math.e * var)
    assert up == pytest.approx(gauss) and lo <= up + 1e-12
    far = np.eye(16) * 100
    r = kde_mi(far, np.arange(16) % 2, var)
    for key in ("ixt_lower", "ixt_upper"):
        assert r[key] == pytest.approx(4.0, abs=1e-6)
    for key in ("ity_lower", "ity_upper"):
        assert r[key] == pytest.approx(1.0, abs=1e-6)


def test_kde_bounds_bracket_a_gaussian_channel():
    """T ~ N(0, s2) plus noise var: I(X;T) = 1/2 log2(1 + s2/var) per dimension (large N)."""
    rng = np.random.default_rng(0)
    s2, var, d = 1.0, 0.5, 2
    t = rng.standard_normal((4000, d)) * math.sqrt(s2)
    r = kde_mi(t, np.zeros(4000, dtype=int), var)
    exact = d / 2 * math.log2(1 + s2 / var)
    assert r["ixt_lower"] - 0.05 <= exact <= r["ixt_upper"] + 0.05
    # the two bounds are never further apart than d/2 log2(4) bits (equal-covariance components)
    assert 0 < r["ixt_upper"] - r["ixt_lower"] <= d + 1e-9
    assert abs(r["ity_upper"]) < 1e-9 and abs(r["ity_lower"]) < 1e-9   # one class: no label information


def test_kde_blocks_do_not_change_the_result():
    rng = np.random.default_rng(1)
    t, y = rng.standard_normal((300, 5)), rng.integers(0, 3, 300)
    assert kde_mi(t, y, 0.1, block=7) == pytest.approx(kde_mi(t, y, 0.1, block=1000), abs=1e-10)


@pytest.mark.parametrize("var", [0.05, 1e-4])
def test_kde_bounds_equal_a_direct_computation(var):
    """Saxe et al.'s estimators written out directly (full distance matrix, scipy's logsumexp) against
    the blocked, upper-triangle computation, on unequal classes and blocks that do not divide n; at a
    small variance most kernel terms underflow (exponents below -708 are raised to it there)."""
    from scipy.spatial.distance import pdist, squareform
    from scipy.special import logsumexp

    def mixture_entropy(t, var):   # pairwise-KL upper bound, nats
        n, d = t.shape
        lse = logsumexp(-squareform(pdist(t, "sqeuclidean")) / (2 * var), axis=1)
        return -np.mean(lse - np.log(n)) + d / 2 * np.log(2 * np.pi * var) + d / 2

    rng = np.random.default_rng(3)
    t = np.tanh(rng.standard_normal((1100, 4)) * 3)
    y = rng.choice(3, 1100, p=[0.6, 0.3, 0.1])
    d = t.shape[1]
    bd, noise = d / 2 * np.log(0.25), d / 2 * (np.log(2 * np.pi * var) + 1)
    upper, lower = mixture_entropy(t, var), mixture_entropy(t, 4 * var) + bd
    p = np.bincount(y) / len(y)
    upper_y = sum(p[c] * mixture_entropy(t[y == c], var) for c in range(3))
    lower_y = sum(p[c] * (mixture_entropy(t[y == c], 4 * var) + bd) for c in range(3))
    want = {"ixt_upper": upper - noise, "ixt_lower": lower - noise, "ity_upper": upper - upper_y, "ity_lower": lower - lower_y}
    got = kde_mi(t, y, var, block=256)
    for k, v in want.items():
        assert got[k] == pytest.approx(v / np.log(2), abs=1e-10), k


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_ksg_on_correlated_gaussians(rho):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3000, 2))
    a = z[:, :1]
    b = rho * z[:, :1] + math.sqrt(1 - rho ** 2) * z[:, 1:]
    exact = -0.5 * math.log2(1 - rho ** 2)
    assert ksg_mi(a, b, k=3) == pytest.approx(exact, abs=0.05)


def test_mixed_ksg_against_an_independent_implementation():
    from sklearn.feature_selection import mutual_info_classif
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 2000)
    t = y + rng.standard_normal(2000)
    ours = mixed_ksg_mi(t[:, None], y, k=3)
    theirs = mutual_info_classif(t[:, None], y, discrete_features=False, n_neighbors=3, random_state=0)[0] / math.log(2)
    assert ours == pytest.approx(theirs, abs=0.01)
    assert mixed_ksg_mi(rng.standard_normal((2000, 2)), y) < 0.05   # independent: near 0


def test_code_diagnostics_by_hand():
    """Four inputs, two tanh units binned by 0.5: unit 0 takes the values 0.995, 0.999, -0.995, 0.2
    (bins 1, 1, -2, 0: three levels; saturated, |t| >= 0.99 on 3 of 4), unit 1 stays at 0.1 (one
    level). Codes: (1,0), (1,0), (-2,0), (0,0): three. Ceiling: 4 distinct inputs, 2 bits; with two of
    them equal, 1.5 bits."""
    t = np.array([[0.995, 0.1], [0.999, 0.1], [-0.995, 0.1], [0.2, 0.1]])
    y = np.array([0, 0, 1, 1])
    d = binning_estimate(t, np.arange(4), y, bin_size=0.5)
    assert d["codes"] == 3 and d["levels"] == pytest.approx(2.0) and d["saturated_units"] == pytest.approx(0.5)
    assert d["ceiling"] == pytest.approx(2.0) and d["ixt"] == pytest.approx(1.5)
    assert (d["ixt"], d["ity"]) == pytest.approx(binning_mi(t, np.arange(4), y, bin_size=0.5))
    assert binning_estimate(t, np.array([0, 0, 1, 2]), y, bin_size=0.5)["ceiling"] == pytest.approx(1.5)
    assert binning_estimate(t * 3, np.arange(4), y, bin_size=0.5)["saturated_units"] is None   # unbounded
    # edges -1, 0.997, 1: unit 0 in bins 1, 2, 1, 1 (two levels), unit 1 in bin 1: two codes
    coarse = binning_estimate(t, np.arange(4), y, edges=np.array([-1, 0.997, 1]))
    assert coarse["codes"] == 2 and coarse["levels"] == pytest.approx(1.5)


def test_row_ids_packed_and_byte_paths_agree():
    rng = np.random.default_rng(7)
    small = rng.integers(0, 4, (500, 6))            # packed into int64
    wide = small.astype(np.float64) + 0.5            # byte view
    a, b = row_ids(small), row_ids(wide)
    # the same partition of rows (ids may be numbered differently)
    assert len(np.unique(a)) == len(np.unique(b))
    assert np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


@pytest.mark.parametrize("kind", ["edges", "size"])
def test_binning_of_a_tensor_on_its_device_equals_the_numpy_path(kind):
    """The capture keeps layers on the model's device and bins them there: the same estimates and
    diagnostics as the host path, to 1e-9 bits (tanh-like activations with exact ties and saturation)."""
    import torch
    from rotelab.measures.information import binning_estimate, row_ids
    rng = np.random.default_rng(3)
    t = np.tanh(rng.normal(size=(500, 6)) * 2).astype(np.float32).astype(np.float64)
    t[:50] = t[50:100]   # repeated rows: shared codes
    x_ids = row_ids(rng.integers(0, 300, size=(500, 1)))
    y = rng.integers(0, 3, 500)
    kw = {"edges": np.linspace(-1, 1, 30).astype(np.float32).astype(np.float64)} if kind == "edges" else {"bin_size": 0.5}
    host, device = binning_estimate(t, x_ids, y, **kw), binning_estimate(torch.from_numpy(t), x_ids, y, **kw)
    assert host.keys() == device.keys()
    for k in ("ixt", "ity", "ceiling", "levels", "saturated_units"):
        assert device[k] == pytest.approx(host[k], abs=1e-9), k
    assert device["codes"] == host["codes"]


def test_kde_of_a_tensor_equals_the_numpy_path():
    import torch
    from rotelab.measures.information import kde_mi
    rng = np.random.default_rng(4)
    t, y = rng.normal(size=(300, 4)), rng.integers(0, 3, 300)
    host, device = kde_mi(t, y, 0.1, block=64), kde_mi(torch.from_numpy(t), y, 0.1, block=64)
    assert device == pytest.approx(host, abs=1e-9)
