"""`rotelab infoplane`: the information plane of every layer over training (Shwartz-Ziv & Tishby
2017; Saxe et al. 2018), for several seeds.

Each seed is an ordinary fit run in OUT/seed-N with one more hook: at about `captures` log-spaced
epochs (and at epoch 0 and the last) it captures every layer on a fixed evaluation set and appends
I(X;T) and I(T;Y) per layer and estimator to info.jsonl. Nothing is kept between captures, so memory
does not grow with the number of epochs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, InfoPlaneConfig, parse_seeds
from ..data import balanced_subset
from ..engine import EpochResult, Hook, Loop
from ..measures.information import binning_mi, kde_mi, ksg_mi, mixed_ksg_mi, row_ids
from ..store import RunDir, environment, read_jsonl, truncate_jsonl
from . import fit as fit_protocol
from . import train_run

CONFIG = InfoPlaneConfig


def capture_epochs(last: int, n: int) -> set[int]:
    """Epoch 0 and about n log-spaced epochs in [1, last], the last included."""
    pts = np.unique(np.round(np.logspace(0, np.log10(max(last, 1)), n)).astype(int))
    return {0, last, *pts.tolist()}


def layer_estimates(t: np.ndarray, x: np.ndarray, x_ids: np.ndarray, y: np.ndarray, cfg: InfoPlaneConfig) -> list[dict]:
    """I(X;T) and I(T;Y) in bits of one layer's activations, per estimator."""
    rows = []
    for est in cfg.estimator_list:
        if est == "binning" and cfg.bin_size is not None:
            ixt, ity = binning_mi(t, x_ids, y, bin_size=cfg.bin_size)
            rows.append({"estimator": "binning-size", "ixt": ixt, "ity": ity})
        elif est == "binning":
            ixt, ity = binning_mi(t, x_ids, y, edges=cfg.edges)
            rows.append({"estimator": "binning", "ixt": ixt, "ity": ity})
        elif est == "kde":
            r = kde_mi(t, y, cfg.resolved_kde_var())
            rows.append({"estimator": "kde-upper", "ixt": r["ixt_upper"], "ity": r["ity_upper"]})
            rows.append({"estimator": "kde-lower", "ixt": r["ixt_lower"], "ity": r["ity_lower"]})
        elif est == "ksg":
            rows.append({"estimator": "ksg", "ixt": ksg_mi(x, t, cfg.ksg_k), "ity": mixed_ksg_mi(t, y, cfg.ksg_k)})
    return rows


