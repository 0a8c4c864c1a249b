"""`rotelab fit`: train a network on data with corrupted labels or pixels (Zhang et al., ICLR 2017)."""

from __future__ import annotations

from pathlib import Path

from ..config import FitConfig
from ..data import load_data
from ..engine import Loop, resolve_device
from ..hooks import Checkpointer, ExampleRecorder, MetricsWriter, ProgressBar, StatusWriter, TensorBoardWriter
from ..models import build_model
from ..store import RunDir, environment


def build_loop(cfg: FitConfig, run: RunDir, extra_hooks=()) -> Loop:
    """Data, model and the standard hooks of a run. Raises ConfigError before anything is written."""
    device = resolve_device(cfg.device)
    data = load_data(cfg).to(device)
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    hooks = []
    if cfg.example_record != "none":
        hooks.append(ExampleRecorder(run, data.splits, cfg.example_record, cfg.example_margins))
    hooks += [*extra_hooks, MetricsWriter(run), TensorBoardWriter(run, cfg.hist_every),
              Checkpointer(run, cfg.save_epochs), StatusWriter(run), ProgressBar(cfg.epochs, cfg.progress)]
    return Loop(model, data.splits, cfg, hooks, device)


def _train(run: RunDir, loop: Loop) -> RunDir:
    try:
        loop.run()
    except KeyboardInterrupt:
        run.write_status("interrupted", epochs_completed=loop.epoch)
        raise
    except Exception as e:
        run.write_status("failed", epochs_completed=loop.epoch, error=f"{type(e).__name__}: {e}")
        raise
    return run


def fit(cfg: FitConfig, out, overwrite: bool = False) -> RunDir:
    """Train from scratch into the run directory `out`."""
    cfg.validate()
    run = RunDir.check_new(out, overwrite)
    loop = build_loop(cfg, run)
    run.create(cfg.to_dict(), environment(loop.device), overwrite)
    return _train(run, loop)


def resume(out) -> RunDir:
    """Continue the run in `out` from its last checkpoint (or from scratch if it has none)."""
    run = RunDir(out)
    cfg = FitConfig.from_dict(run.read_config()).validate()
    state = run.load_checkpoint() if run.last_checkpoint.is_file() else None
    loop = build_loop(cfg, run)
    if state is not None:
        loop.load_state_dict(state)
    if loop.done and run.read_status().get("state") == "done":
        return run
    run.write_status("running", epochs_completed=loop.epoch)
    return _train(run, loop)
