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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, FitConfig, opt, parse_seeds
from ..hook import EpochResult, Hook
from ..registry import Registry
from ..plan import Plan, PlannedRun, folder_record, make
from ..protocol import Folder, Protocol, StudyParts, register
from ..store import RunDir, runs_in, truncate_jsonl
from ..training import build_fit_loop

# name -> estimate(t, x_flat, x_ids, y, cfg) -> [{"estimator", "ixt", "ity"}] in bits, for one layer's activations
ESTIMATORS = Registry("estimator", "--estimators")


@ESTIMATORS.register("binning")
def binning(t, x, x_ids, y, cfg) -> list[dict]:
    """Plug-in estimates of the binned layer, with what bounds them (code_diagnostics: the ceiling, the
    distinct codes, levels per unit, saturated units): fixed edges (--bin-range, --n-bins), or
    floor(t / --bin-size), and the same for each of --more-bin-sizes (estimator binning-size-S)."""
    from ..measures.information import binning_estimate
    rows = []
    if cfg.bin_size is not None:
        rows.append({"estimator": "binning-size", **binning_estimate(t, x_ids, y, bin_size=cfg.bin_size)})
    else:
        rows.append({"estimator": "binning", **binning_estimate(t, x_ids, y, edges=cfg.edges)})
    for size in cfg.more_bin_sizes:
        rows.append({"estimator": f"binning-size-{size:g}", **binning_estimate(t, x_ids, y, bin_size=size)})
    return rows


@ESTIMATORS.register("kde")
def kde(t, x, x_ids, y, cfg) -> list[dict]:
    """Saxe et al.'s KDE upper and lower bounds, noise variance --kde-var."""
    from ..measures.information import kde_mi
    r = kde_mi(t, y, cfg.resolved_kde_var())
    return [{"estimator": "kde-upper", "ixt": r["ixt_upper"], "ity": r["ity_upper"]},
            {"estimator": "kde-lower", "ixt": r["ixt_lower"], "ity": r["ity_lower"]}]


@ESTIMATORS.register("ksg")
def ksg(t, x, x_ids, y, cfg) -> list[dict]:
    """Kraskov et al.'s k-nearest-neighbour estimate (--ksg-k), mixed for the discrete labels."""
    from ..measures.information import ksg_mi, mixed_ksg_mi
    t = t.cpu().numpy() if hasattr(t, "cpu") else t   # a k-d tree on the host
    return [{"estimator": "ksg", "ixt": ksg_mi(np.asarray(x, dtype=np.float64), t, cfg.ksg_k),
             "ity": mixed_ksg_mi(t, y, cfg.ksg_k)}]



