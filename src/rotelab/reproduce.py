"""`rotelab reproduce`: studies that rerun a paper's figure end to end and check it against the paper.

A study is a TOML file in `rotelab/studies/` (or any path): what it reproduces, its scales with their
measured wall times, the steps it runs (sweeps of any sweepable protocol, and noise ramps over an
earlier step's runs), its figures and its checks. Every scale runs the same steps, figures and
checks; a scale only overrides step configs. Runs already finished are skipped and broken ones
resumed, as `rotelab sweep` does, so a study killed at any moment continues where it stopped.

    name = "zhang-fig1"
    title = "..."
    reproduces = "Zhang et al. (ICLR 2017), Fig. 1"
    notes = "what differs from the paper and why"
    [scales]
    smoke = {minutes = 0.2}
    cpu = {minutes = 20}
    [[steps]]
    name = "fits"
    protocol = "fit"
    base = {...}                          # config fields
    axes = {...}                          # as a sweep file's
    smoke = {base = {...}, axes = {...}}  # per-scale overrides, merged into base and axes
    [[figures]]
    kind = "zhang_fig1"                   # see FIGURES
    step = "fits"
    [[checks]]
    name = "every point fits its training set"
    kind = "all_fit"                      # see CHECKS
    step = "fits"

Output: DIR/<step>/... (the runs), DIR/figures/*.png, DIR/results.json and DIR/report.html.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .config import ConfigError, load_config_file, parse_corruption
from .store import RunDir, atomic_write_json, runs_in

STUDIES = Path(__file__).parent / "studies"
SCALES = ("smoke", "cpu", "paper")
# Where a step's `data_file` is looked for when it is not a path that exists: $ROTELAB_DATA, ./data
# and the project's shared data folder beside the checkout.
DATA_DIRS = ("data", "../shared/data")


@dataclass
class Study:
    name: str
    path: Path
    spec: dict

    @property
    def title(self) -> str:
        return self.spec.get("title", self.name)

    @property
    def scales(self) -> dict:
        return self.spec.get("scales", {})

    def steps(self, scale: str) -> list[dict]:
        """The steps with the scale's overrides merged into base and axes."""
        out = []
        for step in self.spec.get("steps", []):
            over = step.get(scale, {})
            out.append({"name": step["name"], "protocol": step.get("protocol", "fit"),
                        "sources": step.get("sources"), "base": {**step.get("base", {}), **over.get("base", {})},
                        "axes": {**step.get("axes", {}), **over.get("axes", {})}})
        return out


def study_files() -> list[Path]:
    return sorted(STUDIES.glob("*.toml"))


def load_study(name_or_path) -> Study:
    p = Path(name_or_path)
    path = p if p.suffix == ".toml" and p.is_file() else STUDIES / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(f.stem for f in study_files())
        raise ConfigError("NAME", f"no study {str(name_or_path)!r}; `rotelab reproduce --list` lists them ({known})")
    spec = load_config_file(path)
    for key in ("name", "steps"):
        if key not in spec:
            raise ConfigError(str(path), f"a study file needs `{key}`")
    return Study(spec["name"], path, spec)


def list_studies() -> list[str]:
    lines = []
    for f in study_files():
        s = load_study(f)
        scales = ", ".join(f"{k} ~{_minutes(v.get('minutes'))}" for k, v in s.scales.items())
        lines.append(f"{s.name:18s} {s.spec.get('reproduces', s.title)}\n{'':18s} scales: {scales}")
    return lines


def _minutes(m) -> str:
    if m is None:
        return "?"
    return f"{m * 60:.0f} s" if m < 1 else (f"{m:.0f} min" if m < 120 else f"{m / 60:.0f} h")


def _resolve_data_file(base: dict, notes: list[str]):
    """A step's data_file found where the data live, or dropped (a generated stand-in) with a note."""
    name = base.get("data_file")
    if not name or Path(name).is_file():
        return
    dirs = [os.environ["ROTELAB_DATA"]] if os.environ.get("ROTELAB_DATA") else []
    for d in dirs + list(DATA_DIRS):
        if (Path(d) / name).is_file():
            base["data_file"] = str((Path(d) / name).resolve())
            notes.append(f"data: {name} read from {Path(d) / name}")
            return
    base.pop("data_file")
    notes.append(f"data: {name} not found (looked in $ROTELAB_DATA, ./data, ../shared/data); "
                 "the generated task of the same shape was used instead")


