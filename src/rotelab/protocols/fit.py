"""`rotelab fit`: train a network on data with corrupted labels or pixels (Zhang et al., ICLR 2017)."""

from __future__ import annotations

from ..config import FitConfig
from ..data import load_data
from ..engine import Loop, resolve_device
from ..hooks import Checkpointer, ExampleRecorder, MetricsWriter, ProgressBar, StatusWriter, TensorBoardWriter
from ..models import build_model
from ..store import RunDir, environment
from . import train_run


CONFIG = FitConfig


def build_loop(cfg: FitConfig, run: RunDir, state: dict | None = None, extra_hooks=None) -> Loop:
    """Data, model and the standard hooks of a run, at the checkpoint `state` if given;
    `extra_hooks(data)` adds a protocol's own hooks. Raises ConfigError before anything is written."""
    device = resolve_device(cfg.device)
    data = load_data(cfg).to(device)
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    hooks = []
    if cfg.example_record != "none":
        hooks.append(ExampleRecorder(run, data.splits, cfg.example_record, cfg.example_margins))
    hooks += [*(extra_hooks(data) if extra_hooks else []), MetricsWriter(run), TensorBoardWriter(run, cfg.hist_every),
              Checkpointer(run, cfg.save_epochs), StatusWriter(run), ProgressBar(cfg.epochs, cfg.progress)]
    loop = Loop(model, data.splits, cfg, hooks, device)
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
