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
    kind = "zhang_fig1"                   # a figure a protocol registers (Protocol.study.figures)
    step = "fits"
    [[checks]]
    name = "every point fits its training set"
    kind = "all_fit"                      # a check a protocol registers (Protocol.study.checks)
    step = "fits"

Output: DIR/<step>/... (the runs), DIR/figures/*.png, DIR/results.json and DIR/report.html.
"""

from __future__ import annotations

import contextlib
import html
import inspect
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .version import __version__
from .config import ConfigError, load_config_file
from .store import RunDir, atomic_write_json, finished_runs_only, runs_in, source_version

STUDIES = Path(__file__).parent / "studies"
SCALES = ("smoke", "cpu", "paper")
# Where a step's `data_file` is looked for when it is not a path that exists: $ROTELAB_DATA, then ./data.
DATA_DIRS = ("data",)


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
    dirs = [("$ROTELAB_DATA", os.environ["ROTELAB_DATA"])] if os.environ.get("ROTELAB_DATA") else []
    for shown, d in dirs + [(f"./{d}", d) for d in DATA_DIRS]:
        if (Path(d) / name).is_file():
            base["data_file"] = str((Path(d) / name).resolve())
            notes.append(f"data: {name} read from {shown}")
            return
    base.pop("data_file")
    notes.append(f"data: {name} not found (looked in $ROTELAB_DATA and ./data); "
                 "the generated task of the same shape is used instead")


class Context:
    """What checks and figures see: the study, its output folder and each step's runs."""

    def __init__(self, study: Study, scale: str, out: Path, steps: list[dict]):
        self.study, self.scale, self.out, self.steps = study, scale, out, {s["name"]: s for s in steps}
        self.figures = out / "figures"
        self._points: dict[str, list[str]] = {}   # step -> its points' folder names (planned once)
        self._read: dict = {}   # once(): what several checks and figures read from the same runs

    def step_dir(self, step: str) -> Path:
        if step not in self.steps:
            raise ConfigError(str(self.study.path), f"no step named {step!r}")
        return self.out / step

    def groups(self, step: str) -> list[Path]:
        """The step's output folders: one per sweep point, or the step's own folder for a step over an
        earlier step's runs (a noise ramp)."""
        d = self.step_dir(step)
        if self.steps[step].get("sources"):
            return [d]
        if not d.is_dir():
            return []
        spec = self.steps[step]
        if not spec.get("axes"):
            return sorted(p for p in d.iterdir() if p.is_dir() and runs_in(p))
        if step not in self._points:   # the step's own points: another folder lying there is not read
            from .sweep import sweep_points
            _, points = sweep_points({"protocol": spec["protocol"], "out": str(d), "base": spec["base"],
                                      "axes": spec["axes"]})
            self._points[step] = [pt.name for pt in points]
        return sorted(p for p in (d / name for name in self._points[step]) if p.is_dir() and runs_in(p))

    def once(self, key: tuple, read: Callable[[], Any]):
        """read(), once per drawing for a key: what several checks and figures of a study read from the
        same runs (the key names the runs, so that runs added since are read anew)."""
        if key not in self._read:
            self._read[key] = read()
        return self._read[key]

    def runs(self, step: str) -> list[RunDir]:
        return [RunDir(r) for g in self.groups(step) for r in runs_in(g)]

    def group_runs(self, step: str, group: str) -> list[RunDir]:
        """The runs of one group (sweep point) of a step, by its folder name."""
        return [RunDir(d) for g in self.groups(step) if g.name == group for d in runs_in(g)]

    def copy(self, src: Path, dst: Path) -> Path:
        """A figure copied under the study's figures/ (where its report and publish find it)."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst


def study_tables() -> tuple[dict, dict]:
    """Every registered protocol's study figures and checks by kind (a study file names them)."""
    from .protocol import load_protocols
    figures, checks = {}, {}
    for proto in load_protocols().values():
        for table, own in zip((figures, checks), proto.study.tables()):
            for kind, fn in own.items():
                if kind in table:
                    raise ValueError(f"two protocols register the study kind {kind!r}")
                table[kind] = fn
    return figures, checks


def not_done(plans, out: Path, stale: list[Path]) -> list[str]:
    """Each planned run that is not done, as "path (state)" relative to the study's folder; a stale
    one (made with other settings than the design's) says its first difference and joins `stale`."""
    from .plan import run_state, stale_fields
    rows = []
    for r in (r for p in plans for r in p.runs):
        state = run_state(r.path, r.config)
        if state == "stale":
            stale.append(r.path)
            state = f"stale: {stale_fields(r)[0]}"
        if state != "done":
            rows.append(f"{r.path.relative_to(out)} ({state})")
    return rows


def run_steps(study: Study, scale: str, out: Path, executor: str = "local", jobs: int | None = None,
              address=None, cpus_per_point: float = 1, gpus_per_point: float | None = None,
              data_root: str | None = None, device: str | None = None,
              dry_run: bool = False, notes: list | None = None, missing: list | None = None,
              only: list[str] | None = None, stale: list | None = None) -> list[dict]:
    """Run (or skip, or resume) every step in order (plan.execute); returns the steps as run. With a
    `missing` list, run nothing: each point that is not done is added to it as "path (state)", and
    each stale run's path to `stale`; with `only` (step names) as well, run those steps and add the
    other steps' points that are not done."""
    from .plan import described_state, execute, plan
    from .sweep import point_plans, record_points, sweep_points
    notes = notes if notes is not None else []
    stale = stale if stale is not None else []
    steps = study.steps(scale)
    unknown = sorted(set(only or ()) - {s["name"] for s in steps})
    if unknown:
        raise ConfigError("--steps", f"study {study.name} has no step {', '.join(map(repr, unknown))}; its steps are "
                                     f"{', '.join(s['name'] for s in steps)}")
    for step in steps:
        run_it = (missing is None or only is not None) and (only is None or step["name"] in only)
        if data_root:
            step["base"]["data_root"] = data_root
        if device:   # where runs train is bookkeeping: a run made on another device is not stale
            step["base"]["device"] = device
        # where this machine finds the data is said on the console; what the runs used is noted from
        # their configs when the study is drawn (data_notes), so a redraw elsewhere cannot contradict them
        found: list[str] = []
        _resolve_data_file(step["base"], found)
        step["base"], step["axes"] = with_out(step["base"], out), with_out(step.get("axes", {}), out)
        if run_it and not dry_run:
            for line in found:
                print(line)
        where = out / step["name"]
        if step.get("sources"):   # a protocol run over an earlier step's runs (a noise ramp): one folder
            from .protocol import get_protocol
            sources = [str(r.path) for r in Context(study, scale, out, steps).runs(step["sources"])] \
                if (out / step["sources"]).is_dir() else []
            print(f"{'step':8s} {where} ({len(sources)} source runs)")
            if dry_run:
                continue
            cfg = get_protocol(step["protocol"]).config.from_dict({**step["base"], "progress": False})
            plans = [plan(step["protocol"], cfg, where, sources=sources)]
            if not run_it:
                if missing is not None:
                    missing += not_done(plans, out, stale)
                continue
        else:
            protocol, points = sweep_points({"protocol": step["protocol"], "out": str(where), "base": step["base"],
                                             "axes": step["axes"]})
            plans = point_plans(protocol, points)
            for p in plans:
                print(described_state(p))
            if dry_run:
                continue
            if not run_it:
                if missing is not None:
                    missing += not_done(plans, out, stale)
                continue
            record_points(protocol, points)
        results = execute(plans, executor if executor == "ray" else "local", jobs or 1, address=address,
                          cpus=cpus_per_point, gpus=gpus_per_point)
        busy = sorted({r["pid"] for r in results if r["state"] == "running"})
        if busy:
            raise ConfigError("--out", f"points of step {step['name']} are being run by another process (PID "
                                       f"{', '.join(busy)}); wait for it to end, then run this study again")
        failed = [r for r in results if r["state"] in ("failed", "stale")]
        if failed:
            raise RuntimeError(f"{len(failed)} points of step {step['name']} failed or are stale; first: "
                               f"{failed[0]['path']}: {failed[0]['error']}")
    return steps


def reproduce(name, scale: str | None = None, out=None, dry_run: bool = False, finished: bool = False,
              steps_only: list[str] | None = None, **run_options) -> dict:
    """Run a study at a scale (default: cpu where the study has it, else its largest), then write its
    figures, results.json and report.html. With `finished`, run nothing: the checks and figures read
    the runs that are done, and results.json lists the points of the design that are not. With
    `steps_only` (step names), run those steps alone, then draw as with `finished`."""
    study = load_study(name)
    scale = scale or ("cpu" if "cpu" in study.scales else list(study.scales)[-1])
    if scale not in study.scales:
        raise ConfigError("--scale", f"study {study.name} has scales {', '.join(study.scales)}, not {scale!r}")
    out = Path(out or f"runs/reproduce/{study.name}-{scale}")
    t0 = time.perf_counter()
    notes: list[str] = []
    missing: list[str] | None = [] if finished or steps_only else None
    stale: list[Path] = []   # runs made with other settings than the design's: never drawn
    steps = run_steps(study, scale, out, dry_run=dry_run, notes=notes, missing=missing,
                      only=None if finished else steps_only, stale=stale, **run_options)
    if dry_run:
        return {}
    with finished_runs_only(leave_out=stale) if missing is not None else contextlib.nullcontext():
        results, figures = _draw(study, scale, out, steps, notes, t0)
    if missing is not None:
        results["missing"] = missing
        results["command"] += " --finished" if finished else f" --steps {','.join(steps_only or [])}"
    atomic_write_json(out / "results.json", results)
    write_study_page(results, figures, out / "report.html")
    return {**results, "out": str(out)}


def _draw(study: Study, scale: str, out: Path, steps: list[dict], notes: list[str], t0: float) -> tuple[dict, list]:
    """A study's results (checks and what they cost) and its figures (title, path), from its runs."""
    ctx = Context(study, scale, out, steps)
    figure_kinds, check_kinds = study_tables()
    figures = []
    for fig in study.spec.get("figures", []):
        figures += [(fig.get("title", fig["kind"]), p) for p in figure_kinds[fig["kind"]](ctx, **_args(fig))]
    checks = []
    for chk in study.spec.get("checks", []):
        fn, args = check_kinds[chk["kind"]], _args(chk)
        own_source = "source" in inspect.signature(fn).parameters
        source = None if own_source else args.pop("source", None)
        result = fn(ctx, **args)
        value, expected, passed = result
        numbers = getattr(result, "numbers", None)
        if source and passed is not None:   # where the expected value comes from, said with it
            expected = f"{expected} ({source})"
        if scale == "smoke":   # a few epochs on tiny data: the claims are not judged there
            expected, passed = f"not judged at smoke scale ({expected})", None
        elif chk.get("reported") and passed is not None:   # a claim measured as a comparison, not judged
            expected, passed = f"reported (the judged claim's test: {expected})", None
        checks.append({"name": chk["name"], "value": value, "expected": expected, "pass": passed,
                       **({"source": chk["source"]} if chk.get("source") else {}),
                       **({"numbers": json_numbers(numbers)} if numbers is not None else {})})
    compute = 0.0   # every epoch's training and evaluation, and the information captures (seconds_info, cumulative)
    trained_at = set()   # the source versions the runs were trained with (git describe, when known)
    for step in steps:
        for r in ctx.runs(step["name"]):
            trained_at.add(r.read_environment().get("git") or r.read_environment().get("rotelab", "?"))
            m = r.read_metrics()
            compute += sum(x.get("seconds", 0.0) for x in m) + (m[-1].get("seconds_info", 0.0) if m else 0.0)
    notes = [*notes, *data_notes(r.read_config() for step in steps for r in ctx.runs(step["name"]))]
    results = {"study": study.name, "scale": scale, "version": __version__,
               "seconds": round(time.perf_counter() - t0, 1), "compute_seconds": round(compute, 1), "checks": checks,
               "notes": "\n".join([study.spec.get("notes", "").strip(), *notes]).strip(),
               "reproduces": study.spec.get("reproduces", ""),
               "record_examples": study.spec.get("record_examples", True),
               "figures": [str(Path(png).relative_to(out / "figures")) for _, png in figures],
               "command": f"rotelab reproduce {study.name} --scale {scale}",
               "trained_at": sorted(trained_at), "checked_at": source_version() or __version__}
    return results, figures


def json_numbers(value):
    """A check's numbers as JSON keeps them: NumPy scalars and arrays as numbers and lists, dataclasses
    (an Interval) as dicts, non-finite floats as None (JSON has no inf or NaN)."""
    import dataclasses
    import math
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): json_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_numbers(v) for v in value]
    if hasattr(value, "tolist"):   # NumPy arrays and scalars
        return json_numbers(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def with_out(value, out: Path):
    """A step's values with "{out}" replaced by the study's output folder (a step that reads an earlier
    step's results, e.g. --remove mem:K:{out}/atlas/...)."""
    if isinstance(value, str):
        return value.replace("{out}", str(Path(out).resolve()))
    if isinstance(value, dict):
        return {k: with_out(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [with_out(v, out) for v in value]
    return value


def data_notes(configs) -> list[str]:
    """What data the runs of the 12-bit task were trained on, read from their own configs: the file
    they name (var_u.mat), or the generated task where none names one."""
    files: dict[str, int] = {}
    generated = 0
    for cfg in configs:
        if cfg.get("dataset") != "tishby":
            continue
        if cfg.get("data_file"):
            name = Path(cfg["data_file"]).name
            files[name] = files.get(name, 0) + 1
        else:
            generated += 1
    out = [f"data: {name}, named by the configs of {n} run{'s' * (n != 1)}" for name, n in sorted(files.items())]
    if generated:
        out.append(f"data: the generated 12-bit task (the configs of {generated} run{'s' * (generated != 1)} "
                   "name no data file)")
    return out


def _args(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("kind", "name", "title", "reported")}


# -- figures ----------------------------------------------------------------------------------

def write_study_page(results: dict, figures: list[tuple[str, Path]], path: Path) -> Path:
    from .report import figure, write_page
    mark = {True: "pass", False: "FAIL", None: "reported"}
    rows = "".join(f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(str(c['value']))}</td>"
                   f"<td>{html.escape(str(c['expected']))}</td><td>{mark[c['pass']]}</td></tr>"
                   for c in results["checks"])
    figs = "".join(figure(p, f"{t}: {p.name}") for t, p in figures)
    notes = html.escape(results["notes"]).replace("\n", "<br>")
    return write_page(path, results["study"],
        f"<h1>{html.escape(results['study'])} ({results['scale']} scale)</h1>"
        f"<p>{html.escape(results['reproduces'])}</p><p><code>{html.escape(results['command'])}</code>: "
        f"{results['seconds']:.0f} s this call, {results['compute_seconds']:.0f} s of training, evaluation and "
        f"measurement in all its runs; rotelab {results['version']}</p>"
        + (f"<p><b>Not in these results</b> (the design's points not done yet): "
           f"{html.escape(', '.join(results['missing']))}</p>" if results.get("missing") else "") +
        f"<h2>Checks</h2><table><tr><th>check</th><th>value</th><th>expected</th><th></th></tr>{rows}</table>"
        f"<h2>Figures</h2>{figs}<h2>Notes</h2><p>{notes}</p>")


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
    results["records"] = publish_records(out, docs / "records" / results["study"], results.get("record_examples", True))
    atomic_write_json(docs / "results" / f"{results['study']}.json", results)
    page = ["# Reproductions", "",
            "Each study below was run with `rotelab reproduce NAME` at its cpu scale on a 2-core CPU (no GPU).",
            "*expected* names where its value comes from: the original paper's number, or a rotelab threshold;",
            "a check marked *reported* is a measurement, not a judged claim (it holds by construction, or it",
            "describes a control). *value* is what the runs gave. Times are the summed time of the study's runs",
            "(training, evaluation and information captures; on 2 cores two runs can go at once with",
            "`--jobs 2`). Each study says which source versions trained its runs and which drew its checks and",
            "figures. The suite replays a run of every study's record (`rotelab replay`, its first epoch;",
            "tests/test_records.py): bit for bit where the run recorded the conditions that decide rounding",
            "(CPU kernels, threads) and they match; within 1e-3 where it predates recording them (memorizing-ib,",
            "whose losses then differ by 3e-9; see also reproduce.md on the 2e-3 forgetting run).",
            "`rotelab reproduce --list` gives every study and scale.", ""]
    for f in sorted((docs / "results").glob("*.json")):
        r = json.loads(f.read_text())
        mark = {True: "pass", False: "**fail**", None: "reported"}
        page += [f"## {r['study']}", "", r.get("reproduces", ""), "",
                 f"`{r['command']}`: {r.get('compute_seconds', r['seconds']) / 60:.0f} min of training, evaluation and "
                 "measurement; "
                 f"rotelab {r['version']}" + (f"; runs trained at {', '.join(f'`{v}`' for v in r['trained_at'])}, "
                                              f"checks and figures at `{r['checked_at']}`" if r.get("trained_at") else "")
                 + ".", "",
                 "| check | value | expected | |", "| --- | --- | --- | --- |"]
        page += [f"| {c['name']} | {c['value']} | {c['expected']} | {mark[c['pass']]} |".replace("\n", " ")
                 for c in r["checks"]]
        page += [""] + [f"![{name}](figures/{name})" for name in r.get("figures", [])] + [""]
        page += ["**Notes.** " + r["notes"].strip(), ""]
        if r.get("missing"):
            page += [f"**Not yet run.** {len(r['missing'])} points of the study's design are not in these results "
                     f"(checks and figures read the finished runs only): {', '.join(r['missing'])}.", ""]
        if r.get("records"):
            rec = r["records"]
            bits = ", per-example bits" if r.get("record_examples", True) else ""
            page += [f"**Record.** `{rec['path']}`: {rec['files']} files, {rec['bytes'] / 2**20:.1f} MiB (configs, "
                     f"metrics and information rows{bits}; no checkpoints): `rotelab.load` reads it, and "
                     "every number above can be recomputed from it.", ""]
    (docs / "reproductions.md").write_text("\n".join(page) + "\n")
    return docs / "reproductions.md"


RECORD_FILES = ("config.json", "status.json", "plan.json", "sweep.json", "ramp.json", "summary.json",
                "memorization.json", "results.json")
PACKED_FILES = ("metrics.jsonl", "info.jsonl", "per_example.csv")


def publish_records(out: Path, dst: Path, examples: bool = True) -> dict:
    """The compact record behind a study's figures and numbers, copied into `dst` with the folder
    layout kept, so that `rotelab.load(dst)` and every check read it as they read the runs: each run's
    config, status, metrics and information rows (gzipped JSONL), its per-example bits (examples.npz)
    where its protocol's figures need them (none with `examples` off: a study's `record_examples =
    false` when nothing it reports is per example), and the files a folder of runs writes (plan, sweep,
    summaries, memorize's matrices, estimates without influence, gallery, per-example table and signals
    by training length). No checkpoints, no TensorBoard files.
    Returns the file count and size."""
    import gzip
    if dst.is_dir():
        shutil.rmtree(dst)
    count = size = 0
    for src in sorted(out.rglob("*")):
        rel = src.relative_to(out)
        if not src.is_file() or rel.parts[0] in ("figures",) or any(
                part in ("checkpoints", "tb", "figures", ".resumed") or part.startswith(".") for part in rel.parts):
            continue
        if src.name in PACKED_FILES:
            target, data = dst / rel.parent / (src.name + ".gz"), gzip.compress(src.read_bytes(), mtime=0)
        elif src.suffix == ".gz" and src.name[:-3] in PACKED_FILES:   # published already (a record folder
            target, data = dst / rel, src.read_bytes()                  # republished with --finished)
        elif src.name in RECORD_FILES or src.name in ("matrices.npz", "gallery.npz", "signals_by_length.npz") or (
                src.name == "examples.npz" and examples and _keeps_examples(src)):
            target, data = dst / rel, src.read_bytes()
        elif src.name == "memorization.npz":   # the per-example estimates; influence's top-k (8 MB for
            target, data = dst / rel, _without(src, "infl_")   # 10,000 test examples) is left out
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        count, size = count + 1, size + len(data)
    return {"files": count, "bytes": size, "path": str(dst.relative_to(dst.parent.parent))}   # below docs/


def _without(path: Path, prefix: str) -> bytes:
    """An .npz file's bytes without the arrays whose names start with `prefix`."""
    import io
    import numpy as np
    with np.load(path) as z:
        kept = {k: z[k] for k in z.files if not k.startswith(prefix)}
    buf = io.BytesIO()
    np.savez_compressed(buf, **kept)
    return buf.getvalue()


def _keeps_examples(path: Path) -> bool:
    """Per-example bits are published except for memorize's subset and fold models (matrices.npz
    holds what they contribute)."""
    cfg = json.loads((path.parent / "config.json").read_text()) if (path.parent / "config.json").is_file() else {}
    return cfg.get("role") not in ("model", "fold")


def _small_png(src: Path, dst: Path, limit: int = 300_000):
    """Copy a PNG, redrawn smaller until it is under `limit` bytes: fewer pixels first, and only then
    256 colours with dithering (plain quantization bands a colour bar's gradient into steps)."""
    shutil.copyfile(src, dst)
    if dst.stat().st_size <= limit:
        return
    from PIL import Image
    img = Image.open(src).convert("RGB")
    scale = 1.0
    while dst.stat().st_size > limit and scale > 0.2:
        scale *= 0.85
        small = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS)
        small.save(dst, optimize=True)
        if dst.stat().st_size > limit and scale < 0.75:
            small.quantize(colors=256, dither=Image.Dither.FLOYDSTEINBERG).save(dst, optimize=True)


def summary_line(results: dict) -> str:
    passed = sum(c["pass"] is True for c in results["checks"])
    judged = sum(c["pass"] is not None for c in results["checks"])
    reported = len(results["checks"]) - judged
    return (f"{results['study']} ({results['scale']}): {passed} of {judged} checks pass"
            + (f", {reported} reported" if reported else "") + f", {results['seconds']:.0f} s "
            f"({results['compute_seconds']:.0f} s of training, evaluation and measurement in its runs)"
            + (f"; {len(results['missing'])} points not done, not in these results" if results.get("missing") else ""))
