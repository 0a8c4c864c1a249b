"""Mutual-information estimators for the information plane, I(X;T) and I(T;Y), in bits.

Pure functions of arrays: `t` is (N, d) activations of one layer on N samples, `x_ids` gives each
sample's input identity (equal inputs share an id), `y` the integer labels.

- binning (Shwartz-Ziv & Tishby 2017; Saxe et al. 2018): activations replaced by their bin, each
  binned row one discrete symbol T'. I(X;T') = H(T') - H(T'|X) and I(T';Y) = H(T') - H(T'|Y) over the
  empirical distribution of the N samples. Fixed edges (np.linspace(lo, hi, n_bins), the original
  code's default -1, 1, 30) or a bin size (floor(t / size), unbounded, as Saxe et al. use for ReLU).
- kde (Kolchinsky & Tracey 2017, used by Saxe et al.): T + Gaussian noise of variance sigma^2; upper
  (pairwise KL) and lower (pairwise Bhattacharyya) bounds on the entropy of the resulting Gaussian
  mixture give bounds on I(X;T) and I(T;Y). Pairwise distances are computed in row blocks, so
  N = 10,000 needs O(block * N) memory.
- ksg (Kraskov, Stoegbauer & Grassberger 2004, estimator 1) for two continuous variables, and its
  mixed continuous/discrete form (Ross 2014) for I(T;Y): consistent for continuous variables.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

LOG2 = math.log(2.0)


# -- discrete ---------------------------------------------------------------------------------

def row_ids(a: np.ndarray) -> np.ndarray:
    """An integer id per row; equal rows get equal ids (exactly). Small non-negative integer rows
    are packed into one int64 each; anything else is compared through a byte view of each row."""
    a = np.ascontiguousarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.dtype.kind in "iu" and a.size and a.min() >= 0:
        bits = max(int(a.max()).bit_length(), 1)
        if bits * a.shape[1] <= 63:
            packed = (a.astype(np.int64) << (bits * np.arange(a.shape[1], dtype=np.int64))).sum(axis=1)
            return np.unique(packed, return_inverse=True)[1].ravel()
    rows = a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def entropy_of_ids(ids: np.ndarray) -> float:
    """Entropy (bits) of the empirical distribution of integer symbols."""
    counts = np.bincount(np.asarray(ids).ravel())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def joint_ids(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One id per distinct pair (a_i, b_i) of integer ids."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return np.unique(a * (b.max() + 1) + b, return_inverse=True)[1]


def discrete_mi(a: np.ndarray, b: np.ndarray) -> float:
    """I(A;B) = H(A) + H(B) - H(A,B) in bits, for integer symbols."""
    return entropy_of_ids(a) + entropy_of_ids(b) - entropy_of_ids(joint_ids(a, b))


def bin_activations(t: np.ndarray, edges: np.ndarray | None = None, bin_size: float | None = None) -> np.ndarray:
    """Bin indices of activations: np.digitize against fixed edges, or floor(t / bin_size)."""
    if (edges is None) == (bin_size is None):
        raise ValueError("give exactly one of edges and bin_size")
    if edges is not None:
        return np.digitize(t, edges).astype(np.int32)
    assert bin_size is not None
    return np.floor(np.asarray(t, dtype=np.float64) / bin_size).astype(np.int64)


def binning_mi(t: np.ndarray, x_ids: np.ndarray, y: np.ndarray, edges=None, bin_size=None) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in bits of the binned layer."""
    t_ids = row_ids(bin_activations(np.asarray(t), edges, bin_size))
    return discrete_mi(x_ids, t_ids), discrete_mi(t_ids, np.asarray(y))


def code_diagnostics(t: np.ndarray, binned: np.ndarray, t_ids: np.ndarray, x_ids: np.ndarray) -> dict:
    """What bounds a binned layer's estimate. `ceiling`: H(X) in bits, the most I(X;T) can be (log2 N
    for N distinct inputs); `codes`: distinct binned codes of the layer (I(X;T) = H(T) <= log2 codes);
    `levels`: mean over units of their distinct binned values (a tanh unit has 4 with bins of 0.5);
    `saturated_units`: for a bounded layer (|t| <= 1: tanh, softmax), the fraction of units at
    |t| >= 0.99 on at least half of the inputs, None for an unbounded one."""
    t = np.asarray(t)
    b = np.sort(binned.reshape(len(binned), -1), axis=0)
    levels = float(np.mean((np.diff(b, axis=0) != 0).sum(axis=0) + 1)) if b.size else 0.0
    bounded = t.size and float(np.abs(t).max()) <= 1 + 1e-6
    saturated = float(np.mean(np.mean(np.abs(t.reshape(len(t), -1)) >= 0.99, axis=0) >= 0.5)) if bounded else None
    return {"ceiling": entropy_of_ids(x_ids), "codes": int(len(np.unique(t_ids))), "levels": levels,
            "saturated_units": saturated}


