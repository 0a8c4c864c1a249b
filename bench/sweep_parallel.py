"""The local executor keeps the cores busy: a grid of 8 small runs with --jobs = cores against the
same grid one point after another (--jobs 1), in one command.

    python bench/sweep_parallel.py [--epochs 60]

Ends with one JSON line of figures (target: parallel_over_sequential <= 0.6 on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402

from rotelab.sweep import sweep  # noqa: E402

GRID = """
protocol = "fit"
[base]
dataset = "mnist1d"
model = "mlp"
widths = [256, 256]
epochs = {epochs}
lr = 0.05
hist_every = 0
[axes]
corrupt = ["labels=0.0", "labels=1.0"]
seed = {{from = 0, to = 3}}
"""


def timed(grid: Path, out: Path, jobs: int) -> float:
    t = time.perf_counter()
    results = sweep(grid, str(out), jobs=jobs)
    assert all(r["state"] == "done" for r in results), results
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 2
    cores = os.cpu_count() or 1
    from rotelab.config import FitConfig
    from rotelab.data import load_data
    load_data(FitConfig(dataset="mnist1d"))   # generated once and cached on disk before either clock
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "grid.toml"
        grid.write_text(GRID.format(epochs=args.epochs))
        sequential = timed(grid, Path(tmp) / "seq", 1)
        parallel = timed(grid, Path(tmp) / "par", cores)
    figures = {"points": 8, "epochs": args.epochs, "jobs": cores, "sequential_s": round(sequential, 2),
               "parallel_s": round(parallel, 2), "parallel_over_sequential": round(parallel / sequential, 3)}
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
