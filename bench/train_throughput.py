"""Training throughput: rotelab's engine against three references and the epoch's arithmetic floor.

MLP 784-512-10 on Fashion-MNIST (60k), batch 128, SGD with momentum; every variant uses the same model
(rotelab.models.build_model) and the same optimizer implementation (rotelab.engine.build_optimizer:
torch's fused SGD), in one process, taking turns for several rounds (medians and min-max reported):

  (a) dataloader_transforms  torchvision's FashionMNIST, per-sample ToTensor + Normalize, a DataLoader
                             (the way the original fitting-random-labels code feeds its nets)
  (b) dataloader_tensors     a TensorDataset of the same in-memory tensors, a DataLoader
  (c) minimal_loop           in-memory tensors, index slices, forward, backward, step, nothing else:
                             the floor for eager code
  rotelab_train              rotelab.engine.train_epoch (the training pass of every run)
  rotelab_epoch              Loop.run_epoch + its hooks: training pass, clean evaluation of train and
                             test, per-example bits (examples.npz rows) and the metrics line
  gemm_floor                 the summed time of the epoch's own matrix products at their exact shapes
                             (forward, weight gradient, input gradient), each timed alone

    python bench/train_throughput.py [--rounds 5] [--quick]

--quick runs on scikit-learn's digits where Fashion-MNIST is not installed (it only checks that the bench runs).

Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402

from rotelab.config import FitConfig  # noqa: E402
from rotelab.data import load_data  # noqa: E402
from rotelab.data.sources import DEBIAN_FASHION_MNIST  # noqa: E402
from rotelab.engine import Loop, build_optimizer, train_epoch  # noqa: E402
from rotelab.hooks import ExampleRecorder, MetricsWriter  # noqa: E402
from rotelab.models import build_model  # noqa: E402
from rotelab.store import RunDir  # noqa: E402

BATCH = 128


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def raw_idx_folder(src: Path, dest: Path, n: int) -> Path | None:
    """torchvision's FashionMNIST layout (uncompressed IDX files under FashionMNIST/raw), or None
    where the IDX files are not on this machine."""
    raw = dest / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        for cand in (src / "FashionMNIST" / "raw" / name, src / name):
            if cand.is_file():
                shutil.copy(cand, raw / name)
                break
            if Path(str(cand) + ".gz").is_file():
                with gzip.open(str(cand) + ".gz") as f:
                    (raw / name).write_bytes(f.read())
                break
        else:
            return None
    return dest


class Subset(torch.utils.data.Dataset):
    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.ds[i]


def loader_epoch(model, opt, loader) -> None:
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x.flatten(1) if x.dim() > 2 else x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def minimal_epoch(model, opt, x, y, order) -> None:
    model.train()
    for i in range(0, len(order), BATCH):
        idx = order[i:i + BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def gemm_floor(n: int, widths=(784, 512, 10), repeats: int = 3) -> float:
    """The epoch's matrix products at their exact shapes, each timed alone (best of `repeats`),
    summed over the epoch's batches: forward X W^T per layer, weight gradient G^T X per layer,
    input gradient G W for every layer but the first. Each product writes into one preallocated
    result (out=), so allocation and page faults are not counted as arithmetic."""
    batches = [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    total = 0.0
    for b in sorted(set(batches)):
        count = batches.count(b)
        for i, (a, o) in enumerate(zip(widths[:-1], widths[1:])):
            x, w, g = torch.randn(b, a), torch.randn(o, a), torch.randn(b, o)
            shapes = [(x, w.t()), (g.t(), x)] + ([(g, w)] if i > 0 else [])
            for p, q in shapes:
                out = torch.empty(p.shape[0], q.shape[1])

                def products(reps):
                    for _ in range(reps):
                        torch.matmul(p, q, out=out)
                products(5)
                reps = 50
                best = min(timed(lambda: products(reps)) for _ in range(repeats)) / reps
                total += best * count
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; in each every variant runs one epoch")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of references (a) and (b)")
    ap.add_argument("--quick", action="store_true", help="a 2,000-example epoch, 1 round: checks the bench runs")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds

    have_fmnist = (Path(args.data_root) / "FashionMNIST").is_dir() or DEBIAN_FASHION_MNIST.is_dir()
    if not have_fmnist and not args.quick:
        sys.exit("bench/train_throughput.py: no Fashion-MNIST here: install Debian's dataset-fashion-mnist, "
                 "or pass --data-root with FashionMNIST/raw under it")
    # quick mode only checks that the bench runs: scikit-learn's digits where Fashion-MNIST is missing
    data_spec = dict(dataset="fashion-mnist", subset=2000 if args.quick else None) if have_fmnist else \
        dict(dataset="digits")
    cfg = FitConfig(**data_spec, data_root=args.data_root, model="mlp", widths=[512],
                    batch_size=BATCH, lr=0.01, progress=False)
    data = load_data(cfg)
    n = len(data.train)
    x, y = data.train.x.flatten(1), data.train.y
    src = Path(args.data_root) if (Path(args.data_root) / "FashionMNIST").is_dir() else DEBIAN_FASHION_MNIST

    def fresh():
        model = build_model(cfg, data.input_shape, 10)
        return model, build_optimizer(model, cfg)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = {}
        root = raw_idx_folder(src, tmp / "tv", n)
        if root is not None:
            from torchvision import datasets, transforms
            tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
            ds = Subset(datasets.FashionMNIST(str(root), train=True, transform=tf), n)
            m, o = fresh()
            loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=args.workers)
            variants["dataloader_transforms"] = lambda m=m, o=o, loader=loader: loader_epoch(m, o, loader)
        m, o = fresh()
        tl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                                         num_workers=args.workers)
        variants["dataloader_tensors"] = lambda m=m, o=o: loader_epoch(m, o, tl)
        m, o = fresh()
        variants["minimal_loop"] = lambda m=m, o=o: minimal_epoch(m, o, x, y, torch.randperm(n))
        m, o = fresh()
        variants["rotelab_train"] = lambda m=m, o=o: train_epoch(m, o, data.train.x, y, BATCH, torch.randperm(n))
        run = RunDir(tmp / "loop")
        run.path.mkdir()
        c = FitConfig(**{**cfg.to_dict(), "epochs": 10_000})
        loop = Loop(build_model(c, data.input_shape, 10), data.splits, c,
                    [ExampleRecorder(run, data.splits, "evaluation"), MetricsWriter(run)])
        loop.start()
        variants["rotelab_epoch"] = lambda: loop.close_epoch(loop.run_epoch(), persist=False)

        for fn in variants.values():   # warm-up: first-call costs out of every clock
            fn()
        times = {k: [] for k in variants}
        floor = []
        for _ in range(rounds):
            for k, fn in variants.items():
                times[k].append(timed(fn))
            floor.append(gemm_floor(n, (x.shape[1], 512, 10), repeats=1 if args.quick else 3))
        loop.finish()

    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: f"{min(v):.3f}-{max(v):.3f}" for k, v in times.items()}
    floor_s = statistics.median(floor)
    figures = {"dataset": cfg.dataset, "examples": n, "rounds": rounds, "threads": torch.get_num_threads()}
    for k in variants:
        figures[f"{k}_s"] = round(med[k], 4)
        figures[f"{k}_range_s"] = spread[k]
    figures["gemm_floor_s"] = round(floor_s, 4)
    figures["rotelab_train_over_minimal_loop"] = round(med["rotelab_train"] / med["minimal_loop"], 3)
    figures["rotelab_epoch_over_train"] = round(med["rotelab_epoch"] / med["rotelab_train"], 3)
    figures["train_rate_over_gemm_floor"] = round(floor_s / med["rotelab_train"], 3)
    if "dataloader_transforms" in med:
        figures["dataloader_transforms_over_rotelab_train"] = round(med["dataloader_transforms"] / med["rotelab_train"], 2)
    figures["dataloader_tensors_over_rotelab_train"] = round(med["dataloader_tensors"] / med["rotelab_train"], 2)
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
