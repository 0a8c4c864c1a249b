"""From a path to its figures: what `rotelab plot` draws for a run, a folder of runs that belong
together (infoplane seeds, a noise ramp), or a folder of independent runs (a sweep, a study: its
report). plots.py only draws; this module decides what to draw."""

from __future__ import annotations

from pathlib import Path

from .registry import protocol_of
from .report import report, run_figures
from .store import StoreError, runs_in


def plot_paths(paths) -> list[Path]:
    """Figures of each path, as its protocol draws them."""
    out, groups = [], {}
    for p in map(Path, paths):
        dirs = runs_in(p)
        if not dirs and not (p.is_dir() and any(p.rglob("config.json"))):
            raise StoreError(p, f"{p} is not a rotelab run directory and holds none")
        protos = {d: protocol_of(d) for d in dirs}
        grouped = [d for d in dirs if protos[d].folder and protos[d].folder.figures]
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
