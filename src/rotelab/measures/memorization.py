"""Per-example memorization signals, as pure functions on arrays.

From K models, each trained on a random subset of the N training examples (Feldman & Zhang, NeurIPS
2020; Jiang et al., ICML 2021), two boolean matrices say everything:

    trained  (K, N)  model k trained on example i
    correct  (K, N)  model k classifies example i right (its label used) at the end; (K, M) for test examples

    mem(i)     = P[right on i | i in the subset] - P[right on i | i held out]
    infl(i, j) = P[right on test j | i in the subset] - P[right on test j | i held out]
    C-score(i) = P[right on i | i held out]               (at one subset fraction r)

Each probability is the fraction over the models that did (or did not) train on i; a standard error
and a 95% score interval come with every estimate, from those two counts (the two groups of models
are disjoint). An estimate without a model on one side is NaN.

From one training run's per-epoch records:

    aum(margins)              mean over epochs of the assigned label's margin (Pleiss et al., NeurIPS 2020)
    data_map(probabilities)   confidence, variability (Swayamdipta et al., EMNLP 2020)

and the measure of any signal against the corruption mask: detection(score, corrupted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Estimate:
    """Per example: the estimate, its standard error, its 95% interval (lo, hi: Wilson's score interval
    for a fraction, Newcombe's hybrid score interval for a difference of two; the plain +-1.96 se
    undercovers where a fraction is near 0 or 1, as a corrupted example's often is: 62% for
    P[right | held out] < 0.05 from 60 models, measured in the tests), and the models on each side."""
    value: np.ndarray
    se: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray

    @property
    def interval(self) -> str:
        return "95% score interval (Wilson; Newcombe for a difference) over models"


Z95 = 1.959963984540054


def wilson(p, n, z: float = Z95):
    """Wilson's score interval of a binomial fraction p from n trials (NaN where n = 0)."""
    p = np.asarray(p, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clipped: at p = 0 or 1 one end is exactly 0 or 1, which rounding would move by 1e-17
    return np.where(n > 0, np.clip(center - half, 0, 1), np.nan), np.where(n > 0, np.clip(center + half, 0, 1), np.nan)


def newcombe(p1, n1, p2, n2, z: float = Z95):
    """Newcombe's hybrid score interval (his method 10) of p1 - p2, from the two Wilson intervals."""
    l1, u1 = wilson(p1, n1, z)
    l2, u2 = wilson(p2, n2, z)
    d = p1 - p2
    return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def subset_masks(n: int, models: int, fraction: float, rng: np.random.Generator,
                 labels: np.ndarray | None = None) -> np.ndarray:
    """(models, n) bool: each model's training subset, `fraction` of the n examples drawn without
    replacement; with `labels`, the same fraction of every class (class-balanced)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the subset fraction must lie in (0, 1), got {fraction}")
    masks = np.zeros((models, n), dtype=bool)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for k in range(models):
        for g in groups:
            take = int(round(fraction * len(g)))
            if take == 0 or take == len(g):
                raise ValueError(f"a subset of {fraction} of {len(g)} examples leaves no example "
                                 f"{'in' if take == 0 else 'out'}; use more examples or another fraction")
            masks[k, rng.choice(g, size=take, replace=False)] = True
    return masks


def _split_means(trained: np.ndarray, correct: np.ndarray):
    t = np.asarray(trained, dtype=bool)
    c = np.asarray(correct, dtype=bool)
    if t.shape != c.shape or t.ndim != 2:
        raise ValueError(f"trained and correct must be two (models, examples) matrices of one shape, got {t.shape} and {c.shape}")
    n_in = t.sum(axis=0)
    n_out = t.shape[0] - n_in
    hits_in = (t & c).sum(axis=0)
    hits_out = (~t & c).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = np.where(n_in > 0, hits_in / np.maximum(n_in, 1), np.nan)
        p_out = np.where(n_out > 0, hits_out / np.maximum(n_out, 1), np.nan)
    return p_in, p_out, n_in, n_out


def _binomial_var(p, n):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, p * (1 - p) / np.maximum(n - 1, 1), np.nan)


def memorization(trained, correct) -> Estimate:
    """mem(i) with its standard error: sqrt(p_in(1-p_in)/(n_in-1) + p_out(1-p_out)/(n_out-1)) (the
    unbiased variance of each fraction; NaN where a side has fewer than 2 models)."""
    p_in, p_out, n_in, n_out = _split_means(trained, correct)
    se = np.sqrt(_binomial_var(p_in, n_in) + _binomial_var(p_out, n_out))
    lo, hi = newcombe(p_in, n_in, p_out, n_out)
    return Estimate(p_in - p_out, se, lo, hi, n_in, n_out)


def cscore(trained, correct) -> Estimate:
    """The consistency score of Jiang et al.: P[right on i | i held out], with its standard error."""
    _, p_out, n_in, n_out = _split_means(trained, correct)
    lo, hi = wilson(p_out, n_out)
    return Estimate(p_out, np.sqrt(_binomial_var(p_out, n_out)), lo, hi, n_in, n_out)


def influence(trained, correct_test, top: int | None = None, block: int = 256):
    """infl(i, j) for every train example i and test example j, as two matrix products:
    (T^T C) / n_in - ((1-T)^T C) / n_out, with T (K, N) and C (K, M).

    With `top=None`, the dense (N, M) matrix in float16 (2 bytes an entry: 10,000 x 10,000 is 191 MiB).
    With `top=k`, per test example the k train examples of highest influence: (indices (M, k) int32,
    values (M, k) float16), computed over blocks of `block` test examples so that memory stays at
    a few N x block arrays (60,000 x 10,000 with k = 100 and 64 models: 5.7 MiB kept, 0.48 GiB at the peak, 17 s,
    measured by bench/memorization_estimates.py)."""
    t = np.asarray(trained, dtype=bool)
    c = np.asarray(correct_test, dtype=bool)
    if t.ndim != 2 or c.ndim != 2 or t.shape[0] != c.shape[0]:
        raise ValueError(f"trained (models, N) and correct_test (models, M) need the same models, got {t.shape} and {c.shape}")
    m = c.shape[1]
    if top is None:
        out = np.empty((t.shape[1], m), dtype=np.float16)
    else:
        top = min(top, t.shape[1])
        idx = np.empty((m, top), dtype=np.int32)
        val = np.empty((m, top), dtype=np.float16)
    for j0, infl in _influence_blocks(t, c, block):
        if top is None:
            out[:, j0:j0 + block] = infl
            continue
        # torch's top-k over contiguous rows: 5-10x faster than argpartition down columns, most of all
        # with the many ties that a few dozen models give
        import torch
        score = torch.from_numpy(np.ascontiguousarray(np.where(np.isnan(infl), -np.inf, infl).T))   # (b, N)
        chosen = torch.topk(score, top, dim=1, sorted=True).indices.numpy()
        idx[j0:j0 + block] = chosen
        val[j0:j0 + block] = np.take_along_axis(infl, chosen.T, axis=0).T
    return out if top is None else (idx, val)


def aum(margins) -> np.ndarray:
    """Area under the margin: per example, the mean over epochs of (assigned label's logit - the largest
    other logit); margins (epochs, N). Low (negative) for examples the net fits only late or never."""
    return np.asarray(margins, dtype=np.float64).mean(axis=0)


def data_map(probabilities, correct=None) -> dict:
    """Swayamdipta et al.'s data map from the probability of the assigned label per epoch (epochs, N):
    confidence (its mean over epochs), variability (its standard deviation over epochs, population
    form) and, with the correctness bits (epochs, N), correctness (the fraction of epochs right)."""
    p = np.asarray(probabilities, dtype=np.float64)
    out = {"confidence": p.mean(axis=0), "variability": p.std(axis=0)}
    if correct is not None:
        out["correctness"] = np.asarray(correct, dtype=bool).mean(axis=0)
    return out


def detection(score, corrupted, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """How well `score` ranks the corrupted examples first (higher score = more suspect): AUROC and
    average precision (scikit-learn's), each with a percentile bootstrap interval over examples
    (resampled with replacement, `n_boot` times, from a fixed seed), and n, the examples scored.
    Examples whose score is NaN are left out (n says how many remain)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(corrupted, dtype=bool)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    if y.all() or not y.any():
        raise ValueError("detection needs both corrupted and clean examples")
    w = bootstrap_counts(len(s), n_boot, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"):   # a resample of one class only: NaN, left out
        boots = {"auroc": weighted_aurocs(s, y, w), "ap": weighted_average_precisions(s, y, w)}
    boots = {k: v[~np.isnan(v)] for k, v in boots.items()}
    a = (1 - level) / 2
    out = {"n": int(len(s)), "corrupted": int(y.sum()), "interval": f"percentile bootstrap {level:.0%} over examples"}
    for name, fn in (("auroc", roc_auc_score), ("ap", average_precision_score)):
        out[name] = float(fn(y, s))
        out[f"{name}_ci"] = (float(np.quantile(boots[name], a)), float(np.quantile(boots[name], 1 - a)))
    return out


def _influence_blocks(t: np.ndarray, c: np.ndarray, block: int = 256):
    """infl(i, j) over blocks of test examples, as two matrix products (influence's docstring): (first
    j, (N, block) float32 array, NaN where undefined)."""
    k = t.shape[0]
    n_in = t.sum(axis=0).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_in = np.where(n_in > 0, 1 / n_in, np.nan).astype(np.float32)[:, None]
        inv_out = np.where(k - n_in > 0, 1 / (k - n_in), np.nan).astype(np.float32)[:, None]
    total_c = c.sum(axis=0).astype(np.float32)
    tf = t.T.astype(np.float32)
    for j0 in range(0, c.shape[1], block):
        hits_in = tf @ c[:, j0:j0 + block].astype(np.float32)   # (N, b): models that trained on i and got j right
        yield j0, hits_in * inv_in - (total_c[j0:j0 + block] - hits_in) * inv_out


def pairs_above(trained, correct_test, threshold: float) -> int:
    """How many train-test pairs have an estimated influence above `threshold`."""
    t, c = np.asarray(trained, dtype=bool), np.asarray(correct_test, dtype=bool)
    return int(sum((infl > threshold).sum() for _, infl in _influence_blocks(t, c)))


def influence_null(trained, correct_test, n_perm: int = 20, threshold: float = 0.15, seed: int = 0,
                   block: int = 256) -> dict:
    """The permutation null of influence estimates: which model trained on which subset is shuffled
    (the rows of `trained` permuted: every mask and every model's correctness kept, their link
    broken), so that any influence left is what K models give by chance. Per permutation and test
    example j, the largest influence over the training examples (`max`, (n_perm, M)), and the number
    of pairs (i, j) above `threshold` (`above`, (n_perm,)). A pair's p-value against the max of its
    test example's null (`pair_pvalues`) controls the chance of any spurious pair for that test example."""
    t = np.asarray(trained, dtype=bool)
    c = np.asarray(correct_test, dtype=bool)
    rng = np.random.default_rng(seed)
    maxima = np.empty((n_perm, c.shape[1]), dtype=np.float32)
    above = np.zeros(n_perm, dtype=np.int64)
    for b in range(n_perm):
        for j0, infl in _influence_blocks(t[rng.permutation(t.shape[0])], c, block):   # masks dealt anew
            infl = np.where(np.isnan(infl), -np.inf, infl)
            maxima[b, j0:j0 + infl.shape[1]] = infl.max(axis=0)
            above[b] += int((infl > threshold).sum())
    return {"max": maxima, "above": above, "threshold": threshold, "perms": n_perm}


def pair_pvalues(values, null_max) -> np.ndarray:
    """p-value of each estimated influence values[j, q] (test example j, its q-th pair) against the
    null maxima of test example j over the permutations: (1 + #{b: max_b(j) >= value}) / (1 + B)."""
    v = np.asarray(values, dtype=np.float64)
    null = np.asarray(null_max, dtype=np.float64)   # (B, M)
    counts = (null.T[:, :, None] >= v[:, None, :]).sum(axis=1)   # (M, q)
    return (1 + counts) / (1 + null.shape[0])


def _weighted_ties(score, positive, weights, descending: bool):
    """Per group of equal scores, in score order: the weighted positives and negatives (B, groups),
    each row of `weights` (B, N) counting example i weights[b, i] times."""
    s, y = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(-s if descending else s, kind="stable")
    s, y, w = s[order], y[order], np.asarray(weights, dtype=np.float64)[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return np.add.reduceat(w * y, starts, axis=1), np.add.reduceat(w * ~y, starts, axis=1)


def weighted_aurocs(score, positive, weights) -> np.ndarray:
    """AUROC of `score` under each row of example weights (B, N) at once: row b counts example i
    weights[b, i] times (a bootstrap resample's counts give that resample's AUROC; ties count a half):
    per tie group the weighted positives times the weighted negatives below it."""
    pos, neg = _weighted_ties(score, positive, weights, descending=False)
    below = np.cumsum(neg, axis=1) - neg
    return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def auroc(score, positive) -> float:
    """The area under the ROC curve of `score` ranking the positives first (ties count a half; equal to
    scikit-learn's roc_auc_score)."""
    return float(weighted_aurocs(score, positive, np.ones((1, len(np.asarray(score)))))[0])


def weighted_average_precisions(score, positive, weights) -> np.ndarray:
    """Average precision (scikit-learn's: precision at each distinct score, weighted by the recall it
    adds) of `score` under each row of example weights (B, N) at once, as weighted_aurocs."""
    tp, fp = _weighted_ties(score, positive, weights, descending=True)
    ctp, cfp = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    precision = np.where(ctp + cfp > 0, ctp / np.where(ctp + cfp > 0, ctp + cfp, 1), 0.0)
    return (tp * precision).sum(1) / tp.sum(1)


def bootstrap_counts(n: int, n_boot: int, rng) -> np.ndarray:
    """(n_boot, n): how often each of n examples is drawn in each resample with replacement."""
    return rng.multinomial(n, np.full(n, 1 / n), size=n_boot)


def paired_auroc_difference(a: list, b: list, positive: list, n_boot: int = 1000, level: float = 0.95,
                            seed: int = 0) -> dict:
    """AUROC(a) - AUROC(b) of two scores of the same examples, over one or more draws (lists with one
    array per draw: the examples of a draw are scored by both): the mean over draws of each draw's
    difference, with a paired percentile bootstrap interval (each resample draws the examples of every
    draw with replacement, the same ones for both scores, and averages the draws' differences), and
    each draw's own difference."""
    rng = np.random.default_rng(seed)
    per, boots = [], np.zeros(n_boot)
    for x, z, y in zip(a, b, positive):
        per.append(auroc(x, y) - auroc(z, y))
        w = bootstrap_counts(len(y), n_boot, rng)
        with np.errstate(invalid="ignore", divide="ignore"):   # a resample of one class only: NaN, left out
            boots += weighted_aurocs(x, y, w) - weighted_aurocs(z, y, w)
    boots = boots[~np.isnan(boots)] / len(per)
    q = (1 - level) / 2
    return {"difference": float(np.mean(per)), "lo": float(np.quantile(boots, q)), "hi": float(np.quantile(boots, 1 - q)),
            "per_draw": [float(x) for x in per], "n_draws": len(per),
            "kind": f"paired percentile bootstrap {level:.0%} over examples, mean over draws"}
