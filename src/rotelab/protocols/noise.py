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
from dataclasses import dataclass
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, ConfigError, opt
from ..hook import EpochResult, Hook
from ..plan import Plan, PlannedRun, folder_record, make
from ..protocol import Derived, Folder, Protocol, StudyParts, protocol_of, register
from ..store import RunDir, StoreError, atomic_write_json, read_json, runs_in

@dataclass
class NoiseConfig(Config):
    """The noise ramp on one trained run: freeze it, raise alpha step by step, evaluate under noise."""

    source: str = opt("", "(set from the positional RUN arguments) the trained run directory")
    alpha_start: float = opt(1e-4, "alpha of the first step", gt=0)
    alpha_factor: float = opt(2.0, "alpha is multiplied by this every --every epochs", gt=0)
    every: int = opt(3, "epochs per alpha step", ge=1)
    steps: int = opt(15, "number of alpha steps", ge=1)
    alphas: str | None = opt(None, "explicit comma-separated alphas, one per step (overrides start, factor and steps)")
    noise_samples: int = opt(4, "noisy passes averaged per evaluation (their spread is reported as _std)", ge=1)
    train_means: bool = opt(False, "keep training the weights' means under the rising noise (alpha stays fixed)")
    lr: float | None = opt(None, "learning rate with --train-means (default: the run's)", gt=0)
    noise_granularity: str = opt("layer", "one alpha per weight, per output unit or per layer", ("weight", "unit", "layer"))
    noise_sampling: str = opt("weights", "weights: exact draws per forward pass; lrt: Gaussian pre-activations (Linear)", ("weights", "lrt"))
    alpha_ref: float = opt(1.0, "reference alpha of the log-uniform KL", gt=0)
    seed: int = opt(0, "seed of the noise draws (and batch order with --train-means)", ge=0)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    eval_batch_size: int = opt(2048, "batch size of evaluation passes", ge=1)
    checkpoint_every: float = opt(30.0, "seconds between checkpoints; 0: every epoch", ge=0)
    progress: bool = opt(True, "show a progress bar")

    def alpha_list(self) -> list[float]:
        if self.alphas:
            try:
                values = [float(a) for a in self.alphas.split(",") if a.strip()]
            except ValueError:
                raise ConfigError("--alphas", f"expected comma-separated numbers, got {self.alphas!r}") from None
            if not values or min(values) <= 0:
                raise ConfigError("--alphas", f"needs positive alphas, got {self.alphas!r}")
            return values
        try:
            return [self.alpha_start * self.alpha_factor ** k for k in range(self.steps)]
        except OverflowError:
            return [math.inf]

    @property
    def epochs(self) -> int:
        return len(self.alpha_list()) * self.every

    def validate(self) -> "NoiseConfig":
        super().validate()
        alphas = self.alpha_list()
        if not all(math.isfinite(a) for a in alphas):
            raise ConfigError("--alphas" if self.alphas else "--alpha-factor",
                              f"the ramp reaches a non-finite alpha ({max(alphas)}); use fewer --steps or a smaller factor")
        return self