class Context:
    """What checks and figures see: the study, its output folder and each step's runs."""

    def __init__(self, study: Study, scale: str, out: Path, steps: list[dict]):
        self.study, self.scale, self.out, self.steps = study, scale, out, {s["name"]: s for s in steps}
        self.figures = out / "figures"

    def step_dir(self, step: str) -> Path:
        if step not in self.steps:
            raise ConfigError(str(self.study.path), f"no step named {step!r}")
        return self.out / step

    def groups(self, step: str) -> list[Path]:
        """The step's output folders: one per sweep point, or the ramp folder."""
        d = self.step_dir(step)
        if self.steps[step]["protocol"] == "noise":
            return [d]
        return sorted(p for p in d.iterdir() if p.is_dir() and runs_in(p)) if d.is_dir() else []

    def runs(self, step: str) -> list[RunDir]:
        return [RunDir(r) for g in self.groups(step) for r in runs_in(g)]


def run_steps(study: Study, scale: str, out: Path, executor: str = "local", jobs: int | None = None,
              address=None, cpus_per_point: float = 1, gpus_per_point: float = 0, data_root: str | None = None,
              dry_run: bool = False, notes: list | None = None) -> list[dict]:
    """Run (or skip, or resume) every step in order; returns the steps as run."""
    from .registry import get_protocol
    from .sweep import plan, point_state, record_points, run_local, run_ray, sweep_points
    notes = notes if notes is not None else []
    steps = study.steps(scale)
    for step in steps:
        if data_root:
            step["base"]["data_root"] = data_root
        _resolve_data_file(step["base"], notes)
        where = out / step["name"]
        if step["protocol"] == "noise":
            proto = get_protocol("noise")
            sources = [str(r.path) for r in Context(study, scale, out, steps).runs(step["sources"])] \
                if (out / step["sources"]).is_dir() else []
            print(f"{'ramp':8s} {where} ({len(sources)} source runs)")
            if dry_run:
                continue
            cfg = proto.config.from_dict({**step["base"], "progress": False})
            proto.start(cfg, where, keep_existing=True, sources=sources)
            continue
        protocol, points = sweep_points({"protocol": step["protocol"], "out": str(where), "base": step["base"],
                                         "axes": step["axes"]})
        for p in points:
            print(f"{point_state(protocol, p.path):8s} {p.path}")
        if dry_run:
            continue
        record_points(protocol, points)
        tasks = plan(protocol, points, vectorize=False)
        results = (run_ray(protocol, tasks, address, cpus_per_point, gpus_per_point) if executor == "ray"
                   else run_local(protocol, tasks, jobs or 1))
        busy = sorted({r["pid"] for r in results if r["state"] == "running"})
        if busy:
            raise ConfigError("--out", f"points of step {step['name']} are being run by another process (PID "
                                       f"{', '.join(busy)}); wait for it to end, then run this study again")
        failed = [r for r in results if r["state"] == "failed"]
        if failed:
            raise RuntimeError(f"{len(failed)} points of step {step['name']} failed; first: "
                               f"{failed[0]['path']}: {failed[0]['error']}")
    return steps


