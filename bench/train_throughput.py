"""Training throughput: rotelab's engine against a loop built the usual way, in one process.

MLP 784-512-10 on Fashion-MNIST (60k), batch 128, SGD with momentum, one epoch.

  reference  torchvision FashionMNIST with per-sample ToTensor + Normalize, a DataLoader, the
             same model and optimizer (torch defaults)
  rotelab    tensors in memory, index-slice batches (engine.train_epoch)

Also: the fraction of the machine's matmul roofline the rotelab epoch reaches (FLOPs of the epoch
over its time, against a large matmul measured here and against a batch-128 matmul of the first
layer's shape), the cost of per-example tracking, and the peak memory of a `rotelab fit` run.

    python bench/train_throughput.py [--data-root DIR] [--epochs 2]

Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import print_figures
import torch.nn.functional as F

from rotelab.config import FitConfig
from rotelab.data import load_data
from rotelab.data.sources import DEBIAN_FASHION_MNIST
from rotelab.engine import Loop, build_optimizer, train_epoch
from rotelab.hooks import ExampleRecorder, MetricsWriter
from rotelab.models import build_model
from rotelab.store import RunDir

BATCH = 128


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops(m: int, k: int, n: int, repeats: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    inner = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timing
    t = best_time(lambda: [a @ b for _ in range(inner)], repeats)
    return 2 * m * k * n * inner / t


def epoch_flops(n: int, widths=(784, 512, 10)) -> float:
    """Training FLOPs of one epoch: forward 2*in*out per layer and example; backward the weight
    gradient (same again) and, for every layer but the first, the input gradient (same again)."""
    total = 0
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        total += 2 * a * b * (2 if i == 0 else 3)
    return total * n


def raw_idx_folder(src: Path, dest: Path) -> Path:
    """torchvision's FashionMNIST layout (uncompressed IDX files under FashionMNIST/raw)."""
    raw = dest / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        for cand in (src / "FashionMNIST" / "raw" / name, src / name):
            if cand.is_file():
                shutil.copy(cand, raw / name)
                break
            if cand.with_suffix(".gz").is_file() or Path(str(cand) + ".gz").is_file():
                with gzip.open(str(cand) + ".gz") as f:
                    (raw / name).write_bytes(f.read())
                break
        else:
            sys.exit(f"no {name} under {src}; install dataset-fashion-mnist or pass --data-root")
    return dest


def reference_epoch(root: Path, cfg: FitConfig, workers: int) -> float:
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    ds = datasets.FashionMNIST(str(root), train=True, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
    model = build_model(cfg, (1, 28, 28), 10)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    t = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def loop_epochs(cfg: FitConfig, data, tmp: Path, rounds: int) -> dict[str, float]:
    """Best time of a full engine epoch (training, both evaluation passes, hooks) per way of
    recording examples; the variants take turns, so drift of the machine hits them alike."""
    loops = {}
    for record in ("none", "evaluation", "presentation"):
        run = RunDir(tmp / f"loop-{record}")
        run.path.mkdir(parents=True)
        c = FitConfig(**{**cfg.to_dict(), "example_record": record, "epochs": rounds + 1})
        hooks = [MetricsWriter(run)] if record == "none" else [ExampleRecorder(run, data.splits, record), MetricsWriter(run)]
        loops[record] = Loop(build_model(c, data.input_shape, 10), data.splits, c, hooks)
        loops[record].run_epoch()  # warm-up
    best = {k: float("inf") for k in loops}
    for _ in range(rounds):
        for record, loop in loops.items():
            t = time.perf_counter()
            result = loop.run_epoch()
            for h in loop.hooks:
                h.on_epoch_end(loop, result)
            best[record] = min(best[record], time.perf_counter() - t)
    return best


def peak_rss_of_fit(data_root: str, tmp: Path) -> float:
    cmd = [sys.executable, "-m", "rotelab.cli", "fit", "--dataset", "fashion-mnist", "--data-root", data_root,
           "--epochs", "1", "--no-progress", "--example-margins", "--out", str(tmp / "peak")]
    subprocess.run(cmd, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per variant (best is kept)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the full-epoch comparison")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference")
    args = ap.parse_args()

    cfg = FitConfig(dataset="fashion-mnist", data_root=args.data_root, model="mlp", widths=[512],
                    batch_size=BATCH, lr=0.01, progress=False)
    data = load_data(cfg)
    n = len(data.train)
    src = Path(args.data_root) if (Path(args.data_root) / "FashionMNIST").is_dir() else DEBIAN_FASHION_MNIST

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peak_gemm = matmul_flops(2048, 2048, 2048, 3)
        batch_gemm = matmul_flops(BATCH, 784, 512, 5)

        model = build_model(cfg, data.input_shape, 10)
        opt = build_optimizer(model, cfg)
        warm = torch.randperm(n)[: 50 * BATCH]
        train_epoch(model, opt, data.train.x, data.train.y, BATCH, warm)
        ours = best_time(lambda: train_epoch(model, opt, data.train.x, data.train.y, BATCH, torch.randperm(n)),
                         args.epochs)

        root = raw_idx_folder(src, tmp / "tv")
        reference = min(reference_epoch(root, cfg, args.workers) for _ in range(args.epochs))

        full = loop_epochs(cfg, data, tmp, args.rounds)
        t_none, t_eval, t_pres = full["none"], full["evaluation"], full["presentation"]
        peak_gemm = max(peak_gemm, matmul_flops(2048, 2048, 2048, 3))  # the machine's best moment
        peak_gib = peak_rss_of_fit(str(args.data_root), tmp)

    flops = epoch_flops(n)
    figures = {
        "reference_epoch_s": round(reference, 3),
        "rotelab_epoch_s": round(ours, 3),
        "speedup": round(reference / ours, 2),
        "epoch_gflops": round(flops / 1e9, 1),
        "achieved_gflop_per_s": round(flops / ours / 1e9, 1),
        "peak_matmul_gflop_per_s": round(peak_gemm / 1e9, 1),
        "batch128_matmul_gflop_per_s": round(batch_gemm / 1e9, 1),
        "roofline_fraction": round(flops / ours / peak_gemm, 3),
        "batch128_roofline_fraction": round(flops / ours / batch_gemm, 3),
        "full_epoch_s_no_tracking": round(t_none, 3),
        "tracking_overhead_evaluation": round(t_eval / t_none - 1, 4),
        "tracking_overhead_presentation": round(t_pres / t_none - 1, 4),
        "peak_rss_gib": round(peak_gib, 2),
        "threads": torch.get_num_threads(),
    }
    print_figures(figures)


if __name__ == "__main__":
    main()