class AlphaRamp(Hook):
    """Sets alpha on every noisy layer before each epoch; records the alpha an epoch used."""

    def __init__(self, cfg: NoiseConfig):
        self.alphas, self.every = cfg.alpha_list(), cfg.every

    def alpha_of(self, epoch: int) -> float:
        return self.alphas[(epoch - 1) // self.every]

    def set_for(self, loop, epoch: int):
        from ..models.noisy import noisy_layers
        if epoch <= len(self.alphas) * self.every:
            for _, m in noisy_layers(loop.model):
                m.set_alpha(self.alpha_of(epoch))

    def on_start(self, loop):
        self.set_for(loop, loop.epoch + 1)

    def on_epoch_end(self, loop, result: EpochResult):
        result.metrics["alpha"] = self.alpha_of(result.epoch)
        self.set_for(loop, result.epoch + 1)


class NoiseFreeBaseline(Hook):
    """Epoch 0: the frozen network without noise, the reference of the half-accuracy summary."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_start(self, loop):
        if loop.epoch or any(r["epoch"] == 0 for r in self.run.read_metrics()):
            return
        _, metrics = loop.evaluate_splits()
        self.run.append_metrics({"epoch": 0, "alpha": 0.0, **metrics})


def noisy_evaluation(loop, samples: int) -> tuple[dict, dict]:
    """Every split evaluated with weight noise on, `samples` passes: the mean metrics with their
    spread as _std keys, and per example an Evaluation whose `correct` says whether it was right in
    the majority of the passes (the per-example record of the ramp)."""
    import torch
    from ..engine import Evaluation, evaluate, split_metrics
    evals, metrics = {}, {}
    for name, s in loop.splits.items():
        draws = [evaluate(loop.model, s.x, s.y, loop.spec.eval_batch_size) for _ in range(samples)]
        right = torch.stack([d.correct for d in draws]).float().mean(0)
        evals[name] = Evaluation(draws[0].loss, draws[0].pred, right > 0.5)
        per_draw = [split_metrics(name, d, s) for d in draws]
        for key in per_draw[0]:
            values = [m[key] for m in per_draw if m[key] is not None]
            metrics[key] = float(np.mean(values)) if values else None
            if values:
                metrics[f"{key}_std"] = float(np.std(values))
    return evals, metrics


def noisy_strategy(samples: int, train_means: bool):
    """The ramp's epoch: a frozen network (batch norm on its running statistics), trained only with
    --train-means, evaluated under weight noise."""
    from ..engine import Eager

    class NoisyEvaluation(Eager):
        frozen_bn = True

        def trains(self, loop) -> bool:
            return train_means

        def evaluate(self, loop):
            return noisy_evaluation(loop, samples)

    return NoisyEvaluation()


def source_config(cfg: NoiseConfig):
    """The source run and its config; StoreError if it is not a finished-enough trained run."""
    src = RunDir(cfg.source)
    proto = protocol_of(src)
    if not proto.trains:
        raise StoreError(src.path, f"{src.path} is a {proto.name} run, not a trained network")
    if not src.last_checkpoint.is_file():
        raise StoreError(src.path, f"{src.path} has no checkpoints/last.pt (it has not saved a trained network)")
    return src, proto, proto.config.from_dict(src.read_config())


def build_loop(cfg: NoiseConfig, run: RunDir, state: dict | None = None):
    """The source run's data and network (its last checkpoint), with noise, frozen unless train_means;
    trained (with --train-means) as the source was, at the ramp's lr, epochs and seed, on a constant
    schedule, recording per example through its own ExampleRecorder."""
    from ..data import load_data
    from ..engine import TrainSpec
    from ..hooks import ExampleRecorder, WeightNoiseStats
    from ..models.noisy import add_weight_noise, noisy_layers
    from ..training import assemble, device_data_model, writers
    src, proto, scfg = source_config(cfg)
    spec = TrainSpec.of(scfg, epochs=cfg.epochs, until_train_acc=None, lr=cfg.lr or scfg.lr, schedule="constant",
                        example_record="none", example_margins=False, augment=False, save_epochs=(), seed=cfg.seed,
                        eval_batch_size=cfg.eval_batch_size, checkpoint_every=cfg.checkpoint_every)
    # a protocol whose data are not load_data's says how to get them
    device, data, model = device_data_model(scfg, proto.ramp_data(scfg) if proto.ramp_data else load_data(scfg),
                                            cfg.device)
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
    # per example and noise level: right in the majority of the noisy passes (examples.npz)
    hooks = [ExampleRecorder(run, data.splits), NoiseFreeBaseline(run), WeightNoiseStats(cfg.alpha_ref),
             AlphaRamp(cfg), *writers(run, cfg.epochs, cfg.progress, desc=Path(cfg.source).name)]
    return assemble(spec, model, data, hooks, device, state,
                    strategy=noisy_strategy(cfg.noise_samples, cfg.train_means))


def summarize(run: RunDir, cfg: NoiseConfig | None = None) -> dict:
    """The alpha (and information) at which train accuracy first falls below half its noise-free value."""
    cfg = cfg or NoiseConfig.from_dict(run.read_config())
    m = run.read_metrics()
    base = next((r for r in m if r["epoch"] == 0), None)
    source = source_of(run.path, cfg.source)
    out = {"source": str(source), "label_corruption": source_label_corruption(source),
           "noise_free_train_acc": base["train_acc"] if base else None,
           "noise_free_test_acc": base["test_acc"] if base else None, "half_acc": None}
    if base:
        for r in m:
            if r["epoch"] > 0 and r["train_acc"] < base["train_acc"] / 2:
                out["half_acc"] = {k: r.get(k) for k in ("epoch", "alpha", "train_acc", "test_acc",
                                                          "kl_loguniform_bits", "kl_lognormal_bits",
                                                          "neg_half_log_alpha")}
                break
        out["half_alpha"] = half_alpha(m, base["train_acc"] / 2)
    return out


def half_alpha(metrics: list[dict], half: float) -> float | None:
    """The alpha at which train accuracy (the mean over each alpha's epochs) crosses `half`, linear in
    log alpha between the last level above it and the first below: a grid-free value, so networks that
    break within one grid step are still ordered."""
    by_alpha = {}
    for r in metrics:
        if r["epoch"] > 0 and r.get("alpha"):
            by_alpha.setdefault(r["alpha"], []).append(r["train_acc"])
    levels = [(a, sum(v) / len(v)) for a, v in sorted(by_alpha.items())]
    for (a0, acc0), (a1, acc1) in zip(levels, levels[1:]):
        if acc0 >= half > acc1:
            t = (acc0 - half) / (acc0 - acc1)
            return math.exp(math.log(a0) + t * (math.log(a1) - math.log(a0)))
    return levels[0][0] if levels and levels[0][1] < half else None


def source_of(ramp: Path, source) -> Path:
    """The trained run a ramp read: its recorded path, or where a moved copy of the ramp's study has it
    (the same step folder and name beside the ramp's own step folder: a published record, read on
    another machine)."""
    source = Path(source)
    if (source / "config.json").is_file():
        return source
    moved = Path(ramp).parents[1] / source.parent.name / source.name
    return moved if (moved / "config.json").is_file() else source


def source_label_corruption(source) -> float:
    try:
        return RunDir(source).label_corruption()
    except StoreError:
        return 0.0


def run_names(sources) -> list[str]:
    """Folder names for the source runs: their names, with the parent's where names repeat."""
    names = [Path(s).name for s in sources]
    return [f"{Path(s).parent.name}-{n}" if names.count(n) > 1 else n for s, n in zip(sources, names)]


def plan(cfg: NoiseConfig, out: Path, sources=()) -> Plan:
    """One noise-ramp run per source run in OUT/<name>; OUT/summary.json once they have run."""
    sources = [str(Path(s).resolve()) for s in sources]   # the ramp must find them from anywhere
    if not sources:
        raise ConfigError("runs", "give at least one trained run directory")
    out = Path(out)
    return Plan("noise", out, [PlannedRun("noise", out / name, dataclasses.replace(cfg, source=s))
                               for s, name in zip(sources, run_names(sources))],
                record=folder_record("noise", cfg, sources=sources), finish=write_summary)


def ramp(sources, cfg: NoiseConfig, out, overwrite: bool = False) -> list[RunDir]:
    return make("noise", cfg, out, overwrite, sources=sources)


def ramp_dirs(path) -> list[Path]:
    return runs_in(path, "noise")


def write_summary(out) -> Path:
    rows = [RunDir(d).read_status().get("summary") or summarize(RunDir(d)) for d in ramp_dirs(out)]
    path = Path(out) / "summary.json"
    atomic_write_json(path, {"runs": rows})
    return path


RAMP_FILE = "ramp.json"   # what folders of earlier versions recorded, before plan.json


def legacy_plan(out) -> Plan:
    """A folder made before plan.json: the sources of its ramp.json, else its ramps as they are."""
    record = Path(out) / RAMP_FILE
    if record.is_file():
        saved = read_json(record)
        return plan(NoiseConfig.from_dict(saved["config"]), out, sources=saved["sources"])
    dirs = ramp_dirs(out)
    if not dirs:
        raise ConfigError("--resume", f"{out} holds no noise-ramp runs")
    return Plan("noise", Path(out), [PlannedRun("noise", d, NoiseConfig.from_dict(RunDir(d).read_config()))
                                     for d in dirs], record=None, finish=write_summary)


def add_arguments(parser):
    parser.add_argument("runs", nargs="*", help="trained run directories")


def report_lines(run: RunDir) -> list[str]:
    half = run.read_status().get("summary", {}).get("half_acc")
    return [f"train accuracy below half of its noise-free value at alpha {half['alpha']:.3g} (epoch {half['epoch']}, "
            f"log-uniform KL {half['kl_loguniform_bits']:.4g} bits)" if half
            else "train accuracy stayed above half of its noise-free value"]


def group_figures(paths):
    from ..plots import plot_noise_ramp
    return [plot_noise_ramp(p, [summarize(RunDir(d)) for d in ramp_dirs(p)]) for p in paths if ramp_dirs(p)]


def report_section(runs, folder):
    parents = sorted({r.path.parent for r in runs if r.read_protocol() == "noise"}, key=str)
    return [(f"noise ramp: {p.name}", png) for p in parents for png in group_figures([p])]


# -- what studies of noise ramps draw and check ----------------------------------------------------

def noise_fate(run, split: str = "train"):
    """For a noise-ramp run: per example of the trained network's `split`, the alpha at which it
    breaks (first wrong in the majority of the noisy passes; inf if never, NaN if wrong at the first
    level), whether its label was corrupted, and from the training run's per-epoch record its
    forgetting events and first-learned epoch. That record is the clean evaluation pass at each
    epoch's end unless the run was made with --example-record presentation (Toneva et al. count
    over presentations). A DataFrame, one row per example."""
    import pandas as pd
    from ..measures.examples import breaking_step, first_correct, forgetting_events
    from ..runs import Run
    ex = run.examples
    ramp = run.correct(split, ex)
    alpha = {m["epoch"]: m["alpha"] for m in run.dir.read_metrics()}
    epochs = np.asarray(ex["epochs"])
    step = breaking_step(ramp)
    levels = np.array([alpha[int(e)] for e in epochs] + [np.inf])
    broke = np.where(step >= 0, levels[np.clip(step, 0, len(epochs))], np.nan)
    source = Run(source_of(run.path, run.config["source"]))
    trained = source.correct(split)
    return pd.DataFrame({"example": np.arange(ramp.shape[1]), "corrupted": ex[f"{split}_corrupted"],
                         "breaking_alpha": broke, "forgetting_events": forgetting_events(trained),
                         "first_learned": first_correct(trained)})


def breaking_summary(fate) -> dict:
    """Median breaking alpha of clean and corrupted examples (those right at the first noise level);
    the effect size, P(a corrupted example breaks before a clean one) (ties half), with a two-sided
    Mann-Whitney U test of the two; and, within each group and pooled, Spearman's correlation of the
    breaking alpha with the training run's forgetting events and first-learned epoch (pooled, the
    correlation mixes the groups' difference in with any within-group relation)."""
    from scipy.stats import mannwhitneyu, spearmanr
    right = fate[fate.breaking_alpha.notna()]
    groups = {"clean": right[~right.corrupted.astype(bool)], "corrupted": right[right.corrupted.astype(bool)]}
    parts = {name: g.breaking_alpha.to_numpy() for name, g in groups.items()}
    out: dict[str, Any] = {name: {"examples": int(len(v)), "median_breaking_alpha": float(np.median(v)) if len(v) else None}
           for name, v in parts.items()}
    if all(len(v) for v in parts.values()):
        test = mannwhitneyu(parts["corrupted"], parts["clean"], alternative="two-sided")
        out["mann_whitney_p"] = float(test.pvalue)
        out["prob_corrupted_first"] = 1 - float(test.statistic) / (len(parts["corrupted"]) * len(parts["clean"]))
    for name, g in {**groups, "all": right}.items():
        if len(g) > 2:
            out.setdefault(name, {})
            for col in ("forgetting_events", "first_learned"):
                if col in g and g[col].nunique() > 1 and g.breaking_alpha.nunique() > 1:
                    out[name][f"spearman_{col}"] = float(spearmanr(g.breaking_alpha, g[col]).statistic)
    return out


def example(tmp) -> tuple[dict, list]:
    """Ramps on two small trained runs (trained here, once per folder)."""
    from ..config import FitConfig
    from .fit import fit
    sources = []
    for p in (0.0, 1.0):
        source = Path(tmp) / f"source-{p}"
        if not (source / "status.json").is_file():
            fit(FitConfig(dataset="digits", widths=[64], epochs=3, lr=0.1, corrupt=f"labels={p}", hist_every=0,
                          progress=False), source)
        sources.append(str(source))
    return dict(steps=12, every=2, noise_samples=2, alpha_start=1e-3, checkpoint_every=0, progress=False), sources


PROTOCOL = register(Protocol(
    name="noise", config=NoiseConfig, plan=plan, build_loop=build_loop, example=example, summarize=summarize,
    help="weight-noise ramp on trained runs: accuracy and weight information as alpha rises",
    description="Freeze each trained run, wrap its weights in multiplicative log-normal noise and raise alpha every "
                "--every epochs; each run's results go to OUT/<name>.",
    trains=False, report_lines=report_lines,
    tables={"noise_fate": noise_fate},
    examples_summary=lambda run: {"noise_fate": breaking_summary(noise_fate(run))},
    folder=Folder(figures=group_figures, legacy_plan=legacy_plan),
    derived=Derived(add_arguments=add_arguments, inputs=lambda args: {"sources": args.runs}, cli_skip=("source",)),
    study=StudyParts(report_section=report_section, module="rotelab.protocols.noise_study")))