def reproduce(name, scale: str | None = None, out=None, dry_run: bool = False, **run_options) -> dict:
    """Run a study at a scale (default: cpu where the study has it, else its largest), then write its
    figures, results.json and report.html."""
    study = load_study(name)
    scale = scale or ("cpu" if "cpu" in study.scales else list(study.scales)[-1])
    if scale not in study.scales:
        raise ConfigError("--scale", f"study {study.name} has scales {', '.join(study.scales)}, not {scale!r}")
    out = Path(out or f"runs/reproduce/{study.name}-{scale}")
    t0 = time.perf_counter()
    notes: list[str] = []
    steps = run_steps(study, scale, out, dry_run=dry_run, notes=notes, **run_options)
    if dry_run:
        return {}
    ctx = Context(study, scale, out, steps)
    figures = []
    for fig in study.spec.get("figures", []):
        figures += [(fig.get("title", fig["kind"]), p) for p in FIGURES[fig["kind"]](ctx, **_args(fig))]
    checks = []
    for chk in study.spec.get("checks", []):
        value, expected, passed = CHECKS[chk["kind"]](ctx, **_args(chk))
        if scale == "smoke":   # a few epochs on tiny data: the claims are not judged there
            expected, passed = f"not judged at smoke scale ({expected})", None
        checks.append({"name": chk["name"], "value": value, "expected": expected, "pass": passed})
    compute = 0.0   # every epoch's training and evaluation, and the information captures (seconds_info, cumulative)
    for step in steps:
        for r in ctx.runs(step["name"]):
            m = r.read_metrics()
            compute += sum(x.get("seconds", 0.0) for x in m) + (m[-1].get("seconds_info", 0.0) if m else 0.0)
    results = {"study": study.name, "scale": scale, "version": __version__,
               "seconds": round(time.perf_counter() - t0, 1), "compute_seconds": round(compute, 1), "checks": checks,
               "notes": "\n".join([study.spec.get("notes", "").strip(), *notes]).strip(),
               "reproduces": study.spec.get("reproduces", ""),
               "figures": [str(Path(png).relative_to(out / "figures")) for _, png in figures],
               "command": f"rotelab reproduce {study.name} --scale {scale}"}
    atomic_write_json(out / "results.json", results)
    write_page(results, figures, out / "report.html")
    return {**results, "out": str(out)}


def _args(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("kind", "name", "title")}


# -- figures ----------------------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def fig_zhang(ctx: Context, step: str) -> list[Path]:
    from .protocols.fit import zhang_figures
    return [p for _, p in zhang_figures(ctx.runs(step), ctx.figures)]


def fig_noise_ramp(ctx: Context, step: str) -> list[Path]:
    from .protocols.noise import group_figures
    return [_copy(p, ctx.figures / "noise_ramp.png") for p in group_figures([ctx.step_dir(step)])]


def fig_oscillation(ctx: Context, step: str, split: str = "train") -> list[Path]:
    from .plots import plot_overlap_runs
    return [plot_overlap_runs(ctx.runs(step), ctx.figures / f"oscillation_{split}.png", split)]


def fig_infoplane(ctx: Context, step: str) -> list[Path]:
    """The information planes and I(X;T) against epoch of a step's groups, side by side; files named
    after the step (a study may hold several)."""
    from .plots import plot_infoplane
    out = []
    for png in plot_infoplane(ctx.groups(step), ctx.figures / step):
        out.append(_copy(png, ctx.figures / f"{step}_{png.name}"))
    return out


def fig_forget(ctx: Context, step: str) -> list[Path]:
    from .plots import plot_forget
    from .protocols.forget import summarize
    out = []
    for run in ctx.runs(step):
        png = plot_forget(run, summarize(run))
        out.append(_copy(png, ctx.figures / f"forget_{step}_{run.path.name}.png"))
    return out


def info_table(runs: list[RunDir], split: str = "train", estimator: str = "binning-size") -> tuple[dict, int]:
    """layer -> (epochs, I(X;T), I(T;Y)) of one split and estimator, means over runs at the epochs
    they share; and N, the size of the set it was measured on."""
    per = {}
    n = None
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


def fig_memorizing_ib(ctx: Context, step: str, panels: dict, split: str = "train",
                      estimator: str = "binning-size") -> list[Path]:
    """The Memorizing IB study's figure: `panels` maps a title to a group (a sweep point) of the step."""
    from .plots import plot_memorizing_ib
    by_name = {g.name: g for g in ctx.groups(step)}
    drawn, ceiling, widths = [], None, None
    for title, group in panels.items():
        if group in by_name:
            runs = [RunDir(d) for d in runs_in(by_name[group])]
            table, n = info_table(runs, split, estimator)
            drawn.append((f"{title}, {split} set", table))
            ceiling, widths = math.log2(n), runs[0].read_config().get("widths")
    if not drawn:
        return []
    return [plot_memorizing_ib(drawn, ceiling, ctx.figures / f"memorizing_ib_{split}.png", widths=widths)]


