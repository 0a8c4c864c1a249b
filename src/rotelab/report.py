"""`rotelab report`: figures and tables from any set of finished run directories.

Writes a self-contained HTML page (figures embedded as PNG data), the PNGs beside it, and a CSV of
final metrics. Figures: Zhang et al.'s Fig. 1 from the fit runs it finds ((a) training loss against
step per corruption, (b) epochs to fit the training set against label corruption, (c) test error
against label corruption; means and spread over seeds) and each run's own figures (`rotelab plot`).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .config import ConfigError, parse_corruption
from .plots import plt, save_figure
from .store import RunDir

PROTOCOL_RUNS = ("fit", "forget", "infoplane", "noise")


def find_runs(paths) -> list[RunDir]:
    """Every run directory at or below the given paths."""
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError("runs", f"{p} does not exist")
        for cfg in sorted([p / "config.json"] if (p / "config.json").is_file() else p.rglob("config.json")):
            try:
                if json.loads(cfg.read_text()).get("protocol") in PROTOCOL_RUNS:
                    runs.append(RunDir(cfg.parent))
            except (OSError, json.JSONDecodeError):
                continue
    if not runs:
        raise ConfigError("runs", f"no rotelab run directories under {', '.join(map(str, paths))}")
    return runs


def corruption_of(cfg: dict) -> tuple[str, float]:
    """(kind, p) of a run's config."""
    return parse_corruption(cfg.get("corrupt", "none"))


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


def write_csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return path


def _steps_per_epoch(run: RunDir, cfg: dict) -> int | None:
    if run.examples_file.is_file():
        with np.load(run.examples_file) as z:
            if "n_train" in z.files:
                return math.ceil(int(z["n_train"]) / cfg["batch_size"])
    return None


def zhang_figures(runs: list[RunDir], folder: Path) -> list[tuple[str, Path]]:
    """Zhang et al. Fig. 1 (a), (b), (c) from the fit runs, grouped by corruption and level."""
    fits = [r for r in runs if r.read_protocol() == "fit"]
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
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (spec, in_steps), series in sorted(curves.items()):
        n = min(len(s[0]) for s in series)
        ax.plot(series[0][0][:n], np.mean([s[1][:n] for s in series], axis=0), label=f"{spec} ({len(series)} runs)")
    ax.set(xlabel="step" if all(k[1] for k in curves) else "epoch", ylabel="training loss",
           title="(a) learning curves per corruption")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out.append(("Zhang et al. Fig. 1a: training loss", save_figure(fig, folder / "zhang_1a_loss.png")))
    # (b) convergence time and (c) test error against the label-corruption level
    by_level = defaultdict(list)
    for r in fits:
        cfg = r.read_config()
        kind, p = corruption_of(cfg)
        if kind in ("labels", "none"):
            status = r.read_status()
            last = r.read_metrics()[-1]
            by_level[p].append((status.get("fit_epoch"), 1 - last["test_acc"]))
    if by_level:
        levels = sorted(by_level)
        for key, idx, ylabel, title, name in (
                ("b", 0, "epochs to fit the training set", "(b) convergence time", "zhang_1b_convergence.png"),
                ("c", 1, "test error", "(c) test error", "zhang_1c_test_error.png")):
            fig, ax = plt.subplots(figsize=(5.5, 4))
            xs, means, lo, hi = [], [], [], []
            for p in levels:
                vals = [v[idx] for v in by_level[p] if v[idx] is not None]
                if vals:
                    xs.append(p)
                    means.append(np.mean(vals))
                    lo.append(np.min(vals))
                    hi.append(np.max(vals))
            if xs:
                ax.errorbar(xs, means, yerr=[np.subtract(means, lo), np.subtract(hi, means)], marker="o", capsize=3)
            ax.set(xlabel="label corruption p", ylabel=ylabel, title=f"{title} (mean, min-max over seeds)")
            ax.grid(alpha=0.3)
            out.append((f"Zhang et al. Fig. 1{key}: {ylabel}", save_figure(fig, folder / name)))
    return out


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def report(paths, out) -> dict:
    """The HTML page, its figures folder and the CSV; returns what was written."""
    from .plots import plot_runs
    out = Path(out)
    runs = find_runs(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.with_suffix("").parent / (out.stem + "_figures")
    rows = final_rows(runs)
    csv_path = write_csv(rows, out.with_suffix(".csv"))
    figures = zhang_figures(runs, folder)
    per_run = []
    for r in runs:
        if r.read_protocol() == "noise":
            continue   # ramp runs are drawn together, below
        try:
            pngs = plot_runs([r.path])
        except ConfigError:
            continue
        per_run.append((r, pngs))
    ramp_parents = sorted({r.path.parent for r in runs if r.read_protocol() == "noise"})
    ramp_figs = [plot_runs([p]) for p in ramp_parents]

    table = "".join("<tr>" + "".join(f"<td>{html.escape(str(v if not isinstance(v, float) else round(v, 4)))}</td>"
                                     for v in r.values()) + "</tr>" for r in rows)
    header = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    parts = [f"<h1>rotelab report</h1><p>{len(runs)} runs. Final metrics: <code>{html.escape(csv_path.name)}</code></p>",
             f"<table><tr>{header}</tr>{table}</table>"]
    listed = []
    if figures:
        parts.append("<h2>Zhang et al. (2017), Fig. 1</h2>")
        for title, png in figures:
            parts.append(f"<figure>{_img(png)}<figcaption>{html.escape(title)}</figcaption></figure>")
            listed.append(png)
    for parent, pngs in zip(ramp_parents, ramp_figs):
        parts.append(f"<h2>noise ramp: {html.escape(str(parent))}</h2>")
        for png in pngs:
            parts.append(f"<figure>{_img(png)}<figcaption>{html.escape(png.name)}</figcaption></figure>")
            listed.append(png)
    parts.append("<h2>Runs</h2>")
    for r, pngs in per_run:
        imgs = "".join(f"<figure>{_img(p)}<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in pngs)
        parts.append(f"<details><summary>{html.escape(str(r.path))} ({r.read_protocol()})</summary>{imgs}</details>")
        listed += pngs
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}figure{display:inline-block;margin:8px}")
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>rotelab report</title>"
                   f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return {"html": out, "csv": csv_path, "figures": [p for _, p in figures], "embedded": listed}
