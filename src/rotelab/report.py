"""What to draw for a path, and the HTML pages: `rotelab plot` and `rotelab report`.

One rule for figures: plots.py only draws (data in, PNG out); this module decides what to draw for a
run, a folder of runs that belong together (infoplane seeds, a noise ramp) or a folder of independent
runs (a sweep, a study); a protocol's own figures are its Folder and StudyParts functions, which
call plots.py. `rotelab report` writes a self-contained HTML page (figures embedded as PNG data), the
PNGs beside it, and a CSV of final metrics: each protocol's report section over its runs (fit:
Zhang et al.'s Fig. 1; infoplane: information planes; noise: the ramp) and each run's own figures.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import base64
from .protocol import load_protocols, protocol_of
from .store import RunDir, StoreError, find_runs, runs_in, stored_file

# -- HTML pages (`rotelab report`, `rotelab reproduce`): one style, figures embedded -----------------

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}img{max-width:100%}"
         "figure{display:inline-block;margin:8px}")


def img(path: Path) -> str:
    """A PNG embedded in the page (the page stands alone)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def write_page(path: Path, title: str, body: str) -> Path:
    """A whole page: `body` is HTML already."""
    Path(path).write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                          f"<style>{STYLE}</style></head><body>{body}</body></html>")
    return Path(path)


# -- what to draw -----------------------------------------------------------------------------------

def plot_paths(paths) -> list[Path]:
    """Figures of each path (`rotelab plot`), as its protocol draws them: a folder of independent
    runs gets the report."""
    out, groups = [], {}
    for p in map(Path, paths):
        dirs = runs_in(p)
        if not dirs and not (p.is_dir() and any(p.rglob("config.json"))):
            raise StoreError(p, f"{p} is not a rotelab run directory and holds none")
        protos = {d: protocol_of(d) for d in dirs}
        grouped = [d for d in dirs if (f := protos[d].folder) is not None and f.figures]
        if p not in dirs and not grouped:   # a folder of independent runs
            out.append(report([p], p / "report.html")["html"])
            continue
        for d in dirs:
            out += run_figures(d, strict=True)
        if grouped:
            groups.setdefault(protos[grouped[0]].name, (protos[grouped[0]], []))[1].append(p)
    for proto, folders in groups.values():
        out += proto.folder.figures(folders)
    return out


def run_figures(path, strict: bool = False) -> list[Path]:
    """A trained run's own figures: its curves, the overlap of consecutive epochs' correct sets, and
    what its protocol adds. A run without metrics yet has none (StoreError with `strict`)."""
    from .plots import plot_curves, plot_overlap
    run, proto = RunDir(path), protocol_of(path)
    if not proto.trains:
        return []
    if stored_file(run.metrics_file) is None:   # a published record holds metrics.jsonl.gz
        if strict:
            raise StoreError(run.path, f"{run.path} has no metrics.jsonl yet")
        return []
    return [plot_curves(run), plot_overlap(run), *(proto.figures(run) if proto.figures else [])]


def final_rows(runs: list[RunDir]) -> list[dict]:
    """One row per run: its protocol, the config fields that differ between runs, and final numbers."""
    configs = {r.path: {**r.read_config(), "protocol": r.read_protocol()} for r in runs}
    varying = sorted(k for k in set().union(*configs.values())
                     if len({json.dumps(c.get(k), sort_keys=True) for c in configs.values()}) > 1)
    rows = []
    for r in runs:
        status = r.read_status()
        metrics = r.read_metrics()
        last = metrics[-1] if metrics else {}
        row = {"run": str(r.path), "protocol": configs[r.path]["protocol"], "state": status.get("state"),
               **{k: configs[r.path].get(k) for k in varying if k != "protocol"},
               "epochs": last.get("epoch"), "fit_epoch": status.get("fit_epoch")}
        for k in ("train_loss", "train_acc", "test_loss", "test_acc", "val_acc"):
            if last.get(k) is not None:
                row[k] = last[k]
        rows.append(row)
    return rows


SUMMARIZED = ("fit_epoch", "train_acc", "test_acc", "val_acc")


def by_config_rows(rows: list[dict]) -> list[dict]:
    """final_rows grouped by everything but the seed and the outcome: per configuration the number of
    runs and, per final number, the mean over its seeds with the 95% interval of that mean (Student's t from
    3 seeds, the range of 2) and the interval's kind."""
    from .measures.stats import mean_interval
    outcome = {"run", "state", "epochs", "seed", "train_loss", "test_loss", *SUMMARIZED}
    groups = {}
    for r in rows:
        key = json.dumps({k: v for k, v in r.items() if k not in outcome}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        row = {**json.loads(key), "runs": len(members)}
        for k in SUMMARIZED:
            vals = [m[k] for m in members if isinstance(m.get(k), (int, float))]
            if vals:
                ci = mean_interval(vals)
                row[k] = ci.mean
                row[f"{k}_ci95"] = [ci.lo, ci.hi]
                row[f"{k}_interval"] = f"{ci.kind}, n = {ci.n}"
        out.append(row)
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        v = round(v, 4)
    elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        v = f"{v[0]:.4g} to {v[1]:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    header = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def write_csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return path


def report(paths, out) -> dict:
    """The HTML page, its figures folder and the CSV; returns what was written."""
    out = Path(out)
    runs = find_runs(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.with_suffix("").parent / (out.stem + "_figures")
    rows = final_rows(runs)
    csv_path = write_csv(rows, out.with_suffix(".csv"))
    figures = []   # each protocol's section, from its runs
    for proto in load_protocols().values():
        mine = [r for r in runs if r.read_protocol() == proto.name]
        if mine and proto.study.report_section:
            figures += [(f"{proto.name}: {title}", png) for title, png in proto.study.report_section(mine, folder)]
    per_run = [(r, pngs) for r in runs if (pngs := run_figures(r.path))]   # others: in their protocol's section

    grouped = by_config_rows(rows)
    config_csv = write_csv(grouped, out.with_name(out.stem + "_by_config.csv"))
    parts = [f"<h1>rotelab report</h1><p>{len(runs)} runs. Final metrics: <code>{html.escape(csv_path.name)}</code>; "
             f"by configuration: <code>{html.escape(config_csv.name)}</code></p>",
             "<h2>By configuration</h2><p>Mean over the seeds of each configuration, with the 95% "
             "interval of that mean (<code>_ci95</code>: Student's t from 3 seeds, the range of 2; its kind and n "
             "in <code>_interval</code>).</p>", _table(grouped), "<h2>Every run</h2>", _table(rows)]
    listed = []
    if figures:
        parts.append("<h2>Figures</h2>")
        for title, png in figures:
            parts.append(figure(png, title))
            listed.append(png)
    parts.append("<h2>Runs</h2>")
    for r, pngs in per_run:
        imgs = "".join(figure(p, p.name) for p in pngs)
        parts.append(f"<details><summary>{html.escape(str(r.path))} ({r.read_protocol()})</summary>{imgs}</details>")
        listed += pngs
    write_page(out, "rotelab report", "".join(parts))
    return {"html": out, "csv": csv_path, "by_config": config_csv, "figures": [p for _, p in figures], "embedded": listed}
