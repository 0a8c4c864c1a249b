"""The learned-noise study's figure and checks (Achille & Soatto 2018): fit runs with learned
log-normal weight noise trained on cross-entropy + beta * KL / N, and the information in the weights
at the end against beta, the label corruption p, the training set size N and the fit. Part of fit's
StudyParts; imports no torch.

The information is the KL to a proper prior (`--info-prior init`: the law of each layer's initial
weights), in nats per training example. Only that measure is a count: under the improper log-uniform
prior the KL is defined up to a constant, so its ratios mean nothing and its zero is a convention.
"Fit" is said of the accuracy under the noise (`train_acc_noisy`: one draw of the weights, on the
labels trained on), the quantity Achille & Soatto's loss charges; the clean pass (the weights' means)
is reported beside it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import parse_corruption
from ..protocol import CheckFn, CheckResult, FigureFn

LN2 = math.log(2)


def settled(m: list[dict], rel: float = 0.05, abs_nats: float = 0.05, acc: float = 0.02) -> bool:
    """The plateau criterion: over the last quarter of the epochs the information changed by less
    than `rel` of its value or less than `abs_nats` nats per example, and the accuracy under noise by
    less than `acc`."""
    last, back = m[-1], m[max(0, int(round(0.75 * len(m))) - 1)]
    n = last["_n"]
    a, b = back["kl_init_bits"] * LN2 / n, last["kl_init_bits"] * LN2 / n
    return (abs(b - a) <= rel * max(a, b) or abs(b - a) <= abs_nats) and \
        abs(last["train_acc_noisy"] - back["train_acc_noisy"]) <= acc


def final_rows(runs) -> list[dict]:
    """One row per run trained with the proper prior: beta, p, N, seed, and at the last epoch the
    information in the weights (nats in all, `nats` per training example, per layer), the train
    accuracy under noise and clean, the test accuracy, and whether it settled (`settled`)."""
    rows = []
    for r in runs:
        cfg, m = r.read_config(), r.read_metrics()
        kind, p = parse_corruption(cfg.get("corrupt", "none"))
        if not m or "train_examples" not in m[-1] or kind not in ("labels", "none"):
            continue
        m = [x for x in m if "train_acc_noisy" in x]
        last = m[-1]
        n = int(last["train_examples"])
        for x in m:
            x["_n"] = n
        layers = {k.split("/", 1)[1]: v * LN2 / n for k, v in last.items() if k.startswith("kl_init_bits/")}
        rows.append({"run": r.path.name, "beta": float(cfg["info_weight"]), "p": p, "N": n, "seed": cfg["seed"],
                     "classes": int(last["classes"]),
                     "info_nats": last["kl_init_bits"] * LN2, "nats": last["kl_init_bits"] * LN2 / n,
                     "layer_nats": layers, "train_acc_noisy": float(last["train_acc_noisy"]),
                     "train_acc": float(last["train_acc"]), "test_acc": float(last["test_acc"]),
                     "epochs": last["epoch"], "settled": settled(m)})
    return rows


def study_rows(ctx, step: str) -> list[dict]:
    """final_rows of a step's runs, read once for all of a drawing's checks and its figure."""
    runs = ctx.runs(step)
    return ctx.once(("learned-noise rows", *(str(r.path) for r in runs)), lambda: final_rows(runs))


def _by(rows, **where) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def fano_nats(acc: float, classes: int) -> float:
    """Fano's lower bound on the information (nats) a predictor needs about one uniformly random label
    among `classes` to be right with probability `acc`: ln K - h(acc) - (1 - acc) ln(K - 1), 0 at or
    below chance (Cover & Thomas, Elements of Information Theory, Thm 2.10.1)."""
    if acc <= 1 / classes:
        return 0.0
    e = 1 - acc
    h = -sum(q * math.log(q) for q in (acc, e) if q > 0)
    return math.log(classes) - h - e * math.log(classes - 1)


def check_information_bounds_the_fit(ctx, step: str, source: str = "Fano's inequality"):
    """The measure moves where the fit does: every random-label run (p = 1) holds at least the
    information its fit under noise needs, N times Fano's bound at its noisy train accuracy (the KL to
    a fixed prior bounds I(w; D) in expectation over training sets, and I(w; D) >= I(w; labels | x)).
    Judged on every random-label run; the least ratio of held to needed is the value."""
    rows = _by(study_rows(ctx, step), p=1.0)
    numbers, parts, ok = [], [], bool(rows)
    for r in sorted(rows, key=lambda r: (r["N"], r["beta"], r["seed"])):
        need = r["N"] * fano_nats(r["train_acc_noisy"], r["classes"])
        held = r["info_nats"]
        ok &= held >= need
        numbers.append({"N": r["N"], "beta": r["beta"], "seed": r["seed"], "held_nats": held, "needed_nats": need,
                        "train_acc_noisy": r["train_acc_noisy"]})
    for key in sorted({(x["N"], x["beta"]) for x in numbers}):
        g = [x for x in numbers if (x["N"], x["beta"]) == key]
        parts.append(f"N {key[0]} beta {key[1]:g}: held {np.mean([x['held_nats'] for x in g]):,.0f} nats, needed "
                     f"{np.mean([x['needed_nats'] for x in g]):,.0f} (noisy train {np.mean([x['train_acc_noisy'] for x in g]):.3f}, "
                     f"n = {len(g)})")
    fits = [x for x in numbers if x["needed_nats"] > 0]
    least = min((x["held_nats"] / x["needed_nats"] for x in fits), default=float("nan"))
    said = f"least held/needed {least:.2f} over {len(fits)} runs above chance; " + "; ".join(parts)
    return CheckResult(said, f"held >= needed in every random-label run ({source})", ok,
                       {"least_ratio": least, "runs": numbers})


def transition_beta(betas, accs, chance: float) -> float:
    """Where the accuracy first falls below halfway between chance and its value at the smallest beta,
    interpolated in log beta; inf where it never does."""
    betas, accs = np.asarray(betas, float), np.asarray(accs, float)
    half = (chance + accs[0]) / 2
    for i in range(1, len(betas)):
        if accs[i] < half:
            lo, hi = np.log(betas[i - 1]), np.log(betas[i])
            t = (accs[i - 1] - half) / (accs[i - 1] - accs[i]) if accs[i - 1] != accs[i] else 0.0
            return float(np.exp(lo + t * (hi - lo)))
    return math.inf


def _curve(rows, key="train_acc_noisy"):
    betas = sorted({r["beta"] for r in rows})
    return betas, [float(np.mean([r[key] for r in _by(rows, beta=b)])) for b in betas]


def check_transition_near_one(ctx, step: str, within: float = 3.0, fit_at_least: float = 0.5, source: str = "paper"):
    """Achille & Soatto's phase transition: random labels are fit (under noise) below beta = 1 and not
    above, whatever N. Per N, the beta where the random-label runs' mean noisy train accuracy falls
    halfway from its value at the smallest beta to chance (log-interpolated); judged: within a
    factor `within` of 1 at every N, where the smallest beta fits (noisy train accuracy >= fit_at_least)."""
    rows = _by(study_rows(ctx, step), p=1.0)
    parts, numbers, ok = [], {}, bool(rows)
    for n in sorted({r["N"] for r in rows}):
        g = _by(rows, N=n)
        betas, accs = _curve(g)
        _, clean = _curve(g, "train_acc")
        b = transition_beta(betas, accs, 1 / g[0]["classes"])
        fits = accs[0] >= fit_at_least   # a transition needs a fit to give way
        ok &= fits and 1 / within <= b <= within
        numbers[str(n)] = {"transition_beta": b, "betas": betas, "train_acc_noisy": accs, "train_acc": clean,
                           "runs_per_beta": len(g) // len(betas)}
        parts.append(f"N {n}: transition at beta {b:.3g}" + ("" if fits else " (no fit at the smallest beta)")
                     + "; mean noisy train accuracy per beta "
                     + ", ".join(f"{x:g}: {a:.2f}" for x, a in zip(betas, accs))
                     + " (clean " + ", ".join(f"{a:.2f}" for a in clean) + f"; n = {len(g) // len(betas)} a beta)")
    return CheckResult("; ".join(parts), f"the random-label fit gives way within a factor {within:g} of beta = 1 "
                       f"at every N ({source})", ok, numbers)


def _difference(rows, n: int, beta: float):
    """Random-minus-true information per example (nats): the mean difference and Welch's t 95%
    interval over the runs (n a side)."""
    from scipy.stats import ttest_ind
    t, r = [x["nats"] for x in _by(rows, N=n, beta=beta, p=0.0)], [x["nats"] for x in _by(rows, N=n, beta=beta, p=1.0)]
    if not t or not r:
        return None
    d = float(np.mean(r) - np.mean(t))
    if len(t) < 2 or len(r) < 2:
        return {"mean": d, "lo": d, "hi": d, "n": min(len(t), len(r)), "kind": "one run a side"}
    if np.ptp(t) == 0 and np.ptp(r) == 0:   # no spread on either side: no t interval, the difference is exact
        lo = hi = d
    else:
        lo, hi = (float(v) for v in ttest_ind(r, t, equal_var=False).confidence_interval(0.95))
    return {"mean": d, "lo": lo, "hi": hi, "n": min(len(t), len(r)), "kind": "Welch t 95%"}


def check_nats_per_example(ctx, step: str, paper_nats: float = 3.0, within: float = 3.0, fit_at_least: float = 0.5,
                           source: str = "paper"):
    """Random minus true labels, the information per training example (nats) at each N and beta,
    beside ln K (one label's entropy) and Achille & Soatto's figure (about `paper_nats` per sample).
    Judged at each N's largest beta where the random labels are still fit under noise (mean noisy
    train accuracy >= fit_at_least): within a factor `within` of the paper's figure. Below it a
    small beta leaves the weights more than the labels need; above it nothing is memorized."""
    rows = study_rows(ctx, step)
    parts, numbers, judged, ok = [], {}, 0, True
    for n in sorted({r["N"] for r in rows}):
        g = _by(rows, N=n)
        fit = [b for b in sorted({r["beta"] for r in g})
               if _by(g, beta=b, p=1.0) and np.mean([r["train_acc_noisy"] for r in _by(g, beta=b, p=1.0)]) >= fit_at_least]
        per = {}
        for b in sorted({r["beta"] for r in g}):
            d = _difference(g, n, b)
            if d is not None:
                per[f"{b:g}"] = d
        at = fit[-1] if fit else None
        numbers[str(n)] = {"differences": per, "judged_beta": at}
        said = f"N {n}: " + ", ".join(f"beta {b}: {d['mean']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]" for b, d in per.items())
        if at is not None and f"{at:g}" in per:
            d = per[f"{at:g}"]["mean"]
            judged += 1
            ok &= paper_nats / within <= d <= paper_nats * within
            said += f"; judged at beta {at:g} (the largest where random labels are fit): {d:.2f} nats"
        else:
            said += "; random labels fit at no beta: not judged"
        parts.append(said)
    k = rows[0]["classes"] if rows else 10
    said = "; ".join(parts) + f" (Welch t 95% over seeds; ln {k} = {math.log(k):.2f} nats)"
    return CheckResult(said, f"within a factor {within:g} of about {paper_nats:g} nats per example at the largest beta "
                       f"where random labels are fit, at every N ({source})", bool(judged) and ok,
                       {"by_N": numbers, "ln_K": math.log(k), "paper_nats": paper_nats})


def report_information_falls_with_beta(ctx, step: str):
    """At each N and p, Spearman's rank correlation of the information with -beta over the runs:
    reported, not judged (it follows from the objective at its minimizers)."""
    from ..measures.stats import rank_trend
    rows = study_rows(ctx, step)
    parts, numbers = [], {}
    for n in sorted({r["N"] for r in rows}):
        for p in sorted({r["p"] for r in _by(rows, N=n)}):
            g = _by(rows, N=n, p=p)
            if len({r["beta"] for r in g}) < 3:
                continue
            rho, pval = rank_trend([-r["beta"] for r in g], [r["nats"] for r in g])
            betas, means = _curve(g, "nats")
            numbers[f"N {n} p {p:g}"] = {"spearman": rho, "p_value": pval, "runs": len(g), "betas": betas,
                                         "nats": means}
            parts.append(f"N {n} p {p:g}: Spearman {rho:.2f} over {len(g)} runs (one-sided p = {pval:.2g}); "
                         "nats per example " + ", ".join(f"{b:g}: {x:.2f}" for b, x in zip(betas, means)))
    return CheckResult("; ".join(parts), "reported", None, numbers)


def check_runs_settled(ctx, step: str):
    """Every run met the plateau criterion (`settled`) at its last epoch."""
    rows = study_rows(ctx, step)
    not_settled = [r["run"] for r in rows if not r["settled"]]
    said = (f"{len(rows) - len(not_settled)} of {len(rows)} runs settled"
            + (f"; not: {', '.join(not_settled[:5])}" + (f" and {len(not_settled) - 5} more" if len(not_settled) > 5 else "")
               if not_settled else ""))
    return CheckResult(said, "every run: over its last quarter of epochs the information changed by < 5% or "
                       "< 0.05 nats per example, the noisy train accuracy by < 0.02 (rotelab criterion)",
                       bool(rows) and not not_settled, {"runs": len(rows), "not_settled": not_settled})


def fig_weight_information(ctx, step: str) -> list[Path]:
    from ..plots import plot_weight_information
    rows = study_rows(ctx, step)
    differences = {n: [(b, d["mean"], d["lo"], d["hi"], d["n"]) for b in sorted({r["beta"] for r in rows})
                       if (d := _difference(rows, n, b)) is not None] for n in sorted({r["N"] for r in rows})}
    return [plot_weight_information(rows, differences, ctx.figures / "weight_information.png")] if rows else []


FIGURES: dict[str, FigureFn] = {"weight_information": fig_weight_information}
CHECKS: dict[str, CheckFn] = {"information_bounds_the_fit": check_information_bounds_the_fit,
                              "transition_near_one": check_transition_near_one,
                              "nats_per_example": check_nats_per_example,
                              "information_falls_with_beta": report_information_falls_with_beta,
                              "runs_settled": check_runs_settled}
