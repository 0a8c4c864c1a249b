"""What the forgetting study draws and checks from forget runs: each run's curves, its stage-2
collapses (the motivating study's kind: train back, val lost), their period against lr x weight
decay, and how each run ended. Part of forget's StudyParts (read by name: forget does not import
it); imports no torch."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..protocol import CheckFn, CheckResult, FigureFn
from ..store import RunDir
from .forget import first_stage2_collapse, summarize


def fig_forget(ctx, step: str) -> list[Path]:
    from ..plots import plot_forget
    out = []
    for run in ctx.runs(step):
        png = plot_forget(run, summarize(run))
        out.append(ctx.copy(png, ctx.figures / f"forget_{step}_{run.path.name}.png"))
    return out


def point_group(run: RunDir) -> str:
    """A run's sweep point without its seed: the setting its seeds repeat."""
    return run.path.name.split("__seed-")[0] if "__seed-" in run.path.name else run.path.name


def check_stage2_collapse(ctx, step: str, group: str | None = None, recover: float = 0.9, val_gap: float = 0.2,
                          at_least: float = 0.5, min_runs: int = 3, source: str = "rotelab threshold"):
    """Per setting (`group`: a point name without its seed; every setting of the step if None), the
    fraction of its runs whose first stage-2 collapse is the motivating kind (first_stage2_collapse),
    with a Wilson 95% interval; judged (at least `at_least` of the runs) only where a setting has
    `min_runs` runs or more, reported below that."""
    from ..measures.memorization import wilson
    settings: dict[str, list] = {}
    for run in ctx.runs(step):
        if group is None or point_group(run) == group:
            settings.setdefault(point_group(run), []).append(run)
    parts, verdicts, numbers = [], [], {}
    for name, runs in sorted(settings.items()):
        events = [first_stage2_collapse(r, recover, val_gap) for r in runs]
        k, n = sum(e["motivating_kind"] for e in events), len(events)
        lo, hi = (float(v) for v in wilson(k / n, n))
        lines = []
        for r, e in zip(runs, events):
            c = e["collapse"]
            lines.append(f"seed {r.read_config().get('seed')}: " + (
                f"{c['split']} collapses at epoch {c['epoch']} ({c['before']:.2f} -> {c['lowest']:.2f}), train back to "
                f">= {recover} at epoch {c['train_back_epoch']}, val {c['val_before']:.2f} before and "
                f"{c['val_then']:.2f} then" if c and c["train_back_epoch"] is not None else
                f"{c['split']} collapses at epoch {c['epoch']} ({c['before']:.2f} -> {c['lowest']:.2f}), train not back"
                if c else f"no collapse (val {e['val_start']:.2f} -> {e['val_end']:.2f} over stage 2)")
                + ("" if e["lr_kept"] else ", lr changed at the boundary"))
        parts.append(f"{name}: {k} of {n} runs (Wilson 95% {lo:.2f}-{hi:.2f}): " + "; ".join(lines))
        verdicts.append(None if n < min_runs else k / n >= at_least)
        numbers[name] = {"motivating_kind": k, "runs": n, "wilson_95": [lo, hi],
                         "first_collapse": [e["collapse"] for e in events]}
    judged = [v for v in verdicts if v is not None]
    passed = (all(judged) if judged else None) if verdicts else False
    expected = (f"in at least {at_least:.0%} of a setting's runs (judged at {min_runs} runs or more): a stage-2 "
                f"collapse with the lr unchanged, train back to >= {recover} and val then >= {val_gap} below its "
                f"level before ({source})")
    return CheckResult(" | ".join(parts) or "no runs", expected, passed, numbers)


def collapse_period(run: RunDir) -> dict:
    """The stage-2 collapses of the train part: their epochs and the median gap between consecutive
    ones (None with fewer than two), with the run's lr x weight decay in stage 2."""
    s = summarize(run)
    cfg = run.read_config()
    end = s["stage1_end"] or 0
    epochs = [c["epoch"] for c in s["collapses"].get("train", []) if c["epoch"] > end]
    gaps = [b - a for a, b in zip(epochs, epochs[1:])]
    lr2 = cfg.get("lr2") if cfg.get("lr2") is not None else cfg.get("lr")
    return {"epochs": epochs, "period": float(statistics.median(gaps)) if gaps else None,
            "lr_wd": (lr2 or 0) * (cfg.get("weight_decay") or 0)}


def check_collapse_period(ctx, step: str, source: str = "rotelab threshold"):
    """Every run collapses at least twice in stage 2, and the period (median gap between the train
    part's collapses) is strictly shorter for every larger lr x weight decay."""
    rows = sorted(((collapse_period(r), r.path.name) for r in ctx.runs(step)), key=lambda t: t[0]["lr_wd"])
    parts = [f"{name} (lr x wd {c['lr_wd']:.2g}): collapses at epochs {', '.join(map(str, c['epochs'])) or 'none'}"
             + (f", period {c['period']:g} epochs" if c["period"] is not None else "") for c, name in rows]
    periods = [c["period"] for c, _ in rows]
    ok = len(rows) >= 2 and all(p is not None for p in periods) and all(a > b for a, b in zip(periods, periods[1:]))
    return CheckResult("; ".join(parts), f"every run collapses twice or more, the period shorter at every larger "
                       f"lr x wd ({source})", ok, {name: c for c, name in rows})


def report_collapses(ctx, step: str):
    parts, numbers = [], {}
    for run in ctx.runs(step):
        s = summarize(run)
        numbers[run.path.name] = {"stage1_end": s["stage1_end"], "collapses": s["collapses"]}
        events = [f"{split} at epoch {e['epoch']} ({e['before']:.2f} -> {e['lowest']:.2f})"
                  for split, ev in s["collapses"].items() for e in ev]
        parts.append(f"{run.path.name}: stage 1 ended at epoch {s['stage1_end']}; "
                     + ("collapses: " + ", ".join(events) if events else "no collapse"))
    return CheckResult("; ".join(parts), "reported", None, numbers)


def report_end_state(ctx, step: str):
    """Each run as it ended: train and val accuracy at the last epoch, the val part's best and its
    epoch, and the weights' norm at the first and last epochs (weights decayed to nothing: no learning)."""
    parts, numbers = [], {}
    for run in ctx.runs(step):
        m = run.read_metrics()
        best = max(m, key=lambda r: r["val_acc"])
        numbers[run.path.name] = {"epoch": m[-1]["epoch"], "train_acc": m[-1]["train_acc"], "val_acc": m[-1]["val_acc"],
                                  "best_val_acc": best["val_acc"], "best_val_epoch": best["epoch"],
                                  "weight_norm": [m[0].get("weight_norm"), m[-1].get("weight_norm")]}
        norm = (f"; weights' norm {m[0]['weight_norm']:.3g} -> {m[-1]['weight_norm']:.3g}"
                if m[0].get("weight_norm") is not None else "")
        parts.append(f"{run.path.name}: epoch {m[-1]['epoch']}: train {m[-1]['train_acc']:.3f}, val "
                     f"{m[-1]['val_acc']:.3f} (best {best['val_acc']:.3f} at epoch {best['epoch']}){norm}")
    return CheckResult("; ".join(parts), "reported", None, numbers)


FIGURES: dict[str, FigureFn] = {"forget": fig_forget}
CHECKS: dict[str, CheckFn] = {"collapses": report_collapses, "end_state": report_end_state,
                              "stage2_collapse": check_stage2_collapse, "collapse_period": check_collapse_period}
