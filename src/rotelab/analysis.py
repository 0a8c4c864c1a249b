"""Per-example analysis of finished (or running) runs: `rotelab examples`."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError
from .measures.examples import correctness, example_summary, split_names
from .store import RunDir, StoreError, atomic_write_json


def summarize_examples(run: RunDir) -> dict:
    if not run.path.is_dir():
        raise StoreError(run.path, f"{run.path} does not exist")
    if not run.examples_file.is_file():
        raise ConfigError("runs", f"{run.path} has no examples.npz; runs record it unless --example-record none")
    ex = run.read_examples()
    return {"source": str(ex["source"]),
            **{s: example_summary(correctness(ex, s), ex["epochs"], ex[f"{s}_corrupted"]) for s in split_names(ex)}}


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
