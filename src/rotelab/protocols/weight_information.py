"""The learned-noise study's figure and checks (Achille & Soatto 2018): fit runs with learned
log-normal weight noise trained on cross-entropy + beta * KL / N, and the information in the weights
at the end (the KL to the log-uniform prior, bits) against beta, the label corruption p and the train
accuracy. Part of fit's StudyParts; imports no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import parse_corruption
from ..protocol import CheckFn, FigureFn


def final_rows(runs) -> list[dict]:
    """One row per run: beta, p, seed and the last epoch's information in the weights and accuracies."""
    rows = []
    for r in runs:
        cfg, m = r.read_config(), r.read_metrics()
        kind, p = parse_corruption(cfg.get("corrupt", "none"))
        if not m or "kl_loguniform_bits" not in m[-1] or kind not in ("labels", "none"):
            continue
        rows.append({"run": r.path.name, "beta": float(cfg["info_weight"]), "p": p, "seed": cfg["seed"],
                     "info_bits": float(m[-1]["kl_loguniform_bits"]), "train_acc": float(m[-1]["train_acc"]),
                     "test_acc": float(m[-1]["test_acc"])})
    return rows


def _by(rows, **where) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def check_random_needs_more_information(ctx, step: str, fit_at_least: float = 0.95, source: str = "rotelab threshold"):
    """At every beta where both the true-label (p = 0) and the random-label (p = 1) runs fit (mean
    train accuracy >= fit_at_least), every random-label run holds more information in its weights than
    every true-label run (with 3 runs a side, complete separation has exact one-sided permutation
    p = 0.05). Betas where one of them does not fit are reported, not judged."""
    rows = final_rows(ctx.runs(step))
    parts, judged, ok = [], 0, True
    for beta in sorted({r["beta"] for r in rows}):
        true, rand = _by(rows, beta=beta, p=0.0), _by(rows, beta=beta, p=1.0)
        if not true or not rand:
            continue
        fit = {name: float(np.mean([r["train_acc"] for r in g])) for name, g in (("true", true), ("random", rand))}
        it, ir = [r["info_bits"] for r in true], [r["info_bits"] for r in rand]
        said = (f"beta {beta:g}: random {np.mean(ir):,.0f} bits ({min(ir):,.0f}-{max(ir):,.0f}, n = {len(ir)}, train "
                f"{fit['random']:.3f}) vs true {np.mean(it):,.0f} ({min(it):,.0f}-{max(it):,.0f}, n = {len(it)}, train "
                f"{fit['true']:.3f})")
        if min(fit.values()) < fit_at_least:
            parts.append(said + ": not both fit, not judged")
            continue
        judged += 1
        separated = min(ir) > max(it)
        ok &= separated
        parts.append(said + (f", {np.mean(ir) / np.mean(it):.1f}x: every random run above every true one"
                             if separated else ": the runs overlap"))
    expected = (f"every random-label run above every true-label run at each beta where both fit (train >= "
                f"{fit_at_least}), at least one such beta ({source})")
    return "; ".join(parts) or "no runs with weight information", expected, bool(judged) and ok


def check_information_falls_with_beta(ctx, step: str, alpha: float = 0.01, source: str = "rotelab threshold"):
    """At every label corruption p, the information in the weights at the end falls as beta rises:
    Spearman's rank correlation of every run's information with -beta, one-sided p < alpha."""
    from ..measures.stats import rank_trend
    rows = final_rows(ctx.runs(step))
    parts, ok = [], bool(rows)
    for p in sorted({r["p"] for r in rows}):
        g = _by(rows, p=p)
        if len({r["beta"] for r in g}) < 3:
            parts.append(f"p {p:g}: fewer than 3 betas")
            ok = False
            continue
        rho, pval = rank_trend([-r["beta"] for r in g], [r["info_bits"] for r in g])
        ok &= rho > 0 and pval < alpha
        means = ", ".join(f"{b:g}: {np.mean([r['info_bits'] for r in _by(g, beta=b)]):,.0f}"
                          for b in sorted({r["beta"] for r in g}))
        parts.append(f"p {p:g}: Spearman {rho:.3f} with -beta over {len(g)} runs (one-sided p = {pval:.2g}); "
                     f"mean bits per beta {means}")
    return "; ".join(parts), f"falling in beta at every p: Spearman > 0 with -beta at one-sided p < {alpha} ({source})", ok


def report_information_against_corruption(ctx, step: str):
    """At each beta: the mean information per label corruption p, and its rank correlation with p over
    the runs (reported: Achille & Soatto's figure shows it rising with the fraction of random labels)."""
    from ..measures.stats import rank_trend
    rows = final_rows(ctx.runs(step))
    parts = []
    for beta in sorted({r["beta"] for r in rows}):
        g = _by(rows, beta=beta)
        if len({r["p"] for r in g}) < 3:
            continue
        rho, pval = rank_trend([r["p"] for r in g], [r["info_bits"] for r in g])
        means = ", ".join(f"p {p:g}: {np.mean([r['info_bits'] for r in _by(g, p=p)]):,.0f} (train "
                          f"{np.mean([r['train_acc'] for r in _by(g, p=p)]):.2f})" for p in sorted({r["p"] for r in g}))
        parts.append(f"beta {beta:g}: {means}; Spearman with p {rho:.2f} over {len(g)} runs (one-sided p = {pval:.2g})")
    return "; ".join(parts), "reported", None


def fig_weight_information(ctx, step: str) -> list[Path]:
    from ..plots import plot_weight_information
    rows = final_rows(ctx.runs(step))
    return [plot_weight_information(rows, ctx.figures / "weight_information.png")] if rows else []


FIGURES: dict[str, FigureFn] = {"weight_information": fig_weight_information}
CHECKS: dict[str, CheckFn] = {"random_needs_more_information": check_random_needs_more_information,
          "information_falls_with_beta": check_information_falls_with_beta,
          "information_against_corruption": report_information_against_corruption}