def _binning_on_device(t: "torch.Tensor", x_ids: np.ndarray, y: np.ndarray, edges=None, bin_size=None) -> dict:
    """binning_estimate for activations held as a tensor, on their device: the binning (torch.bucketize
    is np.digitize with right=True; floor for a bin size), the distinct codes (torch.unique over rows)
    and the diagnostics run there; only the N code ids come to the host for the entropies. The same
    numbers as the NumPy path (tested: the ids differ only in their labels)."""
    import torch
    if (edges is None) == (bin_size is None):
        raise ValueError("give exactly one of edges and bin_size")
    if edges is not None:
        binned = torch.bucketize(t, torch.as_tensor(np.asarray(edges), dtype=t.dtype, device=t.device), right=True)
    else:
        binned = torch.floor(t.to(torch.float64) / bin_size).to(torch.int64)
    flat = binned.reshape(len(binned), -1)
    codes, inverse = torch.unique(flat, dim=0, return_inverse=True)
    t_ids = inverse.cpu().numpy().ravel()
    b = flat.sort(dim=0).values
    levels = float(((b.diff(dim=0) != 0).sum(dim=0) + 1).to(torch.float64).mean()) if b.numel() else 0.0
    a = t.reshape(len(t), -1).abs()
    bounded = t.numel() and float(a.max()) <= 1 + 1e-6
    saturated = float(((a >= 0.99).to(torch.float64).mean(dim=0) >= 0.5).to(torch.float64).mean()) if bounded else None
    return {"ixt": discrete_mi(x_ids, t_ids), "ity": discrete_mi(t_ids, np.asarray(y)),
            "ceiling": entropy_of_ids(x_ids), "codes": int(len(codes)), "levels": levels, "saturated_units": saturated}


def binning_estimate(t, x_ids: np.ndarray, y: np.ndarray, edges=None, bin_size=None) -> dict:
    """binning_mi's I(X;T) and I(T;Y) (bits) with the layer's code_diagnostics, from one binning; a
    torch tensor is binned on its own device (_binning_on_device)."""
    if type(t).__module__.startswith("torch"):
        return _binning_on_device(t, x_ids, y, edges, bin_size)
    t = np.asarray(t)
    binned = bin_activations(t, edges, bin_size)
    t_ids = row_ids(binned)
    return {"ixt": discrete_mi(x_ids, t_ids), "ity": discrete_mi(t_ids, np.asarray(y)),
            **code_diagnostics(t, binned, t_ids, x_ids)}


def binning_mi_reference(t, x_ids, y, edges=None, bin_size=None) -> tuple[float, float]:
    """A direct, unvectorized implementation of the same definitions (for tests and benchmarks):
    H(T) - sum_x p(x) H(T|X=x), looping over the distinct x as the original code does."""
    b = bin_activations(np.asarray(t), edges, bin_size)
    symbols = [tuple(r) for r in b]
    n = len(symbols)

    def entropy(items):
        counts = {}
        for s in items:
            counts[s] = counts.get(s, 0) + 1
        m = len(items)
        return -sum(c / m * math.log2(c / m) for c in counts.values())

    h_t = entropy(symbols)
    cond = {}
    for s, xi in zip(symbols, np.asarray(x_ids).tolist()):
        cond.setdefault(xi, []).append(s)
    h_t_x = sum(len(v) / n * entropy(v) for v in cond.values())
    by_y = {}
    for s, yi in zip(symbols, np.asarray(y).tolist()):
        by_y.setdefault(yi, []).append(s)
    h_t_y = sum(len(v) / n * entropy(v) for v in by_y.values())
    return h_t - h_t_x, h_t - h_t_y


# -- KDE bounds -------------------------------------------------------------------------------