FIGURES = {"zhang_fig1": fig_zhang, "noise_ramp": fig_noise_ramp, "oscillation": fig_oscillation,
           "infoplane": fig_infoplane, "forget": fig_forget, "memorizing_ib": fig_memorizing_ib}


# -- checks: each returns (value, expected, pass); pass None reports without judging -------------

def _label_level(run: RunDir) -> float | None:
    kind, p = parse_corruption(run.read_config().get("corrupt", "none"))
    return p if kind in ("labels", "none") else None


def _num_classes(run: RunDir) -> int:
    return int(run.read_examples()["train_labels_true"].max()) + 1


def spearman(x, y) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(x, y).statistic)


def check_all_fit(ctx: Context, step: str):
    runs = ctx.runs(step)
    fit = [r for r in runs if r.read_status().get("fit_epoch")]
    slow = [r.path.name for r in runs if r not in fit]
    return f"{len(fit)} of {len(runs)}" + (f" (not fit: {', '.join(slow)})" if slow else ""), "all", \
        bool(runs) and len(fit) == len(runs)


def _by_level(ctx: Context, step: str, value) -> dict[float, list[float]]:
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


def check_rises_with_p(ctx: Context, step: str, metric: str, at_least: float = 0.9):
    levels = _by_level(ctx, step, METRICS[metric])
    means = {p: float(np.mean(v)) for p, v in levels.items()}
    rho = spearman(list(means), list(means.values())) if len(means) > 2 else float("nan")
    shown = ", ".join(f"p={p:g}: {m:.4g}" for p, m in means.items())
    return f"rank correlation {rho:.3f} (means {shown})", f">= {at_least}", bool(rho >= at_least)


def check_chance(ctx: Context, step: str, p: float = 1.0, tolerance: float = 0.02):
    runs = [r for r in ctx.runs(step) if _label_level(r) == p]
    if not runs:
        return "no runs", "", False
    chance = 1 / _num_classes(runs[0])
    acc = float(np.mean([1 - _test_error(r) for r in runs]))
    return f"test accuracy {acc:.4f} (mean of {len(runs)})", f"{chance:.3f} +- {tolerance}", abs(acc - chance) <= tolerance


def _ramps(ctx: Context, step: str) -> list[dict]:
    from .protocols.noise import summarize
    return [summarize(r) for r in ctx.runs(step)]


def check_random_breaks_first(ctx: Context, step: str):
    rows = _ramps(ctx, step)
    alpha = lambda r: r["half_acc"]["alpha"] if r["half_acc"] else math.inf  # noqa: E731
    rand = [alpha(r) for r in rows if r["label_corruption"] == 1.0]
    true = [alpha(r) for r in rows if r["label_corruption"] == 0.0]
    if not rand or not true:
        return "needs true- and random-label runs", "", False
    return (f"random labels halve at alpha {', '.join(f'{a:.3g}' for a in sorted(rand))}; "
            f"true labels at {', '.join(f'{a:.3g}' for a in sorted(true))}"), \
        "every random-label alpha below every true-label alpha", max(rand) < min(true)


def check_information_terms(ctx: Context, step: str, start: float = 4.605, per_doubling: float = 0.347,
                            tolerance: float = 0.001):
    run = ctx.runs(step)[0]
    m = [r for r in run.read_metrics() if r["epoch"] > 0]
    by_alpha = {}
    for r in m:
        by_alpha.setdefault(r["alpha"], r["neg_half_log_alpha"])
    alphas = sorted(by_alpha)
    first = by_alpha[alphas[0]]
    steps = [by_alpha[a] - by_alpha[b] for a, b in zip(alphas, alphas[1:])]
    drop = float(np.mean(steps)) if steps else float("nan")
    ok = abs(first - start) <= tolerance and all(abs(s - per_doubling) <= tolerance for s in steps)
    return f"starts at {first:.4f} nats, falls {drop:.4f} per step", \
        f"{start} nats, {per_doubling} per doubling", bool(ok)


