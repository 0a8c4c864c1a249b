"""What the information-plane studies draw and check from infoplane runs: the planes, the Memorizing
IB figure, the bounds every estimate obeys, the output layer's I(T;Y), the fall of I(X;T) (with
saturation and diverged runs said), and the time scales across N. Part of infoplane's StudyParts
(read by name: infoplane does not import it); imports no torch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..protocol import CheckFn, CheckResult, FigureFn
from ..store import RunDir, runs_in


def fig_infoplane(ctx, step: str) -> list[Path]:
    """The information planes and I(X;T) against epoch of a step's groups, side by side; files named
    after the step (a study may hold several)."""
    from ..plots import plot_infoplane
    out = []
    for png in plot_infoplane(ctx.groups(step), ctx.figures / step):
        out.append(ctx.copy(png, ctx.figures / f"{step}_{png.name}"))
    return out


def divergence(run: RunDir) -> dict | None:
    """Where a run that had fitted lost it: its train accuracy ends below half its peak (a late
    instability such as Adam's with a summed loss; its network then outputs nearly a constant). The
    information such a run's layers hold afterwards falls because the network stopped working, which
    is not compression. Returns the peak, its epoch, the first later epoch below half of it and the
    final accuracy; None for a run that kept what it fitted."""
    acc = [(m["epoch"], m["train_acc"]) for m in run.read_metrics() if m.get("train_acc") is not None]
    if not acc:
        return None
    peak_epoch, peak = max(acc, key=lambda ea: ea[1])
    if acc[-1][1] >= peak / 2:
        return None
    lost = next(e for e, a in acc if e > peak_epoch and a < peak / 2)
    return {"seed": run.read_config().get("seed"), "peak": peak, "peak_epoch": peak_epoch, "lost_at": lost,
            "final": acc[-1][1]}


def kept_runs(runs: list[RunDir]) -> tuple[list[RunDir], list[dict]]:
    """The runs that kept what they fitted, and a divergence record for each one left out."""
    out = [(r, divergence(r)) for r in runs]
    return [r for r, d in out if d is None], [d for _, d in out if d is not None]


def said_left_out(gone: list[dict]) -> str:
    return "".join(f"; seed {d['seed']} left out: train accuracy {d['peak']:.3f} at epoch {d['peak_epoch']}, "
                   f"below half of it from epoch {d['lost_at']}, {d['final']:.3f} at the end (diverged)" for d in gone)


def info_table(runs: list[RunDir], split: str = "train", estimator: str = "binning-size") -> tuple[dict, int]:
    """layer -> (epochs, I(X;T), I(T;Y)) of one split and estimator, means over runs at the epochs
    they share; and N, the size of the set it was measured on."""
    per: dict = {}
    n = 0
    for run in runs:
        for r in run.read_info():
            if r.get("split", "train") == split and r["estimator"] == estimator:
                per.setdefault(r["layer"], {}).setdefault(r["epoch"], []).append((r["ixt"], r["ity"]))
                n = r.get("n", n)
    table = {}
    for layer, by_epoch in per.items():
        epochs = np.array(sorted(e for e, v in by_epoch.items() if len(v) == len(runs)))
        means = np.array([np.mean(by_epoch[e], axis=0) for e in epochs])
        table[layer] = (epochs, means[:, 0], means[:, 1])
    return table, n


def fig_memorizing_ib(ctx, step: str, panels: dict, split: str = "train",
                      estimator: str = "binning-size", stem: str = "memorizing_ib") -> list[Path]:
    """The Memorizing IB study's figure: `panels` maps a title to a group (a sweep point) of the step;
    drawn to FIGURES/STEM_SPLIT[_ESTIMATOR].png."""
    from ..plots import plot_memorizing_ib
    by_name = {g.name: g for g in ctx.groups(step)}
    drawn, ceiling, widths = [], None, None
    for title, group in panels.items():
        if group in by_name:
            runs, gone = kept_runs([RunDir(d) for d in runs_in(by_name[group])])
            table, n = info_table(runs, split, estimator)
            left = f", {len(gone)} diverged left out" if gone else ""
            drawn.append((f"{title}, {split} set\n({len(runs)} run{'s' * (len(runs) != 1)}{left})", table))   # two lines: panels sit side by side
            from ..plots import hidden_widths
            ceiling, widths = math.log2(n), hidden_widths(runs[0].read_config())
    if not drawn or ceiling is None:
        return []
    name = f"{stem}_{split}" + ("" if estimator == "binning-size" else f"_{estimator}")
    return [plot_memorizing_ib(drawn, ceiling, ctx.figures / f"{name}.png", widths=widths)]


def check_info_bounds(ctx, step: str):
    """I(X;T) <= H(X) <= log2 N and I(T;Y) <= min(I(X;T), H(Y)) for every binning record (the data
    processing inequality holds exactly for the plug-in estimates); KDE upper >= lower."""
    bad, n = 0, 0
    for run in ctx.runs(step):
        rows = run.read_info()
        ex = run.read_examples()
        labels = ex["train_labels_used"]
        hy = float(-sum(q * math.log2(q) for q in np.bincount(labels) / len(labels) if q > 0))
        cfg = run.read_config()
        n_eval = cfg.get("eval_size") or (4096 if cfg.get("dataset") == "tishby" else 2000)
        pairs = {}
        for r in rows:
            n += 1
            if r["estimator"].startswith("binning"):
                bad += r["ixt"] > math.log2(n_eval) + 1e-9 or r["ity"] > r["ixt"] + 1e-9 or r["ity"] > hy + 0.05
            pairs.setdefault((r["epoch"], r["layer"]), {})[r["estimator"]] = r
        for p in pairs.values():
            if "kde-upper" in p and "kde-lower" in p:
                bad += p["kde-upper"]["ixt"] < p["kde-lower"]["ixt"] - 1e-9
    # reported, never judged: plug-in binning estimates satisfy these bounds identically
    return CheckResult(f"{bad} of {n} records out of bounds", "reported (plug-in estimates satisfy the bounds identically)",
                       None, {"out_of_bounds": bad, "records": n})


def _final_layers(rows: list[dict], estimator: str, split: str = "train") -> dict[int, list[tuple[int, float, float]]]:
    """Per layer, (epoch, I(X;T), I(T;Y)) of one estimator on one split, from a run's info records
    (records of a run captured on a single set, split "all", count as every split's)."""
    out = {}
    for r in rows:
        if r["estimator"] == estimator and r.get("split", "all") in (split, "all"):
            out.setdefault(r["layer"], []).append((r["epoch"], r["ixt"], r["ity"]))
    return out


def check_output_ity(ctx, step: str, group: str, at_least: float = 0.9, estimator: str = "binning",
                     source: str = "rotelab threshold"):
    """The output layer's I(T;Y) at the last capture, mean over the group's seeds (with its 95%
    interval, its kind and n), at least `at_least` bits."""
    from ..measures.stats import mean_interval
    vals = []
    for g in ctx.groups(step):
        if g.name != group:
            continue
        for d in runs_in(g):
            layers = _final_layers(RunDir(d).read_info(), estimator)
            vals.append(sorted(layers[max(layers)])[-1][2])
    if not vals:
        return f"no runs in {group}", "", False
    return CheckResult(f"{mean_interval(vals)} bits (mean over seeds; min {min(vals):.3f})",
                       f">= {at_least} bits, mean over seeds ({source})", bool(np.mean(vals) >= at_least),
                       {"ity_bits": mean_interval(vals), "runs": vals})


def report_ixt_fall(ctx, step: str, estimator: str | None = None):
    """How far the last hidden layers' I(X;T) falls from its peak by the last epoch, on the mean curve
    over each group's runs (reported, not judged); by default with the group's binning estimator
    (fixed edges, else fixed bin size). A layer whose mean curve ends within 0.1 bit of the ceiling
    log2 N is said to be saturated: the estimate cannot show compression there, which is not finding none."""
    from ..measures.information import compression
    parts, numbers = [], {}
    for g in ctx.groups(step):
        runs, gone = kept_runs([RunDir(d) for d in runs_in(g)])
        records = runs[0].read_info() if runs else []
        names = {r["estimator"] for r in records}
        est = estimator or next((e for e in ("binning", "binning-size") if e in names), "binning")
        splits = {r.get("split", "train") for r in records}   # the 12-bit task captures all its patterns
        table, n = info_table(runs, "train" if "train" in splits or not splits else sorted(splits)[0], est)
        if not table:
            parts.append(f"{g.name}: no {est} records")
            continue
        ceiling = math.log2(n)
        said = []
        for layer in sorted(table)[-3:-1]:   # the last two hidden layers
            e, ixt, _ = table[layer]
            c = compression(e, ixt, ceiling)
            numbers.setdefault(g.name, {"estimator": est, "runs": len(runs), "ceiling": ceiling})[f"layer {layer + 1}"] = c
            said.append(f"layer {layer + 1} saturated at the ceiling log2 N = {ceiling:.2f} from epoch "
                        f"{c['at_ceiling_from']} (the estimate cannot show compression)" if c["saturated"]
                        else f"layer {layer + 1} falls {c['fall']:.2f} bits from its peak")
        parts.append(f"{g.name} ({est}, mean curve of {len(runs)} run{'s' * (len(runs) != 1)}): " + ", ".join(said)
                     + said_left_out(gone))
    return CheckResult("; ".join(parts), "reported", None, numbers)


def fit_epochs(runs: list[RunDir]) -> str:
    """Each run's first epoch with train accuracy >= 0.99 ("never" where it has none), comma-separated."""
    fits = [next((m["epoch"] for m in r.read_metrics() if (m.get("train_acc") or 0) >= 0.99), None) for r in runs]
    return ", ".join("never" if e is None else str(e) for e in fits)


def check_compression(ctx, step: str, group: str, layers: int = 3, at_least: float = 1.0, need: int = 2,
                      split: str = "train", estimator: str = "binning-size", min_runs: int = 3,
                      source: str = "rotelab threshold"):
    """On the mean curve over a group's runs, at least `need` of the last `layers` layers fall by at
    least `at_least` bits of I(X;T) from their peak by the last capture; judged from `min_runs` runs
    (fewer: reported). A layer whose mean curve ends within 0.1 bit of the ceiling log2 N is reported
    as saturated (the estimator cannot see compression there), not as not compressing. Beside each
    fall, the range of the runs' own falls (each biased upward by its noise). A run that diverged
    (`divergence`) is left out and named: its information falls because its network stopped working."""
    from ..measures.information import compression
    runs, gone = kept_runs(ctx.group_runs(step, group))
    if not runs:
        return f"no runs in {group} that kept their fit{said_left_out(gone)}", "", False
    table, n = info_table(runs, split, estimator)
    own = [info_table([r], split, estimator)[0] for r in runs]
    ceiling = math.log2(n)
    found, words, numbers = 0, [], {}
    for layer in sorted(table)[-layers:]:
        e, ixt, _ = table[layer]
        c = compression(e, ixt, ceiling)
        name = "output" if layer == max(table) else f"layer {layer + 1}"
        numbers[name] = dict(c)
        if c["saturated"]:
            words.append(f"{name} saturated (at the ceiling log2 N = {ceiling:.2f} from epoch {c['at_ceiling_from']})")
            continue
        found += c["fall"] >= at_least
        falls = [compression(t[layer][0], t[layer][1], ceiling)["fall"] for t in own if layer in t]
        spread = f" (runs {min(falls):.2f}-{max(falls):.2f})" if len(falls) > 1 else ""
        numbers[name]["run_falls"] = falls
        most = f", 80% of it by epoch {c['most_by']}" if c["most_by"] is not None else ""
        words.append(f"{name} {c['peak']:.2f} (epoch {c['peak_epoch']}) -> {c['final']:.2f}: falls {c['fall']:.2f}"
                     f"{spread}{most}")
    fitted = "; the runs fit (train accuracy >= 0.99) at epoch " + fit_epochs(runs)
    value = f"{group}, mean curve of {len(runs)} run{'s' * (len(runs) != 1)} ({split} set, N = {n}): " + \
        "; ".join(words) + fitted + said_left_out(gone)
    expected = f">= {at_least} bit fall in {need} of the last {layers} layers of the mean curve, judged from " \
               f"{min_runs} runs ({source})"
    return CheckResult(value, expected, (found >= need) if len(runs) >= min_runs else None,
                       {"layers": numbers, "falling": found, "runs": len(runs), "n": n, "ceiling": ceiling,
                        "left_out": gone})



def report_time_scales(ctx, steps: list[str], group: str, layers: int = 3, estimator: str = "binning-size",
                       split: str = "train"):
    """The time scales of one group across steps that differ in N (reported): per step, N, the runs'
    fit epochs (train accuracy >= 0.99), and on the mean curve of the last `layers` layers the epochs
    of the peaks of I(X;T) and by which 80% of each fall is done. Diverged runs are left out, named."""
    from ..measures.information import compression
    parts, numbers = [], {}
    for step in steps:
        runs, gone = kept_runs(ctx.group_runs(step, group))
        if not runs:
            parts.append(f"{step}: no runs")
            continue
        table, n = info_table(runs, split, estimator)
        curves = [compression(table[layer][0], table[layer][1], math.log2(n)) for layer in sorted(table)[-layers:]]
        peaks = ", ".join(str(c["peak_epoch"]) for c in curves)
        most = ", ".join("-" if c["most_by"] is None else str(c["most_by"]) for c in curves)   # -: no fall
        falls = ", ".join(f"{c['fall']:.2f}" for c in curves)
        numbers[step] = {"n": n, "runs": len(runs), "layers": curves}
        parts.append(f"N = {n} ({len(runs)} run{'s' * (len(runs) != 1)}): fit at epoch {fit_epochs(runs)}; the last {layers} "
                     f"layers peak at epochs {peaks} and 80% of their falls ({falls} bits) is done by epochs {most}"
                     + said_left_out(gone))
    return CheckResult(f"{group}: " + "; ".join(parts), "reported", None, numbers)


FIGURES: dict[str, FigureFn] = {"infoplane": fig_infoplane, "memorizing_ib": fig_memorizing_ib}
CHECKS: dict[str, CheckFn] = {"time_scales": report_time_scales, "info_bounds": check_info_bounds,
                              "output_ity": check_output_ity, "ixt_fall": report_ixt_fall,
                              "compression": check_compression}