@dataclass
class InfoPlaneConfig(FitConfig):
    """fit, plus capture of every layer at log-spaced epochs and mutual-information estimates."""

    seeds: str = opt("0", "seeds to run, e.g. 0-9 or 0,3,7; each is its own run directory OUT/seed-N")
    captures: int = opt(200, "about this many log-spaced epochs at which layers are captured (epoch 0 and the last always)", ge=2)
    capture_every: int = opt(0, "capture every N epochs instead (epoch 0 and the last always); 0: --captures log-spaced epochs", ge=0)
    info_sets: str = opt("sample", "sample: one evaluation set (--eval-size); splits: the whole training set and the whole test set, each on its own, with the labels each carries", ("sample", "splits"))
    eval_size: int | None = opt(None, "evaluation samples: default all data for tishby (train and test), else 2000 class-balanced training examples", ge=10)
    output_layer: str = opt("softmax", "the last information layer: softmax probabilities or the raw logits", ("softmax", "logits"))
    layers: str | None = opt(None, "modules to capture, comma-separated names as model.named_modules() gives them (e.g. layer1,layer2,layer3,layer4); their outputs, flattened, are the layers, the model's output last (default: the model's own activations(), as mlp and tishby have)")
    estimators: str = opt("binning", "comma-separated estimators: binning, kde, ksg")
    bin_range: str = opt("-1,1", "lo,hi of the fixed binning edges")
    n_bins: int = opt(30, "number of fixed edges, np.linspace(lo, hi, n_bins)", ge=2)
    bin_size: float | None = opt(None, "bin by floor(t / size) instead of fixed edges, with no bounds (as Saxe et al. for ReLU; 0.5 as the Memorizing IB study)", gt=0)
    more_bin_sizes: list[float] = opt([], "further bin sizes estimated on the same captures, comma-separated (a bin-size sweep: estimator binning-size-S)", flag_type="floats")
    kde_var: float | None = opt(None, "noise variance of the KDE bounds (default 1e-3 for tishby, 1e-1 otherwise)", gt=0)
    ksg_k: int = opt(3, "neighbours of the KSG estimator", ge=1)
    save_activations: bool = opt(False, "also write the captured activations (float16) to activations/epoch_NNNN.npz")
    grad_snr: bool = opt(False, "at captured epochs, log each layer's gradient mean and standard deviation over the batches")
    vectorize: bool = opt(False, "train the seeds together as one stacked model (vectorized seeds; each keeps its own run)")

    @property
    def estimator_list(self) -> list[str]:
        names = [e.strip() for e in self.estimators.split(",") if e.strip()]
        for e in names:
            ESTIMATORS.get(e)
        return names

    @property
    def edges(self):
        import numpy as np
        try:
            lo, hi = (float(v) for v in self.bin_range.split(","))
        except ValueError:
            raise ConfigError("--bin-range", f"expected lo,hi such as -1,1, got {self.bin_range!r}") from None
        if not lo < hi:
            raise ConfigError("--bin-range", f"needs lo < hi, got {self.bin_range!r}")
        # float32 edges, as the original code's: a float32 activation that lies exactly on an edge
        # then falls in the same bin as there (float64 edges can put it on the other side)
        return np.linspace(lo, hi, self.n_bins).astype(np.float32).astype(np.float64)

    def resolved_kde_var(self) -> float:
        return self.kde_var if self.kde_var is not None else (1e-3 if self.dataset == "tishby" else 1e-1)

    def validate(self) -> "InfoPlaneConfig":
        super().validate()
        parse_seeds(self.seeds)
        self.estimator_list
        if any(s <= 0 for s in self.more_bin_sizes):
            raise ConfigError("--more-bin-sizes", f"bin sizes are positive, got {self.more_bin_sizes}")
        if self.more_bin_sizes and "binning" not in self.estimator_list:
            raise ConfigError("--more-bin-sizes", "are sizes of the binning estimator; add binning to --estimators")
        self.edges
        if self.vectorize and self.grad_snr:
            raise ConfigError("--grad-snr", "reads each run's gradients batch by batch, which a stack of runs "
                                            "does not expose; drop --vectorize or --grad-snr")
        batch_norm = self.model in ("mlp", "tishby") and self.model_args.get("batch_norm")
        if self.vectorize and (batch_norm or self.batch_scalars):
            flag = self.model_flag("batch_norm") if batch_norm else "--batch-scalars"
            raise ConfigError(flag, "is not supported by a stack of runs (the stacked kernel has no batch norm "
                                    "and exposes no single run's batches); drop --vectorize or " + flag)
        return self


def capture_epochs(last: int, n: int, every: int = 0) -> set[int]:
    """Epoch 0 and about n log-spaced epochs in [1, last] (or every `every` epochs), the last included."""
    if every:
        return {0, last, *range(every, last + 1, every)}
    pts = np.unique(np.round(np.logspace(0, np.log10(max(last, 1)), n)).astype(int))
    return {0, last, *pts.tolist()}


def layer_estimates(t: np.ndarray, x: np.ndarray, x_ids: np.ndarray, y: np.ndarray, cfg: InfoPlaneConfig) -> list[dict]:
    """I(X;T) and I(T;Y) in bits of one layer's activations, per estimator."""
    return [row for est in cfg.estimator_list for row in ESTIMATORS[est](t, x, x_ids, y, cfg)]


def whole_task_labels(cfg: InfoPlaneConfig) -> InfoPlaneConfig:
    """On the 12-bit task the information plane is measured on all 4,096 patterns, train and test;
    with corrupted labels the original randomizes all of them, so that I(T;Y) is measured against
    the labels the network was trained with. Here that is --corrupt-test, set (and saved) for it."""
    kind, p = cfg.corruption
    if cfg.dataset == "tishby" and cfg.eval_size is None and kind == "labels" and p > 0 and not cfg.corrupt_test:
        return dataclasses.replace(cfg, corrupt_test=True)
    return cfg


def evaluation_sets(data, cfg: InfoPlaneConfig) -> dict:
    """name -> (x, y) of the sets layers are captured on, with the labels each carries: with
    info_sets "splits" the whole training and test sets; else all of the 12-bit task (train and
    test, as the original study), or a fixed class-balanced sample of the training set."""
    import torch
    from ..data import balanced_subset
    if cfg.info_sets == "splits":
        return {"train": (data.train.x, data.train.y), "test": (data.test.x, data.test.y)}
    if cfg.dataset == "tishby" and cfg.eval_size is None:
        return {"all": (torch.cat([data.train.x, data.test.x]), torch.cat([data.train.y, data.test.y]))}
    n = min(cfg.eval_size or 2000, len(data.train))
    idx = balanced_subset(data.train.y.cpu(), n, data.num_classes).to(data.train.y.device)
    return {"train": (data.train.x[idx], data.train.y[idx])}


