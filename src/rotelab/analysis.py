"""Per-example analysis of finished (or running) runs: `rotelab examples`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ConfigError
from .measures.examples import correctness, example_summary, split_names
from .store import Run, RunDir, StoreError, atomic_write_json


def summarize_examples(run: RunDir) -> dict:
    if not run.path.is_dir():
        raise StoreError(run.path, f"{run.path} does not exist")
    if not run.examples_file.is_file():
        raise ConfigError("runs", f"{run.path} has no examples.npz; runs record it unless --example-record none")
    ex = run.read_examples()
    out = {"source": str(ex["source"]),
           **{s: example_summary(correctness(ex, s), ex["epochs"], ex[f"{s}_corrupted"]) for s in split_names(ex)}}
    if run.read_protocol() == "noise":
        out["noise_fate"] = breaking_summary(Run(run.path).noise_fate())
    return out


def breaking_summary(fate) -> dict:
    """Median breaking alpha of clean and corrupted examples (those right at the first noise level),
    and a two-sided Mann-Whitney U test of the two."""
    from scipy.stats import mannwhitneyu
    right = fate[fate.breaking_alpha.notna()]
    parts = {name: right[right.corrupted == flag].breaking_alpha.to_numpy() for name, flag in
             (("clean", False), ("corrupted", True))}
    out = {name: {"examples": int(len(v)), "median_breaking_alpha": float(np.median(v)) if len(v) else None}
           for name, v in parts.items()}
    if all(len(v) for v in parts.values()):
        out["mann_whitney_p"] = float(mannwhitneyu(parts["corrupted"], parts["clean"], alternative="two-sided").pvalue)
    return out


def examples_report(paths, figure: str | None = None) -> list[Path]:
    """examples_summary.json and figures per run, and one figure of all runs' oscillation curves."""
    from . import plots
    runs = [RunDir(p) for p in paths]
    out = []
    for run in runs:
        summary = summarize_examples(run)
        atomic_write_json(run.path / "examples_summary.json", summary)
        out.append(run.path / "examples_summary.json")
        out += plots.plot_example_dynamics(run)
    target = Path(figure) if figure else runs[0].figures / "overlap_runs.png"
    out.append(plots.plot_overlap_runs(runs, target))
    return out
