"""Memorization estimates at Feldman & Zhang's scale, from the (models x examples) matrices alone.

K models' subsets and correctness bits (random here: the estimates' cost does not depend on what the
models learned) for N = 60,000 train and M = 10,000 test examples: the time and peak memory of
mem and C-score (with their intervals) and of influence kept as the top 100 train examples per test
example, against the definitions written out example by example (measured on a slice, per example);
and `detection`'s bootstrap (AUROC and AP of a score over 500 resamples of N examples, all resamples at
once from their counts) against scikit-learn called once per resample, on the same resamples.

    python bench/memorization_estimates.py [--models 64] [--train 60000] [--test 10000] [--quick]

Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402

from rotelab.measures.memorization import (bootstrap_counts, cscore, influence, memorization, subset_masks,  # noqa: E402
                                           weighted_aurocs, weighted_average_precisions)


def written_out(trained, correct, correct_test, examples: int):
    """mem and infl of the first `examples` train examples, one example (and test example) at a time."""
    for i in range(examples):
        ins, outs = trained[:, i], ~trained[:, i]
        correct[ins, i].mean() - correct[outs, i].mean()
        for j in range(correct_test.shape[1]):
            correct_test[ins, j].mean() - correct_test[outs, j].mean()


def bootstrap_per_resample(score, positive, counts):
    """AUROC and AP of each resample by scikit-learn, one call each (what `detection` did before)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    out = []
    for r in counts:
        i = np.repeat(np.arange(len(score)), r)
        out.append((roc_auc_score(positive[i], score[i]), average_precision_score(positive[i], score[i])))
    return np.array(out)


def measured(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**30


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--train", type=int, default=60_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the bench runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.train, args.test = 16, 2_000, 500
    rng = np.random.default_rng(0)
    trained = subset_masks(args.train, args.models, 0.7, rng)
    correct = rng.random((args.models, args.train)) < 0.8
    correct_test = rng.random((args.models, args.test)) < 0.7

    _, t_mem, peak_mem = measured(lambda: (memorization(trained, correct), cscore(trained, correct)))
    (idx, val), t_infl, peak_infl = measured(lambda: influence(trained, correct_test, top=args.top))
    # the written-out definitions on a slice: 20 train examples x every test example
    slice_n = 20
    t = time.perf_counter()
    written_out(trained, correct, correct_test, slice_n)
    t_loop = (time.perf_counter() - t) / slice_n * args.train
    n_boot, n_det = (50, 2_000) if args.quick else (500, 10_000)
    score, positive = rng.normal(size=n_det), rng.random(n_det) < 0.2
    score += positive   # a signal that ranks the positives first, somewhat
    counts = bootstrap_counts(n_det, n_boot, rng)
    t = time.perf_counter()
    fast = np.stack([weighted_aurocs(score, positive, counts), weighted_average_precisions(score, positive, counts)], 1)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = bootstrap_per_resample(score, positive, counts)
    t_slow = time.perf_counter() - t
    figures = {"models": args.models, "train": args.train, "test": args.test, "top": args.top,
               "mem_and_cscore_s": round(t_mem, 3), "mem_and_cscore_peak_gib": round(peak_mem, 3),
               "influence_top_s": round(t_infl, 2), "influence_top_peak_gib": round(peak_infl, 3),
               "influence_top_kept_mib": round((idx.nbytes + val.nbytes) / 2**20, 2),
               "influence_dense_float16_gib": round(args.train * args.test * 2 / 2**30, 2),
               "written_out_s_extrapolated": round(t_loop, 1),
               "written_out_over_influence": round(t_loop / t_infl, 1),
               "detection_resamples": n_boot, "detection_examples": n_det,
               "detection_bootstrap_s": round(t_fast, 3), "detection_per_resample_sklearn_s": round(t_slow, 2),
               "detection_speedup": round(t_slow / t_fast, 1),
               "detection_largest_difference": float(np.abs(fast - slow).max())}
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