class InfoPlaneRecorder(Hook):
    """Captures every layer at chosen epochs and appends one info.jsonl line per set, layer and
    estimator (`split` names the set: train, test, or all of the 12-bit task)."""

    def __init__(self, run: RunDir, sets: dict, cfg: InfoPlaneConfig):
        from ..measures.information import row_ids
        self.run, self.cfg = run, cfg
        # name -> (x, labels, flat x for KSG, ids of distinct inputs: equal inputs are one x)
        # (a CPU tensor's flat view costs no copy; KSG takes it in float64 itself)
        self.sets = {name: (x, y.cpu().numpy(), x.flatten(1).cpu().numpy(), row_ids(x.flatten(1).cpu().numpy()))
                     for name, (x, y) in sets.items()}
        self.epochs = capture_epochs(cfg.epochs, cfg.captures, cfg.capture_every)
        self.last: int | None = None
        self.seconds = 0.0

    @property
    def file(self) -> Path:
        return self.run.info_file

    def capture(self, loop, epoch: int):
        import torch
        t0 = time.perf_counter()
        model = loop.model
        model.eval()
        lines, saved = [], {}
        for name, (x, y, x_flat, x_ids) in self.sets.items():
            with torch.no_grad():
                acts = [a.float() for a in layer_outputs(model, x, self.cfg.output_layer, self.cfg.layers)]
            for layer, t in enumerate(acts):
                # on an accelerator the layers stay there (binning and KDE run on the device, the host
                # gets N code ids); on the CPU the NumPy binning, 2.4x faster there (bench/mi_estimators.py)
                t64 = t.to(torch.float64)
                t64 = t64.numpy() if t64.device.type == "cpu" else t64
                for row in layer_estimates(t64, x_flat, x_ids, y, self.cfg):
                    lines.append({"epoch": epoch, "seed": self.cfg.seed, "layer": layer, "split": name,
                                  "n": len(y), **row})
            prefix = "" if len(self.sets) == 1 else f"{name}_"
            if self.cfg.save_activations:
                saved.update({f"{prefix}layer{i}": a.cpu().numpy().astype(np.float16) for i, a in enumerate(acts)})
        with open(self.file, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in lines))
        if self.cfg.save_activations:
            folder = self.run.activations
            folder.mkdir(exist_ok=True)
            np.savez(folder / f"epoch_{epoch:05d}.npz", **saved)
        self.last = epoch
        self.seconds += time.perf_counter() - t0

    def on_start(self, loop):
        if self.file.exists():   # resuming: drop what came after the checkpoint
            keep = truncate_jsonl(self.file, loop.epoch)
            self.last = max((r["epoch"] for r in keep), default=None)
        if loop.epoch == 0 and self.last is None:
            self.capture(loop, 0)

    def on_epoch_end(self, loop, result: EpochResult):
        if result.epoch in self.epochs or loop.done:
            self.capture(loop, result.epoch)
        result.metrics["seconds_info"] = self.seconds


class GradientSNR(Hook):
    """The gradient's signal and noise per layer (Shwartz-Ziv & Tishby's drift and diffusion phases):
    over the batches of a captured epoch, the norm of the mean weight gradient and the norm of its
    elementwise standard deviation, as `grad_mean/layer{i}` and `grad_std/layer{i}` in the metrics."""

    def __init__(self, epochs: set[int]):
        self.epochs, self.sums = epochs, None

    def weights(self, loop) -> list:
        return [layer[0].weight for layer in loop.model.layers] + [loop.model.head.weight]

    def on_backward(self, loop, loss):
        if loop.epoch + 1 not in self.epochs:
            return
        import torch
        grads = [w.grad.detach().double() for w in self.weights(loop)]
        if self.sums is None:
            self.sums = [[torch.zeros_like(g), torch.zeros_like(g)] for g in grads] + [0]
        for (s1, s2), g in zip(self.sums[:-1], grads):
            s1 += g
            s2 += g * g
        self.sums[-1] += 1

    def on_epoch_end(self, loop, result: EpochResult):
        if self.sums is None:
            return
        n = self.sums[-1]
        for i, (s1, s2) in enumerate(self.sums[:-1]):
            mean = s1 / n
            var = (s2 / n - mean * mean).clamp_min(0)
            result.metrics[f"grad_mean/layer{i}"] = float(mean.norm())
            result.metrics[f"grad_std/layer{i}"] = float(var.sqrt().norm())
        self.sums = None


def layer_names(cfg_layers: str | None) -> list[str] | None:
    return [n.strip() for n in cfg_layers.split(",") if n.strip()] if cfg_layers else None