def check_random_test_chance(ctx: Context, step: str, tolerance: float = 0.03):
    rows = [r for r in _ramps(ctx, step) if r["label_corruption"] == 1.0]
    chance = 1 / _num_classes(RunDir(rows[0]["source"]))
    accs = [r["noise_free_test_acc"] for r in rows]
    return f"test accuracy {', '.join(f'{a:.3f}' for a in accs)}", f"{chance:.2f} +- {tolerance}", \
        all(abs(a - chance) <= tolerance for a in accs)


def check_overlap_bounds(ctx: Context, step: str, split: str = "train"):
    """intersection(t-1, t) <= acc(t-1), acc(t) <= union(t-1, t) at every epoch of every run; and the
    gap union - intersection (the fraction of examples whose correctness flips), its largest value and
    its value at the last epoch, reported."""
    bad, gaps = 0, []
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
    return f"{bad} epochs out of bounds; union - intersection: {'; '.join(gaps)}", \
        "0 out of bounds", bad == 0


def check_info_bounds(ctx: Context, step: str):
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
    return f"{bad} of {n} records out of bounds", "0", bad == 0 and n > 0


def _final_layers(run: RunDir, estimator: str) -> dict[int, list[tuple[int, float, float]]]:
    out = {}
    for r in run.read_info():
        if r["estimator"] == estimator:
            out.setdefault(r["layer"], []).append((r["epoch"], r["ixt"], r["ity"]))
    return out


def check_output_ity(ctx: Context, step: str, group: str, at_least: float = 0.9, estimator: str = "binning"):
    vals = []
    for g in ctx.groups(step):
        if g.name != group:
            continue
        for d in runs_in(g):
            layers = _final_layers(RunDir(d), estimator)
            vals.append(sorted(layers[max(layers)])[-1][2])
    if not vals:
        return f"no runs in {group}", "", False
    return f"{np.mean(vals):.3f} bits (mean of {len(vals)} seeds; min {min(vals):.3f})", f">= {at_least}", \
        bool(np.mean(vals) >= at_least)


def report_ixt_fall(ctx: Context, step: str, estimator: str | None = None):
    """How far the last hidden layers' I(X;T) falls from its maximum by the last epoch (reported, not
    judged); by default with the group's binning estimator (fixed edges, else fixed bin size)."""
    parts = []
    for g in ctx.groups(step):
        falls = {}
        for d in runs_in(g):
            names = {r["estimator"] for r in RunDir(d).read_info()}
            est = estimator or next((e for e in ("binning", "binning-size") if e in names), "binning")
            layers = _final_layers(RunDir(d), est)
            for layer in sorted(layers)[-3:-1]:   # the last two hidden layers
                series = sorted(layers[layer])
                peak = max(v[1] for v in series)
                falls.setdefault(layer, []).append(peak - series[-1][1])
        parts.append(f"{g.name} ({est}): " + ", ".join(f"layer {l + 1} falls {np.mean(v):.2f} bits from its peak"
                                               for l, v in falls.items()))
    return "; ".join(parts), "reported", None


def report_final_train_acc(ctx: Context, step: str):
    """Each group's train accuracy at its last epoch (mean and range over its runs), reported."""
    parts = []
    for g in ctx.groups(step):
        accs = [RunDir(d).read_metrics()[-1]["train_acc"] for d in runs_in(g)]
        parts.append(f"{g.name}: {np.mean(accs):.3f} ({min(accs):.3f}-{max(accs):.3f})")
    return "; ".join(parts), "reported", None


def report_collapses(ctx: Context, step: str):
    from .protocols.forget import summarize
    parts = []
    for run in ctx.runs(step):
        s = summarize(run)
        events = [f"{split} at epoch {e['epoch']} ({e['before']:.2f} -> {e['lowest']:.2f})"
                  for split, ev in s["collapses"].items() for e in ev]
        parts.append(f"{run.path.name}: stage 1 ended at epoch {s['stage1_end']}; "
                     + ("collapses: " + ", ".join(events) if events else "no collapse"))
    return "; ".join(parts), "reported", None