def _logsumexp_kernels(t: torch.Tensor, groups: torch.Tensor, variances: tuple[float, ...], block: int):
    """For every row i and variance v: log sum_j exp(-||t_i - t_j||^2 / (2 v)) over all rows j
    ("all") and over the rows of i's group ("group"). Squared distances are computed once per pair of
    row blocks, and only for the upper triangle of blocks (distances are symmetric: a block's kernel
    serves its rows and, transposed, its columns), in memory O(block^2); each kernel is exponentiated
    without a max shift and summed per group by a matrix product with the groups' one-hot matrix. No
    shift is needed: both sums include the term j = i, which is exp(0) = 1, and terms that underflow
    are below 1e-300 of it. Measured on CPU (float64, 1024-row blocks): the distances as a product
    with the squared norms added in place are 9x faster than addmm with a broadcast input, and the
    per-group sums as onehot^T x kernel 3-10x faster than kernel x onehot (either side), and exponents
    raised to -708 where lower: exp's results there are subnormal numbers, 5x slower to compute (small
    variances such as the 12-bit task's 1e-3 hit them on most pairs), and a term of 3e-308 instead of
    less is invisible beside the j = i term."""
    import torch
    n = len(t)
    _, g = torch.unique(groups.to(t.device), return_inverse=True)
    onehot_t = torch.nn.functional.one_hot(g, int(g.max()) + 1).to(t.dtype).T.contiguous()   # (groups, n)
    sq = (t * t).sum(dim=1)
    per_group = {v: torch.zeros(onehot_t.shape[0], n, dtype=t.dtype, device=t.device) for v in variances}
    for i in range(0, n, block):
        rows = slice(i, i + block)
        for j in range(i, n, block):
            cols = slice(j, j + block)
            dist = torch.mm(t[rows], t[cols].T).mul_(-2).add_(sq[rows, None]).add_(sq[None, cols]).clamp_min_(0)
            for v in variances:
                kernel = torch.mul(dist, -1 / (2 * v)).clamp_min_(-708.0).exp_()   # no subnormals: see above
                per_group[v][:, cols] += onehot_t[:, rows] @ kernel     # column sums of the block, per group
                if j != i:
                    per_group[v][:, rows] += onehot_t[:, cols] @ kernel.T   # its row sums (the block below)
    out = {}
    for v, sums in per_group.items():
        out["all", v] = sums.sum(dim=0).log()
        out["group", v] = sums.gather(0, g[None, :]).squeeze(0).log()
    return out


def _float64(t) -> "torch.Tensor":
    """Activations as float64 where they are: a tensor stays on its device (the KDE's kernels run
    there, in blocks), an array becomes a CPU tensor."""
    import torch
    if torch.is_tensor(t):
        return t.to(torch.float64)
    return torch.as_tensor(np.asarray(t), dtype=torch.float64)


def _kl_entropy(lse: torch.Tensor, n: int, d: int, var: float) -> float:
    """Pairwise-KL upper bound (nats) on the entropy of (1/n) sum_j N(t_j, var I), given each row's
    log sum_j exp(-||t_i - t_j||^2 / (2 var)): -mean_i (lse_i - log n) + d/2 log(2 pi var) + d/2."""
    return float(-(lse - math.log(n)).mean() + d / 2 * math.log(2 * math.pi * var) + d / 2)


def kde_entropy_bounds(t, var: float, block: int = 1024) -> tuple[float, float]:
    """(lower, upper) bounds in nats on the entropy of T + N(0, var I) with T uniform on the rows of t.
    The lower bound uses Bhattacharyya distances: the KL form at 4 var, plus d/2 log(1/4)."""
    import torch   # here, not above: plotting a finished run needs this module and no torch
    t = _float64(t)
    n, d = t.shape
    lse = _logsumexp_kernels(t, torch.zeros(n, dtype=torch.long), (var, 4 * var), block)
    return (_kl_entropy(lse["all", 4 * var], n, d, 4 * var) + d / 2 * math.log(0.25),
            _kl_entropy(lse["all", var], n, d, var))


def kde_mi(t, y, var: float, block: int = 1024) -> dict:
    """Lower and upper bounds (bits) on I(X;T) and I(T;Y) for T with additive Gaussian noise of
    variance var (Saxe et al.). H(T|X) is the noise entropy d/2 log(2 pi e var); H(T|Y) is the
    label-weighted mixture entropy within each class, bounded the same way."""
    import torch
    t = _float64(t)
    y = np.asarray(y)
    n, d = t.shape
    classes, y_idx = np.unique(y, return_inverse=True)
    groups = torch.as_tensor(y_idx).to(t.device)
    lse = _logsumexp_kernels(t, groups, (var, 4 * var), block)
    bd = d / 2 * math.log(0.25)
    h_noise = d / 2 * (math.log(2 * math.pi * var) + 1)
    upper = _kl_entropy(lse["all", var], n, d, var)
    lower = _kl_entropy(lse["all", 4 * var], n, d, 4 * var) + bd
    upper_y = lower_y = 0.0
    for c in range(len(classes)):
        rows = groups == c
        n_c = int(rows.sum())
        upper_y += n_c / n * _kl_entropy(lse["group", var][rows], n_c, d, var)
        lower_y += n_c / n * (_kl_entropy(lse["group", 4 * var][rows], n_c, d, 4 * var) + bd)
    return {"ixt_lower": (lower - h_noise) / LOG2, "ixt_upper": (upper - h_noise) / LOG2,
            "ity_lower": (lower - lower_y) / LOG2, "ity_upper": (upper - upper_y) / LOG2}


