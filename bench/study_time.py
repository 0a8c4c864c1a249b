"""Time to a figure: the grid of the zhang-fig1 study (cpu scale: 9 corruptions x 4 seeds, MLP 1x512 on a
10k Fashion-MNIST subset) cut to a fixed number of epochs per point, run four ways in one command:

  sequential       one point after another in this process (--jobs 1)
  jobs             the local executor with one worker per core
  vectorized       --vectorize-seeds: the points trained as one stacked model, in this process
  vectorized_jobs  both

    python bench/study_time.py [--epochs 5] [--quick]

Goal: the whole grid in at most 0.55x of the sequential time on 2 cores. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402

from rotelab.reproduce import load_study  # noqa: E402
from rotelab.plan import execute, usable_cores  # noqa: E402
from rotelab.sweep import point_plans, sweep_points  # noqa: E402


def grid(scale: str, epochs: int, out: Path) -> dict:
    step = load_study("zhang-fig1").steps(scale)[0]
    base = {**step["base"], "epochs": epochs, "until_train_acc": None, "checkpoint_every": 30.0}
    return {"protocol": step["protocol"], "out": str(out), "base": base, "axes": step["axes"]}


def timed(spec: dict, jobs: int, vectorize: bool) -> float:
    protocol, points = sweep_points(spec)
    t = time.perf_counter()
    results = execute(point_plans(protocol, points), "local", jobs, vectorize=vectorize)
    assert all(r["state"] == "done" for r in results), [r for r in results if r["state"] != "done"][:1]
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5, help="epochs per point")
    ap.add_argument("--quick", action="store_true", help="the smoke scale's grid, 1 epoch: checks the bench runs")
    args = ap.parse_args(argv)
    scale, epochs = ("smoke", 1) if args.quick else ("cpu", args.epochs)
    cores = usable_cores()
    from rotelab.config import FitConfig
    from rotelab.data import load_data
    load_data(FitConfig(**{k: v for k, v in grid(scale, 1, Path("."))["base"].items()}))   # data cached first
    figures = {"scale": scale, "epochs_per_point": epochs, "jobs": cores}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm = grid(scale, 1, tmp / "warm")   # first-call costs (imports, caches) out of every clock
        warm["axes"] = {k: v[:1] for k, v in warm["axes"].items()}
        timed(warm, 1, False)
        for name, jobs, vec in (("sequential", 1, False), ("jobs", cores, False), ("vectorized", 1, True),
                                ("vectorized_jobs", cores, True)):
            spec = grid(scale, epochs, tmp / name)
            figures["points"] = len(sweep_points(spec)[1])
            figures[f"{name}_s"] = round(timed(spec, jobs, vec), 2)
    for name in ("jobs", "vectorized", "vectorized_jobs"):
        figures[f"{name}_over_sequential"] = round(figures[f"{name}_s"] / figures["sequential_s"], 3)
    figures["best_over_sequential"] = min(figures[f"{n}_over_sequential"] for n in ("jobs", "vectorized", "vectorized_jobs"))
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
