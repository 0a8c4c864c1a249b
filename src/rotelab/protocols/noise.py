"""`rotelab noise`: the weight-noise ramp (Achille & Soatto 2018).

Each trained run is frozen (no parameter update, batch norm on its running statistics) and wrapped
in multiplicative log-normal weight noise; alpha rises by a factor (or along a list) every `every`
epochs. Each epoch evaluates the training and test sets with fresh noise (`noise_samples` passes,
mean and spread) and records the information in the weights. With `train_means` the weights' means
keep training under the noise. Every source run gets its own run directory OUT/<name>, made by the
same Loop and hooks as any other run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import PROTOCOL_CONFIGS, ConfigError, ForgetConfig, NoiseConfig, parse_corruption
from ..data import load_data
from ..engine import EpochResult, Hook, Loop, resolve_device
from ..hooks import Checkpointer, MetricsWriter, ProgressBar, StatusWriter, TensorBoardWriter, WeightNoiseStats
from ..models import build_model
from ..models.noisy import add_weight_noise, noisy_layers
from ..store import RunDir, atomic_write_json, environment
from . import train_run

CONFIG = NoiseConfig


class AlphaRamp(Hook):
    """Sets alpha on every noisy layer before each epoch; records the alpha an epoch used."""

    def __init__(self, cfg: NoiseConfig):
        self.alphas, self.every = cfg.alpha_list(), cfg.every

    def alpha_of(self, epoch: int) -> float:
        return self.alphas[(epoch - 1) // self.every]

    def set_for(self, loop: Loop, epoch: int):
        if epoch <= len(self.alphas) * self.every:
            for _, m in noisy_layers(loop.model):
                m.set_alpha(self.alpha_of(epoch))

    def on_start(self, loop: Loop):
        self.set_for(loop, loop.epoch + 1)

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        result.metrics["alpha"] = self.alpha_of(result.epoch)
        self.set_for(loop, result.epoch + 1)


class NoiseFreeBaseline(Hook):
    """Epoch 0: the frozen network without noise, the reference of the half-accuracy summary."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_start(self, loop: Loop):
        if loop.epoch or any(r["epoch"] == 0 for r in self.run.read_metrics()):
            return
        _, metrics = loop.evaluate_splits(noisy_samples=0)
        self.run.append_metrics({"epoch": 0, "alpha": 0.0, **metrics})


def source_config(cfg: NoiseConfig):
    src = RunDir(cfg.source)
    if not src.last_checkpoint.is_file():
        raise ConfigError("runs", f"{src.path} has no checkpoints/last.pt; give trained rotelab run directories")
    protocol = src.read_protocol()
    if protocol not in ("fit", "forget", "infoplane"):
        raise ConfigError("runs", f"{src.path} is a {protocol} run; the noise ramp needs trained networks")
    return src, PROTOCOL_CONFIGS[protocol].from_dict(src.read_config())


def build_loop(cfg: NoiseConfig, run: RunDir, state: dict | None = None) -> Loop:
    """The source run's data and network (its last checkpoint), with noise, frozen unless train_means."""
    src, scfg = source_config(cfg)
    lcfg = dataclasses.replace(scfg, epochs=cfg.epochs, until_train_acc=None, lr=cfg.lr or scfg.lr,
                               schedule="constant", example_record="none", example_margins=False, augment=False,
                               save_epochs=[], seed=cfg.seed, device=cfg.device, eval_batch_size=cfg.eval_batch_size,
                               checkpoint_every=cfg.checkpoint_every, progress=cfg.progress, info_weight=0.0,
                               learn_alpha=False, fisher_every=0)
    device = resolve_device(cfg.device)
    if isinstance(scfg, ForgetConfig):
        from .forget import load_parts
        data = load_parts(scfg)
        data.val = None   # stage 2 trains on the train part; the ramp evaluates it and the test set
    else:
        data = load_data(scfg)
    data = data.to(device)
    model = build_model(scfg, data.input_shape, data.num_classes)
    model.load_state_dict(src.load_checkpoint()["model"])
    if not noisy_layers(model):
        add_weight_noise(model, cfg.alpha_list()[0], cfg.noise_granularity, learn=False, sampling=cfg.noise_sampling)
    for _, m in noisy_layers(model):
        m.log_alpha.requires_grad_(False)
        m.max_log_alpha = float("inf")
        m.sampling = cfg.noise_sampling
    for name, p in model.named_parameters():
        if not name.endswith("log_alpha"):
            p.requires_grad_(cfg.train_means)
    model = model.to(device)
    hooks = [NoiseFreeBaseline(run), WeightNoiseStats(cfg.alpha_ref), AlphaRamp(cfg), MetricsWriter(run),
             TensorBoardWriter(run, hist_every=0), Checkpointer(run), StatusWriter(run),
             ProgressBar(cfg.epochs, cfg.progress, desc=Path(cfg.source).name)]
    loop = Loop(model, data.splits, lcfg, hooks, device, train=cfg.train_means,
                noisy_eval_samples=cfg.noise_samples, frozen_bn=True)
    if state is not None:
        loop.load_state_dict(state)
    return loop


