"""Per-example analysis of finished (or running) runs: `rotelab examples`."""

from __future__ import annotations

from pathlib import Path

from typing import Any

import numpy as np

from .config import ConfigError
from .measures.examples import correctness, example_summary, split_names
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
    if run.read_protocol() == "noise":
        out["noise_fate"] = breaking_summary(Run(run.path).noise_fate())
    return out


def breaking_summary(fate) -> dict:
    """Median breaking alpha of clean and corrupted examples (those right at the first noise level);
    the effect size, P(a corrupted example breaks before a clean one) (ties half), with a two-sided
    Mann-Whitney U test of the two; and, within each group and pooled, Spearman's correlation of the
    breaking alpha with the training run's forgetting events and first-learned epoch (pooled, the
    correlation mixes the groups' difference in with any within-group relation)."""
    from scipy.stats import mannwhitneyu, spearmanr
    right = fate[fate.breaking_alpha.notna()]
    groups = {"clean": right[~right.corrupted.astype(bool)], "corrupted": right[right.corrupted.astype(bool)]}
    parts = {name: g.breaking_alpha.to_numpy() for name, g in groups.items()}
    out: dict[str, Any] = {name: {"examples": int(len(v)), "median_breaking_alpha": float(np.median(v)) if len(v) else None}
           for name, v in parts.items()}
    if all(len(v) for v in parts.values()):
        test = mannwhitneyu(parts["corrupted"], parts["clean"], alternative="two-sided")
        out["mann_whitney_p"] = float(test.pvalue)
        out["prob_corrupted_first"] = 1 - float(test.statistic) / (len(parts["corrupted"]) * len(parts["clean"]))
    for name, g in {**groups, "all": right}.items():
        if len(g) > 2:
            out.setdefault(name, {})
            for col in ("forgetting_events", "first_learned"):
                if col in g and g[col].nunique() > 1 and g.breaking_alpha.nunique() > 1:
                    out[name][f"spearman_{col}"] = float(spearmanr(g.breaking_alpha, g[col]).statistic)
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
    from .errors import ConfigError
    from .protocol import protocol_of
    from .runs import Run
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
