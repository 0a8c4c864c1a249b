"""Vectorized seeds: K runs of one small architecture trained as one batched model against the same
K runs one after another, in one process, with per-run metrics compared.

    python bench/vectorized_seeds.py [--seeds 16] [--epochs 100]

Cases: the 12-10-7-5-4-3-2 net on the 12-bit task (Adam, batch 512) and an MLP 1x512 on a
10,000-example subset of Fashion-MNIST (SGD, batch 128; skipped if Fashion-MNIST is not installed),
both through the written-out MLP kernel; the 12-bit case again through the torch.func stack
(`tishby_func`: what the kernel gains over it); and Zhang et al.'s small AlexNet on a 2,000-example subset
of Fashion-MNIST (SGD, batch 128, 4 seeds, 2 epochs) through the torch.func stack. Per case also
TensorBoard's share of a stacked run (the time inside its hook, every call timed, over the run's).
Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402

from rotelab.config import FitConfig  # noqa: E402
from rotelab.data.sources import DEBIAN_FASHION_MNIST  # noqa: E402
from rotelab.protocols.fit import fit  # noqa: E402
from rotelab.runner import start_stack  # noqa: E402


def compare(name: str, base: dict, seeds: int, tmp: Path, stack: str | None = None) -> dict:
    cfgs = [FitConfig(**base, seed=s, progress=False, hist_every=0) for s in range(seeds)]
    # one-time costs (imports, first calls, data caches) are paid before either clock starts
    warm = [FitConfig(**{**base, "epochs": 1}, seed=s, progress=False, hist_every=0) for s in range(2)]
    start_stack(warm, [tmp / f"{name}-warm-{s}" for s in range(2)], stack=stack)
    fit(warm[0], tmp / f"{name}-warm-seq")

    def run_together(tag):
        t = time.perf_counter()
        runs = start_stack(cfgs, [tmp / f"{name}-vec{tag}-{s}" for s in range(seeds)], stack=stack)
        return runs, time.perf_counter() - t

    # The sequential runs in four blocks, with a vectorized run before, between and after them: the
    # mean of those brackets the machine's drift (on a shared machine speed wanders by tens of %)
    together_runs, t_vec = run_together(0)
    vec_times, t_seq, alone = [t_vec], 0.0, []
    blocks = [cfgs[i::4] for i in range(4)]
    for b, block in enumerate(blocks):
        t = time.perf_counter()
        alone += [fit(c, tmp / f"{name}-seq-{c.seed}") for c in block]
        t_seq += time.perf_counter() - t
        vec_times.append(run_together(b + 1)[1])
    alone.sort(key=lambda r: int(r.read_config()["seed"]))
    t_vec = sum(vec_times) / len(vec_times)
    worst = 0.0
    for a, b in zip(together_runs, alone):
        for x, y in zip(a.read_metrics(), b.read_metrics()):
            for k, v in x.items():
                if isinstance(v, float) and not k.startswith("seconds") and y.get(k) is not None:
                    worst = max(worst, abs(v - y[k]))
    # TensorBoard's share of a stacked run: the time spent inside its hook (every call timed), over the run's
    with timed_tensorboard() as spent:
        t_timed = run_together("tb")[1]
    tb_share = spent[0] / t_timed
    return {f"{name}_sequential_s": round(t_seq, 2), f"{name}_vectorized_s": round(t_vec, 2),
            f"{name}_vectorized_range_s": [round(min(vec_times), 2), round(max(vec_times), 2)],
            f"{name}_speedup": round(t_seq / t_vec, 2), f"{name}_max_metric_diff": worst,
            f"{name}_tensorboard_share_of_stacked": round(tb_share, 3)}


@contextlib.contextmanager
def without_tensorboard():
    """Runs that write no TensorBoard file (a measurement only: what the rest of a run costs)."""
    import rotelab.hooks as hooks
    from rotelab.hook import Hook
    real = hooks.TensorBoardWriter
    hooks.TensorBoardWriter = type("NoTensorBoard", (Hook,), {"__init__": lambda self, *a, **k: None})
    try:
        yield
    finally:
        hooks.TensorBoardWriter = real


@contextlib.contextmanager
def timed_tensorboard():
    """The TensorBoard hook with every call timed; yields [seconds spent in it] (a measurement only)."""
    import rotelab.hooks as hooks
    real, spent = hooks.TensorBoardWriter, [0.0]

    def timed(method):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t
        return call

    hooks.TensorBoardWriter = type("TimedTensorBoardWriter", (real,), {
        m: timed(getattr(real, m)) for m in ("__init__", "on_start", "on_epoch_end", "on_end")})
    try:
        yield spent
    finally:
        hooks.TensorBoardWriter = real


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--cases", nargs="+", default=["tishby", "tishby-func", "mlp512", "alexnet"],
                    choices=["tishby", "tishby-no-tb", "tishby-func", "mlp512", "alexnet"])
    ap.add_argument("--convnet-seeds", type=int, default=4, help="seeds of the convnet case (torch.func stack)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.cases = 2, 3, ["tishby", "tishby-no-tb"]
    figures = {"seeds": args.seeds, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "tishby" in args.cases:
            figures.update(compare("tishby", dict(dataset="tishby", model="tishby", optimizer="adam", lr=4e-4,
                                                  batch_size=512, epochs=args.epochs), args.seeds, tmp))
        if "tishby-no-tb" in args.cases:   # the same runs writing no TensorBoard file: what it costs the ratio
            with without_tensorboard():
                figures.update(compare("tishby_no_tb", dict(dataset="tishby", model="tishby", optimizer="adam", lr=4e-4,
                                                            batch_size=512, epochs=args.epochs), args.seeds, tmp))
        if "tishby-func" in args.cases:   # the same runs through the torch.func stack: is the kernel worth keeping?
            figures.update(compare("tishby_func", dict(dataset="tishby", model="tishby", optimizer="adam", lr=4e-4,
                                                       batch_size=512, epochs=args.epochs), args.seeds, tmp, stack="func"))
        if "alexnet" in args.cases:   # any model: the torch.func stack
            figures.update(compare("alexnet", dict(dataset="fashion-mnist" if DEBIAN_FASHION_MNIST.is_dir() else "digits",
                                                   subset=2000 if DEBIAN_FASHION_MNIST.is_dir() else 500,
                                                   model="alexnet-small", lr=0.01, batch_size=128, epochs=2),
                                   args.convnet_seeds, tmp))
        if "mlp512" in args.cases and DEBIAN_FASHION_MNIST.is_dir():
            figures.update(compare("mlp512", dict(dataset="fashion-mnist", subset=10_000, widths=[512], lr=0.01,
                                                  batch_size=128, epochs=max(1, args.epochs // 20)), args.seeds, tmp))
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