def layer_outputs(model, x, output: str = "softmax", layers: str | None = None) -> list:
    """The layers of an information plane: with `layers`, the outputs of those modules (forward hooks;
    each flattened to (N, d)) in the order named, then the model's output as softmax probabilities or
    logits; without, the model's own activations(x, output)."""
    import torch
    names = layer_names(layers)
    if names is None:
        return model.activations(x, output)
    modules = dict(model.named_modules())
    caught: dict = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: caught.__setitem__(n, o)) for n in names]
    try:
        logits = model(x).float()
    finally:
        for h in handles:
            h.remove()
    out = [caught[n].flatten(1) for n in names]
    return [*out, logits if output == "logits" else torch.softmax(logits, dim=1)]


def check_layers(model, cfg: InfoPlaneConfig) -> None:
    """One error for a model infoplane cannot capture: named modules it does not have, or no names for
    a model without activations()."""
    names = layer_names(cfg.layers)
    if cfg.grad_snr and not (hasattr(model, "layers") and hasattr(model, "head")):
        raise ConfigError("--grad-snr", f"reads the weights of an MLP's layers, which {cfg.model} does not have; "
                                        "drop --grad-snr")
    if names is None:
        if not callable(getattr(model, "activations", None)):
            children = ",".join(n for n, _ in model.named_children())
            raise ConfigError("--layers", f"{cfg.model} has no default layers to capture; name its modules, "
                                          f"e.g. --layers {children}")
        return
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known]
    if missing:
        children = ", ".join(n for n, _ in model.named_children())
        raise ConfigError("--layers", f"{cfg.model} has no module {missing[0]!r}; its top-level modules are "
                                      f"{children} (dotted names reach inside them)")


def build_loop(cfg: InfoPlaneConfig, run: RunDir, state: dict | None = None):
    """A fit run's loop with the capture hook; a model is captured through forward hooks on the modules
    --layers names, or through its own `activations(x, output)` (its layers' outputs in order, the
    output layer last)."""
    def hooks(data):
        own = [InfoPlaneRecorder(run, evaluation_sets(data, cfg), cfg)]
        if cfg.grad_snr:
            own.append(GradientSNR(capture_epochs(cfg.epochs, cfg.captures, cfg.capture_every)))
        return own
    loop = build_fit_loop(cfg, run, state, hooks)
    check_layers(loop.model, cfg)
    return loop


def seed_dirs(path) -> list[Path]:
    return [d for d in runs_in(path) if d.name.startswith("seed-")]


def plan(cfg: InfoPlaneConfig, out: Path) -> Plan:
    """One run per seed in out/seed-N (one stack with --vectorize)."""
    cfg = whole_task_labels(cfg)
    out = Path(out)
    return Plan("infoplane", out, [PlannedRun("infoplane", out / f"seed-{s}", dataclasses.replace(cfg, seed=s),
                                              stack="seeds" if cfg.vectorize else None)
                                   for s in parse_seeds(cfg.seeds)], record=folder_record("infoplane", cfg))


def infoplane(cfg: InfoPlaneConfig, out, overwrite: bool = False) -> list[RunDir]:
    return make("infoplane", cfg, out, overwrite)


def legacy_plan(out) -> Plan:
    """A folder made before plan.json: every seed of the --seeds its runs saved."""
    dirs = seed_dirs(out)
    if not dirs:
        raise ConfigError("--resume", f"{out} has no seed-N runs; is it an infoplane output folder?")
    return plan(InfoPlaneConfig.from_dict(RunDir(dirs[0]).read_config()), out)


def group_figures(paths):
    from ..plots import plot_grad_snr, plot_infoplane
    out = plot_infoplane(paths)
    snr = plot_grad_snr(paths)
    return out + ([snr] if snr else [])


def report_section(runs, folder):
    """Information planes of every folder of infoplane seeds, side by side."""
    groups = sorted({r.path.parent if r.path.name.startswith("seed-") else r.path for r in runs
                     if r.read_protocol() == "infoplane"}, key=str)
    if not groups:
        return []
    from ..plots import plot_infoplane
    return [(f"information planes: {p.stem}", p) for p in plot_infoplane(groups, folder)]


# -- what studies of information planes draw and check ---------------------------------------------

def example(tmp) -> tuple[dict, list]:
    return dict(dataset="tishby", model="tishby", optimizer="adam", lr=4e-3, batch_size=256, epochs=40,
                seeds="0-1", captures=8, eval_size=512, hist_every=0, checkpoint_every=0, progress=False), []


PROTOCOL = register(Protocol(
    name="infoplane", config=InfoPlaneConfig, plan=plan, build_loop=build_loop, example=example,
    help="information planes of every layer, for several seeds",
    description="Train as fit does, for each of --seeds (OUT/seed-N), capturing every layer at log-spaced epochs "
                "and estimating I(X;T) and I(T;Y) (Shwartz-Ziv & Tishby 2017; Saxe et al. 2018).",
    folder=Folder(figures=group_figures, legacy_plan=legacy_plan),
    study=StudyParts(report_section=report_section, module="rotelab.protocols.infoplane_study")))