def evaluation_set(data, cfg: InfoPlaneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All of the 12-bit task (train and test, as the original study), else a fixed class-balanced
    sample of the training set; labels as used in training."""
    if cfg.dataset == "tishby" and cfg.eval_size is None:
        return torch.cat([data.train.x, data.test.x]), torch.cat([data.train.y, data.test.y])
    n = min(cfg.eval_size or 2000, len(data.train))
    idx = balanced_subset(data.train.y.cpu(), n, data.num_classes).to(data.train.y.device)
    return data.train.x[idx], data.train.y[idx]


class InfoPlaneRecorder(Hook):
    """Captures every layer at chosen epochs and appends one info.jsonl line per layer and estimator."""

    def __init__(self, run: RunDir, x: torch.Tensor, y: torch.Tensor, cfg: InfoPlaneConfig):
        self.run, self.x, self.cfg = run, x, cfg
        self.y = y.cpu().numpy()
        self.x_flat = x.flatten(1).cpu().double().numpy()
        self.x_ids = row_ids(x.flatten(1).cpu().numpy())   # equal inputs are one x
        self.epochs = capture_epochs(cfg.epochs, cfg.captures)
        self.last = None
        self.seconds = 0.0

    @property
    def file(self) -> Path:
        return self.run.path / "info.jsonl"

    def capture(self, loop: Loop, epoch: int):
        t0 = time.perf_counter()
        loop.model.eval()
        with torch.no_grad():
            acts = [a.float().cpu().numpy() for a in loop.model.activations(self.x)]
        lines = []
        for layer, t in enumerate(acts):
            for row in layer_estimates(t.astype(np.float64), self.x_flat, self.x_ids, self.y, self.cfg):
                lines.append({"epoch": epoch, "seed": self.cfg.seed, "layer": layer, **row})
        with open(self.file, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in lines))
        if self.cfg.save_activations:
            folder = self.run.path / "activations"
            folder.mkdir(exist_ok=True)
            np.savez(folder / f"epoch_{epoch:05d}.npz", **{f"layer{i}": a.astype(np.float16) for i, a in enumerate(acts)})
        self.last = epoch
        self.seconds += time.perf_counter() - t0

    def on_start(self, loop: Loop):
        if self.file.exists():   # resuming: drop what came after the checkpoint
            keep = truncate_jsonl(self.file, loop.epoch)
            self.last = max((r["epoch"] for r in keep), default=None)
        if loop.epoch == 0 and self.last is None:
            self.capture(loop, 0)

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        if result.epoch in self.epochs or loop.done:
            self.capture(loop, result.epoch)
        result.metrics["seconds_info"] = self.seconds


class GradientSNR(Hook):
    """The gradient's signal and noise per layer (Shwartz-Ziv & Tishby's drift and diffusion phases):
    over the batches of a captured epoch, the norm of the mean weight gradient and the norm of its
    elementwise standard deviation, as `grad_mean/layer{i}` and `grad_std/layer{i}` in the metrics."""

    def __init__(self, epochs: set[int]):
        self.epochs, self.sums = epochs, None

    def weights(self, loop: Loop) -> list[torch.Tensor]:
        return [layer[0].weight for layer in loop.model.layers] + [loop.model.head.weight]

    def on_backward(self, loop: Loop):
        if loop.epoch + 1 not in self.epochs:
            return
        grads = [w.grad.detach().double() for w in self.weights(loop)]
        if self.sums is None:
            self.sums = [[torch.zeros_like(g), torch.zeros_like(g)] for g in grads] + [0]
        for (s1, s2), g in zip(self.sums[:-1], grads):
            s1 += g
            s2 += g * g
        self.sums[-1] += 1

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        if self.sums is None:
            return
        n = self.sums[-1]
        for i, (s1, s2) in enumerate(self.sums[:-1]):
            mean = s1 / n
            var = (s2 / n - mean * mean).clamp_min(0)
            result.metrics[f"grad_mean/layer{i}"] = float(mean.norm())
            result.metrics[f"grad_std/layer{i}"] = float(var.sqrt().norm())
        self.sums = None


def build_loop(cfg: InfoPlaneConfig, run: RunDir, state: dict | None = None) -> Loop:
    def hooks(data):
        own = [InfoPlaneRecorder(run, *evaluation_set(data, cfg), cfg)]
        if cfg.grad_snr:
            own.append(GradientSNR(capture_epochs(cfg.epochs, cfg.captures)))
        return own
    return fit_protocol.build_loop(cfg, run, state, hooks)


def seed_dirs(path) -> list[Path]:
    return sorted((p for p in Path(path).glob("seed-*") if (p / "config.json").is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


def infoplane(cfg: InfoPlaneConfig, out, overwrite: bool = False, keep_existing: bool = False) -> list[RunDir]:
    """One run per seed in out/seed-N; everything is checked before the first is written. With
    keep_existing, seeds already in `out` are resumed (or left alone when done) instead of refused."""
    from . import resume
    cfg.validate()
    seeds = parse_seeds(cfg.seeds)
    if not keep_existing:
        RunDir.check_new(out, overwrite)
    first = RunDir(Path(out) / f"seed-{seeds[0]}")
    build_loop(dataclasses.replace(cfg, seed=seeds[0]), first)   # raises on bad data or model
    if overwrite and Path(out).is_dir():
        import shutil
        shutil.rmtree(out)
    runs = []
    for s in seeds:
        c = dataclasses.replace(cfg, seed=s)
        run = RunDir(Path(out) / f"seed-{s}")
        if keep_existing and run.config_file.is_file():
            runs.append(resume(run.path))
            continue
        loop = build_loop(c, run)
        run.create(c.to_dict(), environment(loop.device), protocol="infoplane")
        runs.append(train_run(run, loop))
    return runs


def read_info(paths) -> list[dict]:
    """info.jsonl lines of runs or seed groups, each tagged with the group it came from."""
    rows = []
    for p in paths:
        p = Path(p)
        dirs = [p] if (p / "info.jsonl").is_file() else seed_dirs(p)
        if not dirs:
            raise ConfigError("runs", f"{p} has no info.jsonl and no seed-N runs; give an infoplane run directory")
        for d in dirs:
            if (d / "info.jsonl").is_file():
                rows += [{**r, "group": p.name} for r in read_jsonl(d / "info.jsonl")]
    return rows
