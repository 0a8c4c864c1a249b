"""What studies of memorize folders draw and check: the memorization study's estimates, and the
memorization-length study's question, which per-example signal finds the corrupted labels, read at
several training lengths from one training, over several corruption draws, with paired comparisons
and the subset-model estimates also at the compute of the cheaper signals. Part of memorize's
StudyParts (read by name: memorize does not import it); imports no torch.

A folder's signals at epoch e read the records its runs kept every --eval-every epochs: the subset
models' correctness and label probability (mem, the C-score, and cleanlab's self-confidence from
the models that held each example out), the fold runs' label probability on the examples each held
out (cleanlab from 5 folds, as its documentation prescribes), and the run on every example up to e
(AUM, the data map's confidence, the final probability, forgetting events, when it was learned)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..protocol import CheckFn, CheckResult, FigureFn
from ..store import RunDir, read_json
from .memorize import MemorizeConfig, group_figures, model_dir

LENGTHS = (10, 20, 30, 60, 100)
CHEAP_MODELS = 6   # "few models": at r = 0.7 they cost about what cleanlab's 5 folds on 80% cost (4.2 vs 4 runs)


def _summaries(ctx, step: str) -> list[tuple[Path, dict]]:
    return [(g, read_json(g / "memorization.json")) for g in ctx.groups(step) if (g / "memorization.json").is_file()]


def fig_memorization(ctx, step: str) -> list[Path]:
    return [ctx.copy(png, ctx.figures / f"{png.stem}_{step}_{png.parent.parent.name}.png")
            for png in group_figures(ctx.groups(step))]


def report_mem(ctx, step: str):
    """Every folder with corrupted labels: corrupted examples' mean mem and clean ones' median, beside
    the fit. Reported, not judged: the corrupted mean is the fit on seen examples minus the accuracy on
    unseen ones (mem's definition), so it follows from how long the models trained."""
    rows = [(g.name, s) for g, s in _summaries(ctx, step) if s.get("mem_corrupted_mean") is not None]
    value = "; ".join(f"{n}: corrupted mean {s['mem_corrupted_mean']:.3f} ({s['corrupted']} examples), clean median "
                      f"{s['mem_clean_median']:.3f}, with the models fitting {s['fit_seen_mean']:.3f} of what they saw "
                      f"(n = 1 folder of {s['models']} models; se of mem <= {s['mem_se_p95']:.3f} for 95% of examples)"
                      for n, s in rows)
    numbers = {n: {k: s.get(k) for k in ("mem_corrupted_mean", "mem_clean_median", "fit_seen_mean", "models",
                                         "mem_se_p95", "corrupted")} for n, s in rows}
    return CheckResult(value, "reported (it follows from the fit)", None, numbers)


def check_mem_auroc(ctx, step: str, at_least: float = 0.9):
    """mem ranks the corrupted examples first: AUROC with its interval (bootstrap over examples)."""
    rows = [(g.name, s["detection_mem"]) for g, s in _summaries(ctx, step) if "detection_mem" in s]
    value = "; ".join(f"{n}: AUROC {d['auroc']:.3f} ({d['auroc_ci'][0]:.3f}-{d['auroc_ci'][1]:.3f}, {d['interval']}, "
                      f"n = {d['n']} examples), AP {d['ap']:.3f}" for n, d in rows)
    return CheckResult(value, f">= {at_least}", bool(rows) and all(d["auroc"] >= at_least for _, d in rows),
                       {n: d for n, d in rows})


def report_fit(ctx, step: str):
    """How well the models fit what they saw (mem of an example is only as high as the fit)."""
    rows = _summaries(ctx, step)
    return CheckResult("; ".join(f"{g.name}: {s['fit_seen_mean']:.3f} of the seen examples right at the end (mean "
                                 f"over {s['models']} models)" for g, s in rows), "reported", None,
                       {g.name: {"fit_seen_mean": s["fit_seen_mean"], "models": s["models"]} for g, s in rows})


# -- signals against training length ------------------------------------------------------------------

def _at(ex: dict, key: str, epoch: int, n: int) -> np.ndarray:
    """A run's record `key` (train_correct bits or train_prob) at an evaluated epoch."""
    from ..measures.examples import unpack
    rows = np.flatnonzero(np.asarray(ex["epochs"]) == epoch)
    if not len(rows):
        raise ValueError(f"no record at epoch {epoch} (evaluated: {list(ex['epochs'])}); train with --eval-every")
    v = ex[key][rows[0]]
    return unpack(v, n).astype(bool) if key.endswith("_correct") else np.asarray(v, dtype=np.float64)


def _neutral(x: np.ndarray) -> np.ndarray:
    """NaN (an estimate with no model to read it from) at the median: it ranks neither first nor last,
    and every signal scores the same examples (paired comparisons need that)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isnan(x), np.nanmedian(x), x)


SIGNALS_FILE = "signals_by_length.npz"   # a folder's scores per length: what a record keeps of its runs' records


def folder_signals(folder: Path, epochs=LENGTHS, cheap: int = CHEAP_MODELS) -> dict:
    """folder_signals_from_runs, written once to the folder's signals_by_length.npz and read from there
    after (a published record keeps that file, not the runs' per-example records)."""
    import json
    from ..store import atomic_write_bytes
    path = Path(folder) / SIGNALS_FILE
    if path.is_file():
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            scores = {int(e): {sig: z[f"{e}/{sig}"].astype(np.float64) for sig in meta["signals"]} for e in meta["epochs"]}
            cached = {"corrupted": z["corrupted"].astype(bool), "noise": meta["noise"], "compute": meta["compute"],
                      "scores": scores}
        runs = len(list(Path(folder).glob("full-*"))) + 1
        if meta.get("full_runs", 1) >= runs:   # read from as many runs on every example as the folder has
            return cached
    fs = folder_signals_from_runs(folder, epochs, cheap)
    import io
    buf = io.BytesIO()
    meta = {"noise": fs["noise"], "compute": fs["compute"], "epochs": list(fs["scores"]),
            "signals": list(next(iter(fs["scores"].values()))), "full_runs": fs["full_runs"]}
    np.savez_compressed(buf, meta=json.dumps(meta), corrupted=fs["corrupted"],
                        **{f"{e}/{sig}": v.astype(np.float32) for e, s in fs["scores"].items() for sig, v in s.items()})
    atomic_write_bytes(path, buf.getvalue())
    return folder_signals(folder)


def folder_signals_from_runs(folder: Path, epochs=LENGTHS, cheap: int = CHEAP_MODELS) -> dict:
    """A finished memorize folder's signals at each training length in `epochs` that its runs
    evaluated (all their evaluated epochs where none is): {"corrupted": mask, "noise": the
    label noise mode, "compute": signal -> runs' worth of training, "scores": {epoch: {signal: score}}}
    (every score high for the suspect examples)."""
    from ..measures.memorization import cscore, memorization
    from ..runs import Run
    folder = Path(folder)
    cfg = MemorizeConfig.from_dict(read_json(folder / "plan.json")["config"])
    r = cfg.fractions[0]
    models = [RunDir(folder / model_dir(r, k)).read_examples() for k in range(cfg.models)]
    folds = [RunDir(folder / f"fold-{f}").read_examples() for f in range(cfg.folds)]
    n = int(models[0]["n_train"])
    seen = np.array([m["train_seen"] for m in models], dtype=bool)
    held = np.array([~f["train_seen"].astype(bool) for f in folds])
    # the runs on every example: averaged, the single-run signals at the compute of several runs
    full = ["full"] + [f"full-{k}" for k in range(1, cfg.full_runs)]
    evaluated = [int(e) for e in models[0]["epochs"]]
    epochs = [e for e in epochs if e in evaluated] or evaluated
    fold_r = float(np.mean(~held))
    # names without counts, so that a study's checks name them at every scale; `compute` says what each cost
    compute = {"mem": cfg.models * r, "C-score": cfg.models * r, "cleanlab (subset models)": cfg.models * r,
               "mem (few models)": cheap * r, "C-score (few models)": cheap * r,
               "cleanlab (few subset models)": cheap * r, "cleanlab (folds)": cfg.folds * fold_r,
               **{f"{s} ({tag})": float(runs) for s in ("AUM", "confidence", "final probability", "forgetting events",
                                                        "learned at")
                  for tag, runs in [("one run", 1)] + ([("averaged runs", len(full))] if len(full) > 1 else [])}}
    scores: dict = {}
    for e in epochs:
        correct = np.array([_at(m, "train_correct", e, n) for m in models])
        prob = np.array([_at(m, "train_prob", e, n) for m in models])
        s: dict = {}
        for k, few in ((cfg.models, ""), (cheap, "few ")):
            t, c, p = seen[:k], correct[:k], prob[:k]
            s["mem" + (" (few models)" if few else "")] = _neutral(memorization(t, c).value)
            s["C-score" + (" (few models)" if few else "")] = _neutral(-cscore(t, c).value)
            with np.errstate(invalid="ignore", divide="ignore"):   # each example's held-out probability, averaged
                out_prob = np.where(~t, p, 0).sum(0) / (~t).sum(0)
            s[f"cleanlab ({few}subset models)"] = _neutral(-out_prob)
        oof = np.full(n, np.nan)
        for f, h in zip(folds, held):
            oof[h] = _at(f, "train_prob", e, n)[h]
        s["cleanlab (folds)"] = _neutral(-oof)   # self-confidence: cleanlab's default label quality
        tables = [Run(folder / name).per_example("train", until=e) for name in full]
        for tag, ts in (("one run", tables[:1]), ("averaged runs", tables if len(full) > 1 else [])):
            if not ts:
                continue
            mean = lambda col: np.mean([t[col].to_numpy(dtype=float) for t in ts], axis=0)  # noqa: E731
            s.update({f"AUM ({tag})": -mean("aum"), f"confidence ({tag})": -mean("confidence"),
                      f"final probability ({tag})": -mean("prob_final"),
                      f"forgetting events ({tag})": mean("forgetting_events"),
                      f"learned at ({tag})": mean("learned_at")})
        scores[e] = s
    return {"corrupted": models[0]["train_corrupted"].astype(bool), "noise": cfg.label_noise_mode,
            "compute": compute, "scores": scores, "full_runs": len(full)}


def length_table(ctx, step: str) -> dict:
    """Every folder's signals, grouped by label noise mode: {mode: [folder_signals, ...]} (one per
    corruption draw); read once per study drawing."""
    folders = [g for g in ctx.groups(step) if (g / "memorization.json").is_file()]

    def read() -> dict:
        table: dict = {}
        for g in folders:
            fs = folder_signals(g)
            table.setdefault(fs["noise"], []).append(fs)
        return table
    return ctx.once(("memorize signals by length", *map(str, folders)), read)


def scores_against_length(table: dict) -> dict:
    """{mode: {signal: {epoch: {"auroc": Interval, "ap": Interval, "auroc_draws", "ap_draws"}}}}: AUROC
    and AP, the mean over the draws with Student's t 95% interval (n = draws), and each draw's value."""
    from sklearn.metrics import average_precision_score
    from ..measures.memorization import auroc
    from ..measures.stats import mean_interval
    out: dict = {}
    for mode, draws in table.items():
        for sig in next(iter(draws[0]["scores"].values())) if draws else []:
            for e in draws[0]["scores"]:
                a = [auroc(d["scores"][e][sig], d["corrupted"]) for d in draws]
                p = [average_precision_score(d["corrupted"], d["scores"][e][sig]) for d in draws]
                out.setdefault(mode, {}).setdefault(sig, {})[e] = {"auroc": mean_interval(a), "ap": mean_interval(p),
                                                                   "auroc_draws": a, "ap_draws": p}
    return out


def compare(table: dict, a: str, b: str, n_boot: int = 500) -> dict:
    """{mode: {epoch: paired_auroc_difference of a minus b over the draws}}."""
    from ..measures.memorization import paired_auroc_difference
    out: dict = {}
    for mode, draws in table.items():
        for e in draws[0]["scores"]:
            out.setdefault(mode, {})[e] = paired_auroc_difference(
                [d["scores"][e][a] for d in draws], [d["scores"][e][b] for d in draws],
                [d["corrupted"] for d in draws], n_boot=n_boot)
    return out


def verdict(by_epoch: dict) -> str:
    """"above" where a beat b at every length (the paired interval above 0 and every draw's difference
    above 0), "below" where the reverse held at every length, else "mixed"."""
    if all(d["lo"] > 0 and min(d["per_draw"]) > 0 for d in by_epoch.values()):
        return "above"
    if all(d["hi"] < 0 and max(d["per_draw"]) < 0 for d in by_epoch.values()):
        return "below"
    return "mixed"


def report_signals_against_length(ctx, step: str):
    """Every signal's AUROC and AP at every length and noise mode (mean over draws, t 95%), and its
    compute in runs' worth of training; reported."""
    table = length_table(ctx, step)
    res = scores_against_length(table)
    parts = []
    for mode, sigs in res.items():
        best = {e: max(sigs, key=lambda s: sigs[s][e]["auroc"].mean) for e in next(iter(sigs.values()))}
        parts.append(f"{mode} noise ({len(table[mode])} draws): best AUROC per length " + ", ".join(
            f"{e}: {s} {sigs[s][e]['auroc'].mean:.3f}" for e, s in best.items()))
    compute = next(iter(table.values()))[0]["compute"] if table else {}
    return CheckResult("; ".join(parts), "reported", None, {"scores": res, "compute_runs": compute})


def check_ranking_holds(ctx, step: str, pairs: list, source: str = "rotelab"):
    """Each named pair (a, b): a ranks the corrupted examples better than b (AUROC) at every training
    length and in every noise mode, by a paired bootstrap over examples within draws (interval above 0)
    and in every draw; judged. The rest of the pairs among the named signals are reported with it."""
    table = length_table(ctx, step)
    numbers, parts, ok = {}, [], bool(table)
    for a, b in pairs:
        res = compare(table, a, b)
        v = {mode: verdict(by_e) for mode, by_e in res.items()}
        ok &= all(x == "above" for x in v.values())
        numbers[f"{a} - {b}"] = {"verdict": v, "by_mode": res}
        parts.append(f"{a} minus {b}: " + "; ".join(
            f"{mode} {v[mode]} (" + ", ".join(f"{e}: {d['difference']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                                              for e, d in by_e.items()) + ")" for mode, by_e in res.items()))
    return CheckResult("; ".join(parts) + " (paired percentile bootstrap 95% over examples, mean over draws)",
                       f"each pair's first signal above at every length, in every noise mode and every draw ({source})",
                       ok, numbers)


def report_pairs(ctx, step: str, signals: list):
    """Every pair among `signals`: above, below or mixed across lengths, per noise mode (reported)."""
    table = length_table(ctx, step)
    numbers, parts = {}, []
    for i, a in enumerate(signals):
        for b in signals[i + 1:]:
            res = compare(table, a, b)
            v = {mode: verdict(by_e) for mode, by_e in res.items()}
            numbers[f"{a} - {b}"] = {"verdict": v, "by_mode": res}
            parts.append(f"{a} vs {b}: " + ", ".join(f"{m} {x}" for m, x in v.items()))
    return CheckResult("; ".join(parts), "reported", None, numbers)


def fig_signals_against_length(ctx, step: str) -> list[Path]:
    from ..plots import plot_signals_against_length
    table = length_table(ctx, step)
    if not table:
        return []
    compute = next(iter(table.values()))[0]["compute"]
    return [plot_signals_against_length(scores_against_length(table), compute,
                                        {m: len(d) for m, d in table.items()}, ctx.figures / "signals_by_length.png")]


FIGURES: dict[str, FigureFn] = {"memorization": fig_memorization, "signals_by_length": fig_signals_against_length}
CHECKS: dict[str, CheckFn] = {"mem": report_mem, "mem_auroc": check_mem_auroc, "fit": report_fit,
                              "signals_by_length": report_signals_against_length,
                              "ranking_holds": check_ranking_holds, "pairs": report_pairs}
