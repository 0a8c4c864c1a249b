"""The one assembly of a training run, for every protocol: the hooks every run has, in the order the
loop relies on, and the Loop over a model and its data at a checkpoint's state. A protocol adds its
own hooks (forget's stage switch, infoplane's capture, the noise ramp's alpha) and, where its epoch
differs, its own strategy; it does not assemble the writers or the loop itself."""

from __future__ import annotations

from .config import FitConfig
from .hook import Hook
from .store import RunDir


def measurement_hooks(cfg: FitConfig, data, run: RunDir | None = None) -> list:
    """Hooks that add measurements to each epoch's metrics, as the config asks."""
    from .data import balanced_subset
    from .hooks import BatchScalars, FisherTrace, NormStats, WeightNoiseStats
    from .seeding import derive_seed
    hooks: list[Hook] = [NormStats()] if cfg.norms else []
    if cfg.batch_scalars and run is not None:
        hooks.append(BatchScalars(run))
    if cfg.weight_noise != "none":
        # under the proper prior also the noisy fit, and the N and K a bound on it reads
        proper = cfg.info_prior == "init"
        hooks.append(WeightNoiseStats(cfg.alpha_ref, data.train if proper else None, data.num_classes if proper else None))
    if cfg.fisher_every:
        n = min(cfg.fisher_samples, len(data.train))
        idx = balanced_subset(data.train.y.cpu(), n, data.num_classes, seed=derive_seed(cfg.seed, "fisher-sample"))
        hooks.append(FisherTrace(data.train.x[idx.to(data.train.x.device)], cfg.fisher_every, cfg.seed))
    return hooks


def information_penalty(cfg: FitConfig, model, n_train: int):
    """beta * KL / N for the loss, or None."""
    if not cfg.info_weight:
        return None
    from .models.noisy import info_penalty
    return lambda: cfg.info_weight * info_penalty(model, cfg.alpha_ref, cfg.info_prior) / n_train


def writers(run: RunDir, total_epochs: int, progress: bool, hist_every: int = 0, save_epochs=(),
            checkpointer=None, backfill_tb: bool = False, desc: str | None = None) -> list:
    """What every run writes, in phase order: metrics.jsonl and TensorBoard, then the checkpoint,
    then status.json (a run killed between two of them resumes from the checkpoint), and the
    progress line last."""
    from .hooks import Checkpointer, MetricsWriter, ProgressBar, StatusWriter, TensorBoardWriter
    return [MetricsWriter(run), TensorBoardWriter(run, hist_every, backfill=backfill_tb),
            checkpointer or Checkpointer(run, save_epochs), StatusWriter(run),
            ProgressBar(total_epochs, progress, desc=desc or run.path.name)]


def standard_hooks(cfg: FitConfig, run: RunDir, data, own=(), checkpointer=None, total_epochs=None,
                   backfill_tb: bool = False) -> list:
    """The hooks of a run trained from a FitConfig (or a config built on it): per-example bits and
    measurements first (they add metrics), then the protocol's own hooks, then the writers."""
    from .hooks import ExampleRecorder
    hooks: list[Hook] = []
    if cfg.example_record != "none":
        hooks.append(ExampleRecorder(run, data.splits, cfg.example_record, cfg.example_margins,
                                     seen=data.train_subset))
    return [*hooks, *measurement_hooks(cfg, data, run), *own,
            *writers(run, total_epochs or cfg.epochs, cfg.progress, cfg.hist_every, cfg.save_epochs,
                     checkpointer, backfill_tb)]


def assemble(spec, model, data, hooks, device, state: dict | None = None, **loop_args):
    """The Loop of a run: `model` trained on `data` as `spec` (an engine.TrainSpec, or a config it is
    taken from) says, with `hooks`; its clean passes switch weight noise off where the model has any;
    at the checkpoint `state` if given. `loop_args`: the Loop's other arguments (fit_on, penalty,
    strategy, fit_subset, end_epoch, until)."""
    from .engine import Loop, TrainSpec
    from .models.noisy import noise_off, noisy_layers
    if TrainSpec.of(spec).compile:
        model.compile()   # in place: the module keeps its parameters' names (checkpoints load either way)
    loop = Loop(model, data.splits, spec, hooks, device, clean_pass=noise_off if noisy_layers(model) else None,
                **loop_args)
    loop.data_record = getattr(data, "record", None)   # what config.json keeps as "data"
    if state is not None:
        loop.load_state_dict(state)
    return loop


def device_data_model(cfg, data=None, device: str | None = None):
    """Where a run trains, its data moved there (once per process: data.on_device) and its model built
    for them: the one assembly every protocol uses (fit, infoplane and memorize through build_fit_loop,
    forget with its val part, a noise ramp with its source's config). `data`: the run's Data if not
    load_data(cfg)'s; `device`: the device if not cfg's. Raises ConfigError before anything is written."""
    from .data import load_data
    from .engine import resolve_device
    from .models import build_model
    where = resolve_device(device or cfg.device)
    data = (data if data is not None else load_data(cfg)).to(where)
    model = build_model(cfg, data.input_shape, data.num_classes).to(where)
    return where, data, model


def build_fit_loop(cfg: FitConfig, run: RunDir, state: dict | None = None, own_hooks=None):
    """Data, model and the standard hooks of a run trained from a FitConfig (fit, infoplane,
    memorize), at the checkpoint `state` if given; `own_hooks(data)` adds a protocol's own hooks.
    Raises ConfigError before anything is written."""
    device, data, model = device_data_model(cfg)
    hooks = standard_hooks(cfg, run, data, own_hooks(data) if own_hooks else ())
    return assemble(cfg, model, data, hooks, device, state,
                    penalty=information_penalty(cfg, model, len(data.train)), fit_subset=data.train_subset)
