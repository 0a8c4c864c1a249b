"""Mutual-information estimators: speed against straightforward references, in one process.

1. Binning, all layers of the 12-bit net (12-10-7-5-4-3-2, tanh, trained briefly) on its 4,096
   inputs: rotelab's vectorized estimator against a reference that loops over each distinct x and
   computes H(T|X=x) with np.unique, as the original information-plane code does. Same numbers required.
2. KDE bounds for N = 10,000 samples of d = 1,024 units: seconds and peak memory (child process).
3. Information-plane bookkeeping: a 12-bit run at the default capture schedule, with and without
   the capture hook (ratio of loop time).
4. The cost of binning + KDE at the default 200 captures over an 8,000-epoch 12-bit run, as a share of
   the run: one capture of each estimator timed on the trained net's layers (median of repeats,
   after a warm-up), times the number of captures, against the measured epoch time times 8,000.
5. Binning of the layers held as tensors (the capture's path since the estimators run on the
   activations' device) against the NumPy path, both on the CPU: the same numbers, and the ratio of
   their CPU time.

    python bench/mi_estimators.py [--data-file var_u.mat] [--epochs 1000] [--quick]

Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import statistics

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_figures  # noqa: E402

from rotelab.config import FitConfig
from rotelab.protocols.infoplane import InfoPlaneConfig
from rotelab.measures.information import binning_estimate, binning_mi, kde_mi, row_ids
from rotelab.protocols import fit as fit_protocol
from rotelab.protocols import infoplane as ip
from rotelab.store import RunDir


def original_style_binning(t: np.ndarray, x_ids: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """The reference: digitize, then a Python loop over each distinct x (and each label) computing
    the entropy of the binned rows among its samples with np.unique."""
    digitized = np.digitize(t, edges)

    def entropy_rows(rows: np.ndarray) -> float:
        view = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
        _, counts = np.unique(view, return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log2(p)).sum())

    n = len(t)
    h_t = entropy_rows(digitized)
    h_t_x = 0.0
    for xi in np.unique(x_ids):
        mask = x_ids == xi
        h_t_x += mask.sum() / n * entropy_rows(digitized[mask])
    h_t_y = 0.0
    for yi in np.unique(y):
        mask = y == yi
        h_t_y += mask.sum() / n * entropy_rows(digitized[mask])
    return h_t - h_t_x, h_t - h_t_y


def trained_activations(cfg: InfoPlaneConfig, tmp: Path):
    run = RunDir(tmp / "act")
    loop = fit_protocol.build_loop(cfg, run)
    run.create(cfg.to_dict(), {})
    loop.run()
    data = loop.splits
    x = torch.cat([data["train"].x, data["test"].x])
    y = torch.cat([data["train"].y, data["test"].y]).numpy()
    with torch.no_grad():
        acts = [a.double().numpy() for a in loop.model.activations(x)]
    return acts, row_ids(x.numpy()), y


def kde_child(n: int, d: int) -> dict:
    """Run the KDE bounds in a fresh process (after a small warm-up call); report its seconds and
    peak resident memory."""
    code = ("import time, numpy as np, resource, json\n"
            "from rotelab.measures.information import kde_mi\n"
            f"rng = np.random.default_rng(0); t = np.tanh(rng.standard_normal(({n}, {d})))\n"
            f"y = rng.integers(0, 10, {n})\n"
            "kde_mi(t[:200], y[:200], 0.1)\n"
            "t0 = time.perf_counter(); r = kde_mi(t, y, 0.1); s = time.perf_counter() - t0\n"
            "print(json.dumps({'seconds': s, 'peak_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,"
            " 'ixt_upper': r['ixt_upper']}))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def loop_seconds(build, cfg, tmp: Path, name: str) -> tuple[float, float]:
    """Wall time of a whole run's loop, and the seconds its capture hook accounted for itself."""
    run = RunDir(tmp / name)
    loop = build(cfg, run)
    run.create(cfg.to_dict(), {})
    t = time.perf_counter()
    loop.run()
    return time.perf_counter() - t, loop.last_metrics.get("seconds_info", 0.0)