def check_table(ctx: Context, step: str, expected: dict, tolerance: float = 0.03, train_at_least: float = 0.99):
    """Final train and test accuracy of each point against a table of the paper's numbers."""
    rows, ok = [], True
    for g in ctx.groups(step):
        want = expected.get(g.name)
        if want is None:
            continue
        runs = [RunDir(d) for d in runs_in(g)]
        m = [r.read_metrics()[-1] for r in runs]
        train, test = float(np.mean([x["train_acc"] for x in m])), float(np.mean([x["test_acc"] for x in m]))
        good = train >= train_at_least and abs(test - want) <= tolerance
        ok &= good
        rows.append(f"{g.name}: train {train:.4f}, test {test:.4f} (paper {want:.4f})")
    return "; ".join(rows), f"train >= {train_at_least}, test within {tolerance} of the paper", ok and bool(rows)


def _group_runs(ctx: Context, step: str, group: str) -> list[RunDir]:
    return [RunDir(d) for g in ctx.groups(step) if g.name == group for d in runs_in(g)]


def check_final_train_acc(ctx: Context, step: str, group: str, at_least: float = 0.99, source: str = "rotelab threshold"):
    """Every run of a group ends with train accuracy >= at_least."""
    runs = _group_runs(ctx, step, group)
    accs = [r.read_metrics()[-1]["train_acc"] for r in runs]
    if not accs:
        return f"no runs in {group}", "", False
    return f"{group}: train accuracy {', '.join(f'{a:.4f}' for a in accs)} at the last epoch", \
        f">= {at_least} ({source})", min(accs) >= at_least


def check_compression(ctx: Context, step: str, group: str, layers: int = 3, at_least: float = 1.0, need: int = 2,
                      split: str = "train", estimator: str = "binning-size", source: str = "rotelab threshold"):
    """In every run of a group, at least `need` of the last `layers` layers fall by at least `at_least`
    bits of I(X;T) from their peak by the last epoch. A layer within 0.1 bit of the ceiling log2 N all
    along is reported as saturated (the estimator cannot see compression there), not as not compressing."""
    from .measures.information import compression
    runs = _group_runs(ctx, step, group)
    if not runs:
        return f"no runs in {group}", "", False
    parts, ok = [], True
    for run in runs:
        table, n = info_table([run], split, estimator)
        ceiling = math.log2(n)
        found, words = 0, []
        for layer in sorted(table)[-layers:]:
            e, ixt, _ = table[layer]
            c = compression(e, ixt, ceiling)
            name = "output" if layer == max(table) else f"layer {layer + 1}"
            if c["saturated"]:
                words.append(f"{name} saturated (within 0.1 bit of log2 N = {ceiling:.2f} at every capture)")
                continue
            found += c["fall"] >= at_least
            words.append(f"{name} {c['peak']:.2f} (epoch {c['peak_epoch']}) -> {c['final']:.2f}: falls {c['fall']:.2f}")
        ok &= found >= need
        parts.append(f"{run.path.name} ({split} set, N = {n}): " + "; ".join(words))
    return f"{group}: " + " | ".join(parts), \
        f">= {at_least} bit fall in {need} of the last {layers} layers, every run ({source})", ok


CHECKS = {"all_fit": check_all_fit, "rises_with_p": check_rises_with_p, "chance": check_chance,
          "random_breaks_first": check_random_breaks_first, "information_terms": check_information_terms,
          "random_test_chance": check_random_test_chance, "overlap_bounds": check_overlap_bounds,
          "info_bounds": check_info_bounds, "output_ity": check_output_ity, "ixt_fall": report_ixt_fall,
          "collapses": report_collapses, "table": check_table,
          "final_train_acc": report_final_train_acc, "train_acc_at_least": check_final_train_acc,
          "compression": check_compression}


# -- the page ---------------------------------------------------------------------------------