def label_corruption(run: RunDir) -> float:
    """The label-corruption level p of a run (0 for other corruptions), for coloring figures."""
    kind, p = parse_corruption(run.read_config().get("corrupt", "none"))
    return p if kind == "labels" else 0.0


def summarize(run: RunDir, cfg: NoiseConfig | None = None) -> dict:
    """The alpha (and information) at which train accuracy first falls below half its noise-free value."""
    cfg = cfg or NoiseConfig.from_dict(run.read_config())
    m = run.read_metrics()
    base = next((r for r in m if r["epoch"] == 0), None)
    out = {"source": cfg.source, "label_corruption": label_corruption(RunDir(cfg.source)),
           "noise_free_train_acc": base["train_acc"] if base else None,
           "noise_free_test_acc": base["test_acc"] if base else None, "half_acc": None}
    if base:
        for r in m:
            if r["epoch"] > 0 and r["train_acc"] < base["train_acc"] / 2:
                out["half_acc"] = {k: r.get(k) for k in ("epoch", "alpha", "train_acc", "test_acc",
                                                          "kl_loguniform_bits", "kl_lognormal_bits",
                                                          "neg_half_log_alpha")}
                break
    return out


def run_names(sources) -> list[str]:
    """Folder names for the source runs: their names, with the parent's where names repeat."""
    names = [Path(s).name for s in sources]
    return [f"{Path(s).parent.name}-{n}" if names.count(n) > 1 else n for s, n in zip(sources, names)]


def ramp(sources, cfg: NoiseConfig, out, overwrite: bool = False) -> list[RunDir]:
    """One noise-ramp run per source run in OUT/<name>, and OUT/summary.json."""
    if not sources:
        raise ConfigError("runs", "give at least one trained run directory")
    cfg.validate()
    RunDir.check_new(out, overwrite)
    cfgs = [dataclasses.replace(cfg, source=str(s)) for s in sources]
    for c in cfgs:
        build_loop(c, RunDir(Path(out) / "probe"))   # raises on any bad source before writing
    if overwrite and Path(out).is_dir():
        import shutil
        shutil.rmtree(out)
    runs = []
    for c, name in zip(cfgs, run_names(sources)):
        run = RunDir(Path(out) / name)
        loop = build_loop(c, run)
        run.create(c.to_dict(), environment(loop.device), protocol="noise")
        runs.append(train_run(run, loop, lambda r, c=c: summarize(r, c)))
    write_summary(out)
    return runs


def ramp_dirs(path) -> list[Path]:
    return sorted(p.parent for p in Path(path).glob("*/config.json")
                  if json.loads(p.read_text()).get("protocol") == "noise")


def write_summary(out) -> Path:
    rows = [RunDir(d).read_status().get("summary") or summarize(RunDir(d)) for d in ramp_dirs(out)]
    path = Path(out) / "summary.json"
    atomic_write_json(path, {"runs": rows})
    return path