# -- k nearest neighbours ---------------------------------------------------------------------

def _jitter(a: np.ndarray, seed: int, scale: float = 1e-10) -> np.ndarray:
    """Break exact ties (kNN estimators assume continuous data) with noise far below any real distance."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    rng = np.random.default_rng(seed)
    return a + scale * (1 + np.abs(a).max()) * rng.standard_normal(a.shape)


def ksg_mi(a, b, k: int = 3, seed: int = 0) -> float:
    """KSG estimator 1 of I(A;B) in bits for continuous A (N, da) and B (N, db), max-norm:
    psi(k) + psi(N) - mean(psi(n_a + 1) + psi(n_b + 1))."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma
    a, b = _jitter(a, seed), _jitter(b, seed + 1)
    n = len(a)
    joint = np.hstack([a, b])
    eps = cKDTree(joint).query(joint, k=k + 1, p=np.inf, workers=-1)[0][:, -1]
    # neighbours strictly closer than eps in each marginal space (the point itself excluded)
    n_a = cKDTree(a).query_ball_point(a, eps * (1 - 1e-12), p=np.inf, return_length=True, workers=-1) - 1
    n_b = cKDTree(b).query_ball_point(b, eps * (1 - 1e-12), p=np.inf, return_length=True, workers=-1) - 1
    mi = digamma(k) + digamma(n) - np.mean(digamma(n_a + 1) + digamma(n_b + 1))
    return float(max(mi, 0.0) / LOG2)


def mixed_ksg_mi(t, y, k: int = 3, seed: int = 0) -> float:
    """I(T;Y) in bits for continuous T and discrete Y (Ross 2014):
    psi(N) - mean(psi(N_y)) + psi(k) - mean(psi(m)), where the k-th neighbour of each sample is taken
    within its class and m counts all samples within that distance."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma
    t = _jitter(t, seed)
    y = np.asarray(y)
    n = len(t)
    tree = cKDTree(t)
    radius = np.empty(n)
    n_class = np.empty(n)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        kk = min(k, len(idx) - 1)
        if kk < 1:
            radius[idx], n_class[idx] = 0.0, 1
            continue
        radius[idx] = cKDTree(t[idx]).query(t[idx], k=kk + 1, p=np.inf, workers=-1)[0][:, -1]
        n_class[idx] = len(idx)
    m = tree.query_ball_point(t, radius, p=np.inf, return_length=True, workers=-1) - 1
    ks = np.array([min(k, c - 1) if c > 1 else 1 for c in n_class])
    mi = digamma(n) - np.mean(digamma(n_class)) + np.mean(digamma(ks)) - np.mean(digamma(np.maximum(m, 1)))
    return float(max(mi, 0.0) / LOG2)


def compression(epochs, ixt, ceiling: float, saturation: float = 0.1, most: float = 0.8) -> dict:
    """How far a layer's I(X;T) curve falls from its peak by the last epoch: peak, its epoch, the
    final value and the fall (bits). `saturated` when the curve ends within `saturation` bits of the
    estimator's ceiling (log2 N for plug-in binning on N inputs), `at_ceiling_from` the epoch from
    which it stays there: once at the ceiling the estimate cannot show compression, which is not the
    same as finding none. Read it on a mean curve over runs: one run's peak minus final is biased
    upward by its noise. `most_by`: the first epoch after the peak by which `most` of the fall is
    done (the curve at or below peak - most x fall): the fall's time scale."""
    epochs, ixt = np.asarray(epochs), np.asarray(ixt, dtype=float)
    order = np.argsort(epochs)
    epochs, ixt = epochs[order], ixt[order]
    k = int(np.argmax(ixt))
    near = ixt >= ceiling - saturation
    below = np.flatnonzero(~near)
    start = (below[-1] + 1) if len(below) else 0
    fall = float(ixt[k] - ixt[-1])
    done = np.flatnonzero(ixt[k:] <= ixt[k] - most * fall + 1e-12)
    return {"peak": float(ixt[k]), "peak_epoch": int(epochs[k]), "final": float(ixt[-1]),
            "fall": fall, "most_by": int(epochs[k + done[0]]) if fall > 0 else None, "saturated": bool(near[-1]),
            "at_ceiling_from": int(epochs[start]) if near[-1] else None}
