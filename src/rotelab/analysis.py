"""Per-example analysis of finished (or running) runs: `rotelab examples`."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError
from .measures.examples import correctness, example_summary, split_names
from .protocol import protocol_of
from .runs import Run
from .store import RunDir, StoreError, atomic_write_json


def summarize_examples(run: RunDir) -> dict:
    if not run.path.is_dir():
        raise StoreError(run.path, f"{run.path} does not exist")
    if not run.examples_file.is_file():
        raise ConfigError("runs", f"{run.path} has no examples.npz; runs record it unless --example-record none")
    ex = run.read_examples()
    out = {"source": str(ex["source"]),
           **{s: example_summary(correctness(ex, s), ex["epochs"], ex[f"{s}_corrupted"]) for s in split_names(ex)}}
    summary = protocol_of(run).examples_summary
    if summary is not None:
        out.update(summary(Run(run.path)))
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


def examples_by(path, signal: str, k: int = 20, lowest: bool = False):
    """The k examples of a run (Run.per_example) or of a folder whose protocol has a per-example table
    (memorize) with the highest value of `signal` (the lowest with `lowest`): a DataFrame of their
    rows. A signal the records lack is one clear error naming the flag that records it."""
    from .store import is_run, runs_in
    path = Path(path)
    dirs = runs_in(path)
    folder = protocol_of(dirs[0]).folder if dirs and not is_run(path) else None
    if is_run(path):
        table = Run(path).per_example()
    elif folder is not None and folder.per_example is not None:
        table = folder.per_example(path)
    else:
        raise ConfigError("runs", f"{path} is neither a run nor a folder with a per-example table "
                                  "(a finished memorize folder)")
    if signal not in table:
        needs = {"aum": "--example-margins", "margin_final": "--example-margins", "confidence": "--example-margins",
                 "variability": "--example-margins", "correctness": "--example-margins", "prob_final": "--example-margins",
                 "cleanlab_quality": "rotelab memorize --signals", "mem": "rotelab memorize"}
        hint = f"; record it with {needs[signal]}" if signal in needs else ""
        raise ConfigError("--by", f"{path} has no per-example {signal!r}{hint}; it has "
                                  f"{', '.join(c for c in table.columns if c not in ('example',))}")
    return table.sort_values(signal, ascending=lowest, kind="stable", na_position="last").head(k)