def write_page(results: dict, figures: list[tuple[str, Path]], path: Path) -> Path:
    from .report import _img
    mark = {True: "pass", False: "FAIL", None: "reported"}
    rows = "".join(f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(str(c['value']))}</td>"
                   f"<td>{html.escape(str(c['expected']))}</td><td>{mark[c['pass']]}</td></tr>"
                   for c in results["checks"])
    figs = "".join(f"<figure>{_img(p)}<figcaption>{html.escape(t)}: {html.escape(p.name)}</figcaption></figure>"
                   for t, p in figures)
    notes = html.escape(results["notes"]).replace("\n", "<br>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}img{max-width:100%}"
             "figure{display:inline-block;margin:8px}")
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{results['study']}</title><style>{style}</style>"
        f"</head><body><h1>{html.escape(results['study'])} ({results['scale']} scale)</h1>"
        f"<p>{html.escape(results['reproduces'])}</p><p><code>{html.escape(results['command'])}</code>: "
        f"{results['seconds']:.0f} s this call, {results['compute_seconds']:.0f} s of training, evaluation and "
        f"measurement in all its runs; rotelab {results['version']}</p>"
        f"<h2>Checks</h2><table><tr><th>check</th><th>value</th><th>expected</th><th></th></tr>{rows}</table>"
        f"<h2>Figures</h2>{figs}<h2>Notes</h2><p>{notes}</p></body></html>")
    return path


def publish(out, docs) -> Path:
    """Copy a finished study's results and figures into a docs folder (`docs/results/NAME.json`,
    `docs/figures/NAME_*.png`, each PNG under 300 kB) and rewrite `docs/reproductions.md` from every
    study published there."""
    out, docs = Path(out), Path(docs)
    results = json.loads((out / "results.json").read_text())
    (docs / "results").mkdir(parents=True, exist_ok=True)
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    for old in (docs / "figures").glob(f"{results['study']}_*.png"):   # a figure the study no longer makes
        old.unlink()
    figures = []
    for name in results.get("figures", []):
        dst = docs / "figures" / f"{results['study']}_{Path(name).name}"
        _small_png(out / "figures" / name, dst)
        figures.append(dst.name)
    results["figures"] = figures
    atomic_write_json(docs / "results" / f"{results['study']}.json", results)
    page = ["# Reproductions", "",
            "Each study below was run with `rotelab reproduce NAME` at its cpu scale on a 2-core CPU (no GPU).",
            "Numbers in *expected* are the original papers' (or the closed form's); *value* is what the run gave.",
            "Times are the summed time of the study's runs (training, evaluation and information captures;",
            "on 2 cores two runs can go at once with `--jobs 2`). `rotelab reproduce --list` gives every study",
            "and scale.", ""]
    for f in sorted((docs / "results").glob("*.json")):
        r = json.loads(f.read_text())
        mark = {True: "pass", False: "**fail**", None: "reported"}
        page += [f"## {r['study']}", "", r.get("reproduces", ""), "",
                 f"`{r['command']}`: {r.get('compute_seconds', r['seconds']) / 60:.0f} min of training, evaluation and "
                 "measurement; "
                 f"rotelab {r['version']}.", "",
                 "| check | value | expected | |", "| --- | --- | --- | --- |"]
        page += [f"| {c['name']} | {c['value']} | {c['expected']} | {mark[c['pass']]} |".replace("\n", " ")
                 for c in r["checks"]]
        page += [""] + [f"![{name}](figures/{name})" for name in r.get("figures", [])] + [""]
        page += ["**Notes.** " + r["notes"].strip(), ""]
    (docs / "reproductions.md").write_text("\n".join(page) + "\n")
    return docs / "reproductions.md"


def _small_png(src: Path, dst: Path, limit: int = 300_000):
    """Copy a PNG, redrawn smaller (fewer pixels, fewer colors) until it is under `limit` bytes."""
    shutil.copyfile(src, dst)
    if dst.stat().st_size <= limit:
        return
    from PIL import Image
    img = Image.open(src).convert("RGB")
    scale = 1.0
    while dst.stat().st_size > limit and scale > 0.2:
        scale *= 0.8
        small = img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        small.quantize(colors=128).save(dst, optimize=True)


def summary_line(results: dict) -> str:
    passed = sum(c["pass"] is True for c in results["checks"])
    judged = sum(c["pass"] is not None for c in results["checks"])
    reported = len(results["checks"]) - judged
    return (f"{results['study']} ({results['scale']}): {passed} of {judged} checks pass"
            + (f", {reported} reported" if reported else "") + f", {results['seconds']:.0f} s "
            f"({results['compute_seconds']:.0f} s of training, evaluation and measurement in its runs)")
