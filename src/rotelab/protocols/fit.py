"""`rotelab fit`: train a network on data with corrupted labels or pixels (Zhang et al., ICLR 2017)."""

from __future__ import annotations

from ..config import FitConfig
from ..data import balanced_subset, load_data
from ..engine import Loop, resolve_device
from ..hooks import (Checkpointer, ExampleRecorder, FisherTrace, MetricsWriter, ProgressBar, StatusWriter,
                     TensorBoardWriter, WeightNoiseStats)
from ..models import build_model
from ..models.noisy import info_penalty
from ..seeding import derive_seed
from ..store import RunDir, environment
from . import train_run

CONFIG = FitConfig


def measurement_hooks(cfg: FitConfig, data) -> list:
    """Hooks that add measurements to each epoch's metrics, as the config asks."""
    hooks = []
    if cfg.weight_noise != "none":
        hooks.append(WeightNoiseStats(cfg.alpha_ref))
    if cfg.fisher_every:
        n = min(cfg.fisher_samples, len(data.train))
        idx = balanced_subset(data.train.y.cpu(), n, data.num_classes, seed=derive_seed(cfg.seed, "fisher-sample"))
        hooks.append(FisherTrace(data.train.x[idx.to(data.train.x.device)], cfg.fisher_every, cfg.seed))
    return hooks


def information_penalty(cfg: FitConfig, model, n_train: int):
    """beta * KL / N for the loss, or None."""
    if not cfg.info_weight:
        return None
    return lambda: cfg.info_weight * info_penalty(model, cfg.alpha_ref) / n_train


def build_loop(cfg: FitConfig, run: RunDir, state: dict | None = None, extra_hooks=None) -> Loop:
    """Data, model and the standard hooks of a run, at the checkpoint `state` if given;
    `extra_hooks(data)` adds a protocol's own hooks. Raises ConfigError before anything is written."""
    device = resolve_device(cfg.device)
    data = load_data(cfg).to(device)
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    hooks = []
    if cfg.example_record != "none":
        hooks.append(ExampleRecorder(run, data.splits, cfg.example_record, cfg.example_margins))
    hooks += [*measurement_hooks(cfg, data), *(extra_hooks(data) if extra_hooks else []), MetricsWriter(run),
              TensorBoardWriter(run, cfg.hist_every), Checkpointer(run, cfg.save_epochs), StatusWriter(run),
              ProgressBar(cfg.epochs, cfg.progress)]
    loop = Loop(model, data.splits, cfg, hooks, device, penalty=information_penalty(cfg, model, len(data.train)))
    if state is not None:
        loop.load_state_dict(state)
    return loop


def fit(cfg: FitConfig, out, overwrite: bool = False) -> RunDir:
    """Train from scratch into the run directory `out`."""
    cfg.validate()
    run = RunDir.check_new(out, overwrite)
    loop = build_loop(cfg, run)
    run.create(cfg.to_dict(), environment(loop.device), overwrite)
    return train_run(run, loop)
