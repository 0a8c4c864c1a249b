"""Subset models of `rotelab memorize` trained as stacks against the same models one by one, with
the same code (memorize with --stack K and with --stack 1), in one process.

    python bench/memorize_stack.py [--models 16] [--epochs 3] [--quick]

Cases: MLPs 784-32-10 (per-step overhead dominates: stacking should pay, goal 8x) and 784-256-10
(the products dominate: stacking must not lose, goal 1.0x), each model on its own 70% of a
10,000-image subset of Fashion-MNIST (digits where it is not installed), Adam 1e-3, batch 128. Per
case: models per minute both ways (the whole folder: setup, training, estimates), their ratio, the
ratio of the training and evaluation alone (the runs' own seconds), and each way's share of the
GEMM floor (the epoch's matrix products at their exact shapes, timed alone, times models and
epochs) in that training time, and the ratio that floor bounds (one by one's time over the floor: a
stack whose products ran at the floor and cost nothing else would gain that much). The stacked
runs are timed before and after the one-by-one runs (their mean), which brackets drift. Ends with
one JSON line of figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402
from train_throughput import gemm_floor  # noqa: E402

from rotelab.data.sources import DEBIAN_FASHION_MNIST  # noqa: E402
from rotelab.protocols.memorize import MemorizeConfig, memorize  # noqa: E402


def case(name: str, width: int, models: int, epochs: int, data: dict, tmp: Path) -> dict:
    base = dict(**data, widths=[width], optimizer="adam", lr=1e-3, batch_size=128, epochs=epochs,
                models=models, train_fraction=0.7, signals=False, hist_every=0, checkpoint_every=600,
                progress=False)
    memorize(MemorizeConfig(**{**base, "models": 2, "epochs": 1, "stack": 2}), tmp / f"{name}-warm")   # imports, caches

    def timed(stack: int, tag: str) -> tuple[float, float]:
        """Wall seconds of the whole folder, and of its models' training and evaluation alone (the
        runs' own seconds; a stacked run's are its share of the stack's)."""
        t = time.perf_counter()
        runs = memorize(MemorizeConfig(**base, stack=stack), tmp / f"{name}-{tag}")
        wall = time.perf_counter() - t
        return wall, sum(m.get("seconds", 0.0) for r in runs for m in r.read_metrics())

    stacked = [timed(models, "stack-a")]
    alone, alone_train = timed(1, "alone")
    stacked.append(timed(models, "stack-b"))
    t_stack = sum(w for w, _ in stacked) / len(stacked)
    t_stack_train = sum(t for _, t in stacked) / len(stacked)
    n_seen = round(0.7 * data_size(data))
    floor = gemm_floor(n_seen, (data_dim(data), width, 10), repeats=1) * models * epochs
    return {f"{name}_models_per_min_stacked": round(models / t_stack * 60, 1),
            f"{name}_models_per_min_alone": round(models / alone * 60, 1),
            f"{name}_stacked_over_alone": round(alone / t_stack, 2),
            f"{name}_training_stacked_over_alone": round(alone_train / t_stack_train, 2),
            f"{name}_stacked_s": [round(w, 2) for w, _ in stacked], f"{name}_alone_s": round(alone, 2),
            f"{name}_training_s_stacked_alone": [round(t_stack_train, 2), round(alone_train, 2)],
            f"{name}_gemm_floor_share_stacked": round(floor / t_stack_train, 3),
            f"{name}_gemm_floor_share_alone": round(floor / alone_train, 3),
            # a stack cannot train faster than its products alone: the most it can gain over one by one
            f"{name}_training_ratio_bound": round(alone_train / floor, 2)}


def data_size(data: dict) -> int:
    return data.get("subset") or 1438   # digits: 1,438 training images


def data_dim(data: dict) -> int:
    return 784 if data["dataset"] == "fashion-mnist" else 64


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes on digits: checks the bench runs")
    args = ap.parse_args(argv)
    if args.quick or not DEBIAN_FASHION_MNIST.is_dir():
        data = {"dataset": "digits"}
    else:
        data = {"dataset": "fashion-mnist", "subset": 10_000}
    if args.quick:
        args.models, args.epochs = 4, 1
    figures = {"models": args.models, "epochs": args.epochs, "data": data["dataset"]}
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, width in (("mlp32", 32), ("mlp256", 256)):
            figures.update(case(name, width, args.models, args.epochs, data, Path(tmp)))
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