def median_time(fn, repeats: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-file", default=None, help="var_u.mat (default: the generated 12-bit task)")
    ap.add_argument("--epochs", type=int, default=1000, help="epochs of the bookkeeping comparison")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the bookkeeping comparison")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of each estimator timing (median)")
    ap.add_argument("--kde-n", type=int, default=10_000)
    ap.add_argument("--kde-d", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="small sizes, one round: checks the bench runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.rounds, args.repeats, args.kde_n, args.kde_d = 30, 1, 1, 500, 32

    cfg = InfoPlaneConfig(dataset="tishby", data_file=args.data_file, model="tishby", optimizer="adam", lr=4e-4,
                          batch_size=512, epochs=20 if args.quick else 200, progress=False, hist_every=0)
    edges = cfg.edges
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        acts, x_ids, y = trained_activations(cfg, tmp)

        t_ours = median_time(lambda: [binning_mi(a, x_ids, y, edges=edges) for a in acts], args.repeats)
        t_ref = median_time(lambda: [original_style_binning(a, x_ids, y, edges) for a in acts],
                            max(1, args.repeats // 2))
        # 5. binning on the activations' device (a tensor: torch.bucketize and torch.unique) against the
        # host path (NumPy), both here on the CPU: what a capture costs the CPU before and after the
        # estimators moved to the device (on a GPU the tensor path leaves the host only the N code ids)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in acts]
        t_host = median_time(lambda: [binning_estimate(a, x_ids, y, edges=edges) for a in acts], args.repeats)
        t_tensor = median_time(lambda: [binning_estimate(a, x_ids, y, edges=edges) for a in tensors], args.repeats)
        tensor_diff = max(abs(binning_estimate(a, x_ids, y, edges=edges)[k] - binning_estimate(b, x_ids, y, edges=edges)[k])
                          for a, b in zip(acts, tensors) for k in ("ixt", "ity"))
        ours = [binning_mi(a, x_ids, y, edges=edges) for a in acts]
        ref = [original_style_binning(a, x_ids, y, edges) for a in acts]
        max_diff = float(np.max(np.abs(np.array(ours) - np.array(ref))))
        # one capture of the default estimators (binning + KDE at the 12-bit task's variance)
        rows = 512 if args.quick else len(y)   # quick: a sample of the rows (the figure is then not the real one)
        t_kde = median_time(lambda: [kde_mi(a[:rows], y[:rows], 1e-3) for a in acts], args.repeats)
        n_captures = len(ip.capture_epochs(8000, 200))

        kde = kde_child(args.kde_n, args.kde_d)

        run_cfg = InfoPlaneConfig(**{**cfg.to_dict(), "epochs": args.epochs})
        fit_cfg = FitConfig(**{k: v for k, v in run_cfg.to_dict().items() if k in FitConfig.__dataclass_fields__})
        plains, withs, owns = [], [], []
        for r in range(args.rounds):   # alternate, medians: the machine drifts
            plains.append(loop_seconds(fit_protocol.build_loop, fit_cfg, tmp, f"plain{r}")[0])
            seconds, own = loop_seconds(ip.build_loop, run_cfg, tmp, f"info{r}")
            withs.append(seconds)
            owns.append(own)
        plain, with_info, own = map(statistics.median, (plains, withs, owns))
        epoch_s = plain / args.epochs
        capture_8000 = n_captures * (t_ours + t_kde)

    figures = {
        "binning_reference_s": round(t_ref, 4),
        "binning_rotelab_s": round(t_ours, 5),
        "binning_speedup": round(t_ref / t_ours, 1),
        "binning_max_abs_diff_bits": max_diff,
        "binning_host_numpy_s": round(t_host, 5),
        "binning_tensor_cpu_s": round(t_tensor, 5),
        "binning_tensor_over_numpy_on_cpu": round(t_tensor / t_host, 2),
        "binning_tensor_max_abs_diff_bits": tensor_diff,
        "layers": len(acts),
        "kde_n": args.kde_n, "kde_d": args.kde_d,
        "kde_seconds": round(kde["seconds"], 2),
        "kde_peak_gib": round(kde["peak_gib"], 2),
        "infoplane_epochs": args.epochs,
        "loop_seconds_plain": round(plain, 2),
        "loop_seconds_with_capture": round(with_info, 2),
        "capture_overhead": round(with_info / plain - 1, 3),
        "capture_seconds_accounted": round(own, 2),
        "capture_share_accounted": round(own / plain, 3),
        "capture_binning_s": round(t_ours, 4),
        "capture_kde_s": round(t_kde, 4),
        "captures_at_8000_epochs": n_captures,
        "epoch_s": round(epoch_s, 5),
        "capture_share_of_8000_epoch_run": round(capture_8000 / (capture_8000 + 8000 * epoch_s), 3),
    }
    print_figures(figures)
    return figures


if __name__ == "__main__":
    main()
