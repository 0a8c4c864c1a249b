"""GPU acceptance check: every protocol for 1-3 epochs on the device, determinism, part of the suite,
and one epoch of each paper-shaped workload timed on synthetic tensors with its peak memory.

    python bench/gpu_check.py                     # on a machine with CUDA (skipped, with its reason, elsewhere)
    python bench/gpu_check.py --device cpu --quick   # every step at tiny sizes on the CPU: tests the script

Steps, each reported as ok or with its error (one failing step does not stop the others):
1. protocols: fit with every recorder; AlexNet with --augment --channels-last; WRN; Inception;
   learned weight noise; memorize with the MLP stack and a torch.func stack of a batch-norm model;
   infoplane with binning and KDE; forget and a second stage with --stage2-from; a noise ramp; replay.
2. determinism: an MLP and AlexNet, each with and without --deterministic: the same seed twice,
   and a run cut after its first epoch and resumed, against an uninterrupted one (equal or not:
   nondeterministic kernels on a GPU may differ without --deterministic).
3. part of the suite with --device auto (which picks CUDA here): the model checks and the stacks.
4. workloads on synthetic data, one epoch each, seconds and peak device memory: Inception, AlexNet
   and an MLP on 50,000 x 3 x 28 x 28; WRN-28-10 on 32 x 32; MLP stacks of 16 and 128; KDE at N =
   60,000 on the device against the CPU (the CPU at a tenth of N, scaled by N^2); Feldman & Zhang's
   workload (2,000 MLPs 784-512-256-10, each on 70% of 60,000 examples, 10 epochs, stacked).

Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402

from rotelab.hook import Hook  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def synthetic_npz(path: Path, n: int, shape: tuple, classes: int = 10, n_test: int | None = None) -> str:
    """Random uint8 images (or float vectors) with labels: an npz source for the protocols."""
    rng = np.random.default_rng(0)
    n_test = n_test or max(n // 5, classes)
    dtype = np.uint8 if len(shape) == 3 else np.float32
    make = (lambda m: rng.integers(0, 255, (m, *shape), dtype=np.uint8)) if dtype == np.uint8 else \
        (lambda m: rng.normal(size=(m, *shape)).astype(np.float32))
    np.savez(path, x_train=make(n), y_train=np.arange(n) % classes, x_test=make(n_test),
             y_test=np.arange(n_test) % classes)
    return f"npz:{path}"


def cli(*args) -> None:
    from rotelab.cli import main
    code = main([str(a) for a in args])
    if code != 0:
        raise RuntimeError(f"rotelab {' '.join(map(str, args[:2]))} exited {code}")


def step(results: dict, name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        out = fn()
        results[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **(out or {})}
    except Exception as e:   # noqa: BLE001  (a step's failure is its result)
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "where": traceback.format_exc()[-600:]}


def forget_twice(tmp: Path, data: str, common: list) -> None:
    """A forget run, then a second stage 2 started from its stage-1 checkpoint."""
    cli("forget", "--dataset", data, "--widths", "64", "--val-size", 64, "--epochs1", 1, "--epochs2", 1, *common,
        "--out", tmp / "forget")
    cli("forget", "--stage2-from", tmp / "forget" / "checkpoints" / "stage1.pt", "--lr2", "0.001", "--no-progress",
        "--out", tmp / "forget2")


def protocols(tmp: Path, device: str, quick: bool) -> dict:
    n = 128 if quick else 4096
    img = synthetic_npz(tmp / "img.npz", n, (3, 28, 28))
    vec = synthetic_npz(tmp / "vec.npz", n, (784,))
    common = ["--device", device, "--no-progress", "--checkpoint-every", "0", "--batch-size", "64"]
    out: dict = {}
    checks = {
        "fit_every_recorder": lambda: cli("fit", "--dataset", vec, "--widths", "64", "--epochs", 2, "--example-margins",
                                          "--norms", "--batch-scalars", "--fisher-every", 1, "--hist-every", 1,
                                          *common, "--out", tmp / "fit"),
        "alexnet_augment_channels_last": lambda: cli("fit", "--dataset", img, "--model", "alexnet-small", "--augment",
                                                     "--channels-last", "--epochs", 1, *common, "--out", tmp / "alex"),
        "wrn": lambda: cli("fit", "--dataset", img, "--model", "wrn", "--depth", 10, "--widen", 1, "--epochs", 1,
                           *common, "--out", tmp / "wrn"),
        "inception": lambda: cli("fit", "--dataset", img, "--model", "inception-small", "--epochs", 1, *common,
                                 "--out", tmp / "inception"),
        "learned_noise": lambda: cli("fit", "--dataset", vec, "--widths", "64", "--weight-noise", "lognormal",
                                     "--learn-alpha", "--info-weight", "1e-3", "--epochs", 2, *common, "--out", tmp / "noisy"),
        "memorize_mlp_stack": lambda: cli("memorize", "--dataset", vec, "--widths", "64", "--models", 4, "--stack", 4,
                                          "--train-fraction", "0.7", "--epochs", 2, "--no-signals",
                                          "--cscore-fractions", "", *common, "--out", tmp / "mem-mlp"),
        "memorize_func_stack_batch_norm": lambda: cli("memorize", "--dataset", img, "--model", "wrn", "--depth", 10,
                                                      "--widen", 1, "--models", 2, "--stack", 2, "--train-fraction", "0.7",
                                                      "--epochs", 1, "--no-signals", "--cscore-fractions", "", *common,
                                                      "--out", tmp / "mem-wrn"),
        "infoplane_binning_kde": lambda: cli("infoplane", "--dataset", vec, "--widths", "32,16", "--activation", "tanh",
                                             "--estimators", "binning,kde", "--captures", 2, "--epochs", 2, *common,
                                             "--out", tmp / "ip"),
        "forget_and_stage2_from": lambda: forget_twice(tmp, vec, common),
        "noise_ramp": lambda: cli("noise", tmp / "fit", "--steps", 2, "--every", 1, "--device", device, "--no-progress",
                                  "--out", tmp / "ramp"),
        "replay": lambda: cli("replay", tmp / "fit", "--epochs", 1),
    }
    for name, fn in checks.items():
        step(out, name, fn)
    return out


def same_metrics(a: Path, b: Path) -> bool:
    from rotelab.store import RunDir
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]  # noqa: E731
    return strip(RunDir(a).read_metrics()) == strip(RunDir(b).read_metrics())


class Cut(Hook):
    """Ends a run at the end of epoch `at`, after its checkpoint is written: a kill."""
    phase = 1000   # after every writer

    class Killed(Exception):
        pass

    def __init__(self, at: int):
        self.at = at

    def on_epoch_end(self, loop, result):
        if result.epoch == self.at:
            raise Cut.Killed()


def determinism(tmp: Path, device: str, quick: bool) -> dict:
    """The same seed twice, and cut-and-resumed against uninterrupted, for an MLP and AlexNet, with and
    without --deterministic."""
    from rotelab.config import FitConfig
    from rotelab.protocols.fit import build_loop, fit
    from rotelab.runner import resume
    from rotelab.store import RunDir
    img = synthetic_npz(tmp / "det.npz", 256 if quick else 4096, (3, 28, 28))
    out: dict = {}
    for model in ("mlp", "alexnet-small"):
        for det in (False, True):
            cfg = FitConfig(dataset=img, model=model, epochs=2, batch_size=64, device=device, deterministic=det,
                            progress=False, hist_every=0, checkpoint_every=0)
            tag = f"{model}_{'deterministic' if det else 'default'}"
            a, b = tmp / f"{tag}-a", tmp / f"{tag}-b"
            fit(cfg, a)
            fit(cfg, b)
            run = RunDir.check_new(tmp / f"{tag}-cut")   # killed after epoch 1 (its checkpoint), then resumed
            loop = build_loop(cfg, run)
            loop.hooks.append(Cut(1))
            run.create(cfg.to_dict(), {})
            try:
                loop.run()
            except Cut.Killed:
                pass
            resume(run.path)
            out[tag] = {"same_seed_equal": same_metrics(a, b), "resumed_equal": same_metrics(a, run.path)}
    return out


def suite_part(device: str) -> dict:
    """Part of the test suite with --device auto (CUDA where it is): the model checks and the stacks."""
    tests = ["tests/test_model_checks.py", "tests/test_vectorized.py", "tests/test_gpu.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": proc.returncode, "summary": last}


def peak(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def timed_epoch(device: str, model_name: str, shape: tuple, n: int, batch: int, **model_args) -> dict:
    """One epoch of SGD on synthetic tensors already on the device: seconds, examples per second, peak."""
    from rotelab.config import FitConfig
    from rotelab.engine import train_epoch
    from rotelab.models import build_model
    dev = torch.device(device)
    x = torch.randn(n, *shape, device=dev)
    y = torch.randint(0, 10, (n,), device=dev)
    model = build_model(FitConfig(model=model_name, model_args=model_args), shape, 10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = torch.randperm(n, device=dev)
    train_epoch(model, opt, x[:batch * 2], y[:batch * 2], batch, order[:batch * 2] % (batch * 2))   # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_epoch(model, opt, x, y, batch, order)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    s = time.perf_counter() - t0
    return {"seconds": round(s, 3), "examples_per_s": round(n / s), "peak_gib": peak(device)}


def timed_stack(tmp: Path, device: str, k: int, n: int, name: str, epochs: int = 1, widths=(512, 256),
                fraction: float | None = None) -> dict:
    """K MLP runs as one stack (memorize's subset models where `fraction` is given), timed whole."""
    from rotelab.plan import execute, plan
    from rotelab.protocols.memorize import MemorizeConfig
    data = synthetic_npz(tmp / f"{name}.npz", n, (784,), n_test=1000)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    cfg = MemorizeConfig(dataset=data, model_args={"widths": list(widths)}, models=k, stack=k if k <= 512 else 500,
                         train_fraction=fraction or 0.7, epochs=epochs, batch_size=128, signals=False,
                         cscore_fractions=[], device=device, progress=False, hist_every=0, checkpoint_every=600,
                         optimizer="sgd", lr=0.01)
    execute([plan("memorize", cfg, tmp / name)])
    s = time.perf_counter() - t0
    return {"models": k, "examples": n, "epochs": epochs, "seconds": round(s, 2),
            "model_epochs_per_s": round(k * epochs / s, 1), "peak_gib": peak(device)}


def timed_kde(device: str, n: int, d: int = 20) -> dict:
    from rotelab.measures.information import kde_mi
    t = torch.randn(n, d, dtype=torch.float64, device=device)
    y = np.arange(n) % 10
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    kde_mi(t, y, 0.1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"n": n, "d": d, "seconds": round(time.perf_counter() - t0, 2), "peak_gib": peak(device)}


def workloads(tmp: Path, device: str, quick: bool) -> dict:
    n = 64 if quick else 50_000
    out: dict = {}
    step(out, "inception_28", lambda: timed_epoch(device, "inception-small", (3, 28, 28), n, 128))
    step(out, "alexnet_28", lambda: timed_epoch(device, "alexnet-small", (3, 28, 28), n, 128))
    step(out, "mlp_28", lambda: timed_epoch(device, "mlp", (3, 28, 28), n, 128, widths=[512, 512, 512]))
    step(out, "wrn28_10_32", lambda: timed_epoch(device, "wrn", (3, 32, 32), n, 128,
                                                 depth=10 if quick else 28, widen=1 if quick else 10))
    step(out, "mlp_stack_16", lambda: timed_stack(tmp, device, 4 if quick else 16, 1000 if quick else 60_000, "s16"))
    step(out, "mlp_stack_128", lambda: timed_stack(tmp, device, 8 if quick else 128, 1000 if quick else 60_000, "s128"))
    big = 600 if quick else 60_000
    step(out, "kde_device", lambda: timed_kde(device, big))
    step(out, "kde_cpu_tenth_n", lambda: {**timed_kde("cpu", big // 10), "scaled_to_n_seconds":
                                          round(timed_kde("cpu", big // 10)["seconds"] * 100, 1)})
    step(out, "feldman_zhang_2000_mlps", lambda: timed_stack(
        tmp, device, 8 if quick else 2000, 1000 if quick else 60_000, "fz", epochs=1 if quick else 10, fraction=0.7))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to test the script")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every step runs")
    ap.add_argument("--no-suite", action="store_true", help="leave out the part of the test suite")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        figures = {"skipped": "CUDA is not available on this machine; run it where a GPU is, or pass --device cpu "
                              "to try the script here"}
        print_figures(figures)
        return figures
    figures: dict = {"device": args.device, "torch": torch.__version__, "quick": args.quick}
    if args.device.startswith("cuda"):
        figures.update(gpu=torch.cuda.get_device_name(torch.device(args.device)), cuda=torch.version.cuda)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, part in (("protocols", protocols), ("determinism", determinism), ("workloads", workloads)):
            (tmp / name).mkdir()
            t0 = time.perf_counter()
            sub: dict = {}
            step(sub, name, lambda part=part, name=name: part(tmp / name, args.device, args.quick))
            figures[name] = sub[name]
            figures[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    if not args.no_suite:
        step(figures, "suite", lambda: suite_part(args.device))
    failed = [k for k, v in figures.items() if isinstance(v, dict) and v.get("ok") is False] + \
        [f"{part}.{k}" for part in ("protocols", "workloads") if isinstance(figures.get(part), dict)
         for k, v in figures[part].items() if isinstance(v, dict) and v.get("ok") is False]
    figures["failed"] = failed
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
