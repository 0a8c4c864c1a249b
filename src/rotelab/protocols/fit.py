"""`rotelab fit`: train a network on data with corrupted labels or pixels (Zhang et al., ICLR 2017)."""

from __future__ import annotations

from pathlib import Path

from ..config import FitConfig
from ..hook import Hook
from ..plan import make, one_run
from ..protocol import Protocol, StudyParts, register
from . import fit_study   # what studies of fit runs draw and check
from ..store import RunDir


def measurement_hooks(cfg: FitConfig, data, run: RunDir | None = None) -> list:
    """Hooks that add measurements to each epoch's metrics, as the config asks."""
    from ..data import balanced_subset
    from ..hooks import BatchScalars, FisherTrace, NormStats, WeightNoiseStats
    from ..seeding import derive_seed
    hooks: list[Hook] = [NormStats()] if cfg.norms else []
    if cfg.batch_scalars and run is not None:
        hooks.append(BatchScalars(run))
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
    from ..models.noisy import info_penalty
    return lambda: cfg.info_weight * info_penalty(model, cfg.alpha_ref) / n_train


def standard_hooks(cfg: FitConfig, run: RunDir, data, own=(), checkpointer=None, total_epochs=None,
                   backfill_tb: bool = False) -> list:
    """The hooks of every training run, in the order the loop relies on: per-example bits and
    measurements first (they add metrics), then the protocol's own hooks, then the writers of
    metrics.jsonl and TensorBoard, then the checkpoint, then status.json (a run killed between two
    of them resumes from the checkpoint), and the progress line last."""
    from ..hooks import Checkpointer, ExampleRecorder, MetricsWriter, ProgressBar, StatusWriter, TensorBoardWriter
    hooks: list[Hook] = []
    if cfg.example_record != "none":
        hooks.append(ExampleRecorder(run, data.splits, cfg.example_record, cfg.example_margins,
                                     seen=data.train_subset))
    hooks += [*measurement_hooks(cfg, data, run), *own, MetricsWriter(run),
              TensorBoardWriter(run, cfg.hist_every, backfill=backfill_tb),
              checkpointer or Checkpointer(run, cfg.save_epochs), StatusWriter(run),
              ProgressBar(total_epochs or cfg.epochs, cfg.progress, desc=run.path.name)]
    return hooks


def build_loop(cfg: FitConfig, run: RunDir, state: dict | None = None, extra_hooks=None):
    """Data, model and the standard hooks of a run, at the checkpoint `state` if given;
    `extra_hooks(data)` adds a protocol's own hooks. Raises ConfigError before anything is written."""
    from ..data import load_data
    from ..engine import Loop, resolve_device
    from ..models import build_model
    device = resolve_device(cfg.device)
    data = load_data(cfg).to(device)
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    hooks = standard_hooks(cfg, run, data, extra_hooks(data) if extra_hooks else ())
    loop = Loop(model, data.splits, cfg, hooks, device, penalty=information_penalty(cfg, model, len(data.train)),
                fit_subset=data.train_subset)
    if state is not None:
        loop.load_state_dict(state)
    return loop


def plan(cfg: FitConfig, out: Path):
    return one_run("fit", cfg, out)


def fit(cfg: FitConfig, out, overwrite: bool = False) -> RunDir:
    """Train from scratch into the run directory `out`."""
    return make("fit", cfg, out, overwrite)[0]


def example(tmp) -> tuple[dict, list]:
    """A run of a few seconds on scikit-learn's digits (the conformance tests run every protocol's)."""
    return dict(dataset="digits", widths=[64], epochs=40, lr=0.05, corrupt="labels=0.5", hist_every=0,
                checkpoint_every=0, progress=False), []


PROTOCOL = register(Protocol(
    name="fit", config=FitConfig, plan=plan, build_loop=build_loop, example=example, stackable=True,
    help="train on data with corrupted labels or pixels",
    description="Train a network on data whose labels or pixels are corrupted (Zhang et al. 2017).",
    study=StudyParts(figures=fit_study.FIGURES, checks=fit_study.CHECKS, report_section=fit_study.report_section)))
