"""What studies and reports of fit runs draw and check: Zhang et al.'s Fig. 1 and Table 1, the
oscillation of correct sets, and the fits behind them (fit's StudyParts and report section; the
learned-noise study's parts are in weight_information.py). Imports no torch."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..config import parse_corruption
from ..protocol import CheckFn, CheckResult, FigureFn
from ..store import RunDir, runs_in
from . import weight_information


def _steps_per_epoch(run: RunDir, cfg: dict) -> int | None:
    if run.examples_file.is_file():
        with np.load(run.examples_file) as z:
            if "n_train" in z.files:
                return math.ceil(int(z["n_train"]) / cfg["batch_size"])
    return None


def zhang_figures(runs: list[RunDir], folder: Path) -> list[tuple[str, Path]]:
    """Zhang et al. Fig. 1 (a), (b), (c) from the fit runs, grouped by corruption and level; seeds as
    95% intervals of the mean (bands: Student's t, the range of 2 seeds), runs as points."""
    from ..measures.stats import mean_band, mean_interval
    from ..plots import plt, save_figure
    fits = runs
    if not fits:
        return []
    out = []
    # (a) training loss against step, per corruption (kind and level), mean over seeds
    curves = defaultdict(list)
    for r in fits:
        cfg = r.read_config()
        spe = _steps_per_epoch(r, cfg)
        m = r.read_metrics()
        x = np.array([e["epoch"] for e in m], dtype=float) * (spe or 1)
        curves[cfg.get("corrupt", "none"), spe is not None].append((x, np.array([e["train_loss"] for e in m])))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pixel_styles = {"shuffled-pixels": ("C1", "--", "s"), "random-pixels": ("C3", "-.", "^"), "gaussian": ("k", ":", "D")}

    def order(item):
        kind, p = parse_corruption(item[0][0])
        return (kind not in ("none", "labels"), kind, p)
    for (spec, in_steps), series in sorted(curves.items(), key=order):
        kind, p = parse_corruption(spec)
        color, style, marker = pixel_styles.get(kind, (plt.cm.viridis(0.9 * p), "-", None))
        # every seed to its own end (runs stop when they fit): the mean over the seeds still running at
        # each step, and its 95% interval as a band; a dot where each seed ends
        n = max(len(s[0]) for s in series)
        stack = np.full((len(series), n), np.nan)
        for i, s in enumerate(series):
            stack[i, :len(s[1])] = s[1]
        x = max(series, key=lambda s: len(s[0]))[0]
        mean = np.nanmean(stack, axis=0)
        true = (kind, p) in (("none", 0.0), ("labels", 0.0))
        # true labels as a wide, light line: a curve that lies on it (shuffled pixels for an MLP) stays visible on top
        ax.plot(x, mean, color=color, ls=style, lw=5 if true else 1.4, alpha=0.45 if true else 1.0,
                marker=marker, markevery=max(1, n // 8), ms=5,
                label=f"{'true labels' if kind == 'none' or (kind == 'labels' and p == 0) else spec} ({len(series)} runs)")
        if len(series) > 1:
            ax.fill_between(x, *mean_band(stack), color=color, alpha=0.15, lw=0)
        for s in series:
            ax.plot(s[0][-1], s[1][-1], "o", color=color, ms=3.5)
    ax.plot([], [], "o", color="grey", ms=3.5, label="a run's last epoch (a run stops once it fits)")
    ax.fill_between([], [], [], color="grey", alpha=0.15, label="95% interval of the mean over seeds (t; range of 2)")
    ax.set(xlabel="step" if all(k[1] for k in curves) else "epoch", ylabel="training loss (mean over seeds)",
           title="(a) learning curves per corruption")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out.append(("Zhang et al. Fig. 1a: training loss", save_figure(fig, folder / "zhang_1a_loss.png")))
    # (b) convergence time and (c) test error against the label-corruption level
    by_level = defaultdict(list)
    classes = None
    for r in fits:
        cfg = r.read_config()
        kind, p = parse_corruption(cfg.get("corrupt", "none"))
        if kind in ("labels", "none"):
            status = r.read_status()
            last = r.read_metrics()[-1]
            by_level[p].append((status.get("fit_epoch"), 1 - last["test_acc"]))
            if classes is None and r.examples_file.is_file():
                classes = int(r.read_examples()["train_labels_true"].max()) + 1
    if by_level:
        levels = sorted(by_level)
        base = [v[0] for v in by_level.get(0.0, []) if v[0] is not None]
        relative = bool(base)   # Zhang et al. plot convergence time relative to true labels (p = 0)
        for key, idx, ylabel, title, name in (
                ("b", 0, "time to fit, relative to p = 0" if relative else "epochs to fit the training set",
                 "(b) convergence time", "zhang_1b_convergence.png"),
                ("c", 1, "test error", "(c) test error", "zhang_1c_test_error.png")):
            fig, ax = plt.subplots(figsize=(5.5, 4))
            xs, means, lo, hi = [], [], [], []
            for p in levels:
                vals = [float(got) for v in by_level[p] if (got := v[idx]) is not None]
                if key == "b" and relative:
                    vals = [v / np.mean(base) for v in vals]
                if vals:
                    xs.append(p)
                    means.append(np.mean(vals))
                    ci = mean_interval(vals)
                    lo.append(ci.lo)
                    hi.append(ci.hi)
                    ax.plot([p] * len(vals), vals, "o", color="C0", ms=3, alpha=0.35, mfc="none",
                            label="a run" if len(xs) == 1 else None)
            if xs:
                ax.plot(xs, means, "o-", color="C0", label="mean over seeds")
                ax.fill_between(xs, lo, hi, color="C0", alpha=0.18, lw=0, label="95% interval of the mean (t; range of 2)")
            if key == "c" and classes:
                ax.axhline(1 - 1 / classes, color="grey", ls="--", lw=1, label=f"chance (1 - 1/{classes})")
            ax.set(xlabel="label corruption p", ylabel=ylabel, title=title)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            out.append((f"Zhang et al. Fig. 1{key}: {ylabel}", save_figure(fig, folder / name)))
    return out


def report_section(runs, folder):
    return zhang_figures(runs, folder)


# -- what studies of fit runs draw and check (rotelab.reproduce runs them) ---------------------------

def fig_zhang(ctx, step: str) -> list[Path]:
    return [p for _, p in zhang_figures(ctx.runs(step), ctx.figures)]


def fig_oscillation(ctx, step: str, split: str = "train") -> list[Path]:
    from ..plots import plot_overlap_runs
    name = f"oscillation_{split}.png" if step == "runs" else f"oscillation_{step}_{split}.png"
    runs = ctx.runs(step)
    return [plot_overlap_runs(runs, ctx.figures / name, split)] if runs else []   # no runs done: no figure


def _label_level(run: RunDir) -> float | None:
    kind, p = parse_corruption(run.read_config().get("corrupt", "none"))
    return p if kind in ("labels", "none") else None


def check_all_fit(ctx, step: str):
    runs = ctx.runs(step)
    fit = [r for r in runs if r.read_status().get("fit_epoch")]
    slow = [r.path.name for r in runs if r not in fit]
    return CheckResult(f"{len(fit)} of {len(runs)}" + (f" (not fit: {', '.join(slow)})" if slow else ""), "all",
                       bool(runs) and len(fit) == len(runs), {"fit": len(fit), "runs": len(runs), "not_fit": slow})


def _by_level(ctx, step: str, value) -> dict[float, list[float]]:
    levels = {}
    for r in ctx.runs(step):
        p = _label_level(r)
        v = value(r)
        if p is not None and v is not None:
            levels.setdefault(p, []).append(v)
    return dict(sorted(levels.items()))


def _fit_epoch(r: RunDir):
    return r.read_status().get("fit_epoch")


def _test_error(r: RunDir):
    m = r.read_metrics()
    return 1 - m[-1]["test_acc"] if m else None


METRICS = {"fit_epoch": _fit_epoch, "test_error": _test_error}


def check_rises_with_p(ctx, step: str, metric: str, alpha: float = 0.01, source: str = "rotelab threshold"):
    """The trend over the runs, not over their means: Spearman's rank correlation of every run's value
    with its p, one-sided. Reported beside it: each p's mean with its 95% interval (t; its n), and the
    neighbouring p whose intervals overlap (where the seeds cannot tell two levels apart)."""
    from ..measures.stats import mean_interval, overlapping_neighbours, rank_trend
    levels = _by_level(ctx, step, METRICS[metric])
    xs = [p for p, v in levels.items() for _ in v]
    ys = [y for v in levels.values() for y in v]
    rho, pval = rank_trend(xs, ys) if len(levels) > 2 else (float("nan"), float("nan"))
    intervals = {p: mean_interval(v) for p, v in levels.items()}
    shown = ", ".join(f"p={p:g}: {ci}" for p, ci in intervals.items())
    overlaps = overlapping_neighbours({p: (ci.lo, ci.hi) for p, ci in intervals.items()})
    said = ("; intervals overlap at p = " + ", ".join(f"{a:g}-{b:g}" for a, b in overlaps)) if overlaps \
        else "; no two neighbouring intervals overlap"
    return CheckResult(f"Spearman {rho:.3f} over {len(ys)} runs (one-sided p = {pval:.2g}); mean [95% interval] per p: "
                       f"{shown}{said}", f"rising over the runs: Spearman > 0 at one-sided p < {alpha} ({source})",
                       bool(rho > 0 and pval < alpha),
                       {"spearman": rho, "p_value": pval, "runs": len(ys), "by_p": {f"{p:g}": ci for p, ci in intervals.items()},
                        "overlapping": [[a, b] for a, b in overlaps]})


def check_chance(ctx, step: str, p: float = 1.0, tolerance: float = 0.02):
    runs = [r for r in ctx.runs(step) if _label_level(r) == p]
    if not runs:
        return "no runs", "", False
    chance = 1 / runs[0].num_classes()
    acc = float(np.mean([1 - _test_error(r) for r in runs]))
    return CheckResult(f"test accuracy {acc:.4f} (mean of {len(runs)})", f"{chance:.3f} +- {tolerance}",
                       abs(acc - chance) <= tolerance, {"test_acc": acc, "runs": len(runs), "chance": chance})


def check_overlap_bounds(ctx, step: str, split: str = "train"):
    """intersection(t-1, t) <= acc(t-1), acc(t) <= union(t-1, t) at every epoch of every run; and the
    gap union - intersection (the fraction of examples whose correctness flips), its largest value and
    its value at the last epoch, reported."""
    bad, gaps, numbers = 0, [], {}
    for r in ctx.runs(step):
        m = r.read_metrics()
        for prev, cur in zip(m, m[1:]):
            i, u = cur.get(f"{split}_intersection"), cur.get(f"{split}_union")
            if i is None:
                continue
            bad += not (i - 1e-9 <= min(prev[f"{split}_acc"], cur[f"{split}_acc"])
                        and max(prev[f"{split}_acc"], cur[f"{split}_acc"]) <= u + 1e-9)
        g = [r[f"{split}_union"] - r[f"{split}_intersection"] for r in m if r.get(f"{split}_union") is not None]
        peak = int(np.argmax(g))
        gaps.append(f"{max(g):.3f} at epoch {m[peak + 1]['epoch']}, {g[-1]:.3f} at the end")
        numbers[r.path.name] = {"largest_gap": max(g), "at_epoch": m[peak + 1]["epoch"], "last_gap": g[-1]}
    # reported, never judged: the bounds hold by set theory for any correctness bits
    return CheckResult(f"{bad} epochs out of bounds; union - intersection: {'; '.join(gaps)}",
                       "reported (holds by definition)", None, {"out_of_bounds": bad, "runs": numbers})


def check_oscillation_gap(ctx, step: str, split: str = "train", lo: float = 0.2, hi: float = 0.8,
                          at_least: float = 0.1, after_fit_at_most: float = 0.02, judge_after_fit: bool = True,
                          source: str = "rotelab threshold"):
    """While accuracy is between `lo` and `hi` (both epochs), the median fraction of examples whose
    correctness flips between consecutive epochs (union - intersection) is at least `at_least`; after
    the fit (from the first epoch at accuracy 1 on) it never exceeds `after_fit_at_most`, judged only
    with `judge_after_fit` (a run that stays fit has nothing left to flip). Every run."""
    parts, ok, numbers = [], True, {}
    for r in ctx.runs(step):
        m = r.read_metrics()
        during, after, fit = [], [], None
        for prev, cur in zip(m, m[1:]):
            if cur.get(f"{split}_union") is None:
                continue
            gap = cur[f"{split}_union"] - cur[f"{split}_intersection"]
            if fit is not None:
                after.append(gap)
            elif lo <= prev[f"{split}_acc"] <= hi and lo <= cur[f"{split}_acc"] <= hi:
                during.append(gap)
            if fit is None and cur[f"{split}_acc"] >= 1.0:
                fit = cur["epoch"]
        med = float(np.median(during)) if during else float("nan")
        worst = max(after) if after else float("nan")
        ok &= bool(during) and med >= at_least and (not judge_after_fit or not after or worst <= after_fit_at_most)
        numbers[r.path.name] = {"median_gap": med, "epochs_during": len(during), "fit_epoch": fit,
                                "largest_gap_after_fit": worst, "epochs_after": len(after)}
        parts.append(f"{r.path.name}: median gap {med:.3f} over {len(during)} epochs at accuracy {lo}-{hi}; "
                     + (f"fit at epoch {fit}, largest gap after it {worst:.3f} ({len(after)} epochs)" if fit
                        else "never fit"))
    after_fit = f"<= {after_fit_at_most} after the fit" if judge_after_fit else \
        "after the fit reported (it follows from staying fit)"
    return CheckResult("; ".join(parts), f"median >= {at_least} while accuracy in [{lo}, {hi}], {after_fit} ({source})",
                       ok, numbers)


def check_gap_falls_at_lr_step(ctx, step: str, split: str = "train", before: int = 5, after: tuple = (2, 6),
                               factor: float = 0.5, source: str = "rotelab threshold"):
    """At the learning rate's first step the oscillation settles: in every run the median flip fraction
    (union - intersection) over epochs `after` past the step is at most `factor` times its median over
    the `before` epochs up to it."""
    from ..measures.curves import lr_drops
    parts, ok, numbers = [], True, {}
    for r in ctx.runs(step):
        m = [x for x in r.read_metrics() if x.get(f"{split}_union") is not None]
        drop = next(iter(lr_drops(m)), None)
        if drop is None:
            ok = False
            parts.append(f"{r.path.name}: the lr never steps")
            continue
        gap = {x["epoch"]: x[f"{split}_union"] - x[f"{split}_intersection"] for x in m}
        pre = [gap[e] for e in range(drop - before, drop) if e in gap]
        post = [gap[e] for e in range(drop + after[0], drop + after[1] + 1) if e in gap]
        g0, g1 = float(np.median(pre)), float(np.median(post)) if post else float("nan")
        ok &= bool(post) and g1 <= factor * g0
        numbers[r.path.name] = {"lr_step_epoch": drop, "median_gap_before": g0, "median_gap_after": g1}
        parts.append(f"{r.path.name}: lr steps at epoch {drop}; median gap {g0:.3f} before, {g1:.3f} after")
    return CheckResult("; ".join(parts), f"the gap after the step <= {factor} x the gap before it ({source})",
                       ok and bool(parts), numbers)


def report_final_train_acc(ctx, step: str):
    """Each group's train accuracy at its last epoch (mean, its 95% interval with its kind and n, and
    the range over its runs), reported."""
    from ..measures.stats import mean_interval
    parts, numbers = [], {}
    for g in ctx.groups(step):
        accs = [RunDir(d).read_metrics()[-1]["train_acc"] for d in runs_in(g)]
        numbers[g.name] = {"train_acc": mean_interval(accs), "runs": accs}
        parts.append(f"{g.name}: {mean_interval(accs)}; runs {min(accs):.3f}-{max(accs):.3f}")
    return CheckResult("; ".join(parts), "reported", None, numbers)


def check_final_train_acc(ctx, step: str, group: str, at_least: float = 0.99, reached: bool = False,
                          source: str = "rotelab threshold"):
    """Every run of a group ends with train accuracy >= at_least; with `reached`, every run gets
    there at some epoch (it memorized), and runs that ended below are named with where they were."""
    runs = ctx.group_runs(step, group)
    if not runs:
        return f"no runs in {group}", "", False
    series = [[m["train_acc"] for m in r.read_metrics() if m.get("train_acc") is not None] for r in runs]
    final = [a[-1] for a in series]
    if not reached:
        return CheckResult(f"{group}: train accuracy {', '.join(f'{a:.4f}' for a in final)} at the last epoch",
                           f">= {at_least} ({source})", min(final) >= at_least, {"final_train_acc": final})
    peak = [max(a) for a in series]
    fell = [f"seed {r.read_config().get('seed')} reached {p:.4f} and ended at {f:.4f}"
            for r, p, f in zip(runs, peak, final) if p >= at_least > f]
    value = (f"{group}: {sum(p >= at_least for p in peak)} of {len(runs)} runs reach {at_least} (best "
             f"{', '.join(f'{p:.4f}' for p in peak)}); {sum(f >= at_least for f in final)} of {len(runs)} end there"
             + (f" ({'; '.join(fell)})" if fell else ""))
    return CheckResult(value, f"every run reaches >= {at_least} at some epoch ({source})", min(peak) >= at_least,
                       {"best_train_acc": peak, "final_train_acc": final})


def check_table(ctx, step: str, expected: dict, tolerance: float = 0.03, train_at_least: float = 0.99,
                judge_test: bool = True):
    """Final train and test accuracy of each point against a table of the paper's numbers; the test
    accuracy only reported without `judge_test` (random labels: at chance by construction)."""
    rows, ok, numbers = [], True, {}
    for g in ctx.groups(step):
        want = expected.get(g.name)
        if want is None:
            continue
        runs = [RunDir(d) for d in runs_in(g)]
        m = [r.read_metrics()[-1] for r in runs]
        train, test = float(np.mean([x["train_acc"] for x in m])), float(np.mean([x["test_acc"] for x in m]))
        ok &= train >= train_at_least and (not judge_test or abs(test - want) <= tolerance)
        rows.append(f"{g.name}: train {train:.4f}, test {test:.4f} (paper {want:.4f})")
        numbers[g.name] = {"train_acc": train, "test_acc": test, "paper_test_acc": want, "runs": len(m)}
    judged = f"test within {tolerance} of the paper" if judge_test else "test reported (at chance by construction)"
    return CheckResult("; ".join(rows), f"train >= {train_at_least}, {judged}", ok and bool(rows), numbers)


def check_parameters(ctx, step: str, expected: dict, source: str = "paper"):
    """Each point's parameter count (recorded by the run) equals the paper's."""
    rows, ok, numbers = [], True, {}
    for g in ctx.groups(step):
        want = expected.get(g.name)
        runs = [RunDir(d) for d in runs_in(g)]
        if want is None or not runs:
            continue
        have = runs[0].read_environment().get("parameters")
        ok &= have == want
        numbers[g.name] = {"parameters": have, "paper": want}
        rows.append(f"{g.name}: {have:,}" if have is not None else f"{g.name}: not recorded")
    return CheckResult("; ".join(rows), "; ".join(f"{k}: {v:,}" for k, v in expected.items()) + f" ({source})",
                       ok and bool(rows), numbers)


# -- Feldman & Zhang's marginal utility: remove the most memorized examples, or as many random ones --

def removal_table(runs) -> dict:
    """(kind, K) -> the final test accuracies of the runs that removed K examples that way; K = 0 (none
    removed) is its own row under both kinds."""
    from ..spec import parse_remove
    out: dict = {}
    for r in runs:
        cfg, final = r.read_config(), r.read_status().get("final", {})
        if final.get("test_acc") is None:
            continue
        if cfg.get("remove"):
            kind, k, _ = parse_remove(cfg["remove"])
            out.setdefault((kind, k), []).append(final["test_acc"])
        else:
            for kind in ("random", "mem"):
                out.setdefault((kind, 0), []).append(final["test_acc"])
    return out


def fig_removal(ctx, step: str) -> list[Path]:
    from ..measures.stats import mean_interval
    from ..plots import plot_removal
    table = removal_table(ctx.runs(step))
    if not table:
        return []
    rows = {key: mean_interval(v) for key, v in table.items()}
    return [plot_removal(rows, ctx.figures / f"{step}.png")]


def check_removal_costs_more(ctx, step: str, alpha: float = 0.05, source: str = "Feldman & Zhang (2020), Sec. 4"):
    """At the largest K: removing the K most memorized examples lowers test accuracy more than removing
    K random ones (Welch's one-sided t test over the retrainings, p < alpha); every K reported."""
    from scipy.stats import ttest_ind
    from ..measures.stats import mean_interval
    table = removal_table(ctx.runs(step))
    ks = sorted({k for kind, k in table if k > 0 and ("mem", k) in table and ("random", k) in table})
    if not ks:
        return "no K with both arms done", f"removing the most memorized costs more ({source})", None
    parts, verdict, numbers = [], None, {}
    for k in ks:
        mem, rnd = table["mem", k], table["random", k]
        a, b = mean_interval(rnd), mean_interval(mem)
        pval = float(ttest_ind(rnd, mem, equal_var=False, alternative="greater").pvalue) if min(len(mem), len(rnd)) > 1 \
            else float("nan")
        parts.append(f"K = {k}: random {a.mean:.4f} ({a.lo:.4f}-{a.hi:.4f}, n = {a.n}), most memorized {b.mean:.4f} "
                     f"({b.lo:.4f}-{b.hi:.4f}, n = {b.n}); difference {a.mean - b.mean:+.4f}, Welch one-sided p = {pval:.2g}")
        numbers[str(k)] = {"random": a, "mem": b, "difference": a.mean - b.mean, "welch_p_one_sided": pval}
        if k == ks[-1]:
            verdict = bool(a.mean > b.mean and pval < alpha)
    base = table.get(("mem", 0))
    if base:
        i = mean_interval(base)
        parts.insert(0, f"nothing removed {i.mean:.4f} ({i.lo:.4f}-{i.hi:.4f}, n = {i.n})")
        numbers["0"] = {"none_removed": i}
    return CheckResult("; ".join(parts), (f"at the largest K the most memorized cost more test accuracy than as many "
                                          f"random examples, Welch one-sided p < {alpha} ({source})"), verdict, numbers)


FIGURES: dict[str, FigureFn] = {"removal": fig_removal, "zhang_fig1": fig_zhang, "oscillation": fig_oscillation, **weight_information.FIGURES}
CHECKS: dict[str, CheckFn] = {"removal_costs_more": check_removal_costs_more, "oscillation_gap": check_oscillation_gap, "all_fit": check_all_fit, "rises_with_p": check_rises_with_p,
          "chance": check_chance, "overlap_bounds": check_overlap_bounds, "final_train_acc": report_final_train_acc,
          "train_acc_at_least": check_final_train_acc, "table": check_table, "parameters": check_parameters,
          "gap_falls_at_lr_step": check_gap_falls_at_lr_step, **weight_information.CHECKS}
