"""Run configuration: one dataclass per protocol, every field a CLI flag (see cli.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """Bad input. `field` names the option (as the user typed it); the message says the fix."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def opt(default, help: str, choices=None, flag_type=None, aliases=()):
    """A config field with its CLI help text (and optional choices and extra flag names)."""
    meta = {"help": help, "aliases": tuple(aliases)}
    if choices is not None:
        meta["choices"] = choices
    if flag_type is not None:
        meta["type"] = flag_type
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def config_from_dict(cls, d: dict):
    """A config dataclass from a dict, naming the first unknown field."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(flag(unknown[0]), f"unknown config field; known fields: {', '.join(sorted(names))}")
    return cls(**d)


CORRUPTIONS = ("none", "labels", "shuffled-pixels", "random-pixels", "gaussian")
SCHEDULES = ("constant", "step", "exp", "cosine")


@dataclass
class FitConfig:
    # data
    dataset: str = opt("digits", "dataset name (see `rotelab datasets`)")
    data_root: str = opt("data", "folder with torchvision-format data (cifar10, cifar100, mnist, fashion-mnist)")
    data_file: str | None = opt(None, "tishby: path to var_u.mat; without it a generated 12-bit task is used")
    download: bool = opt(False, "download torchvision data sets into --data-root when missing")
    subset: int | None = opt(None, "train on a fixed, class-balanced subset of this many training examples")
    test_fraction: float = opt(0.2, "held-out fraction for data sets without a standard split (digits, tishby)")
    corrupt: str = opt("none", "KIND=P with KIND in labels, shuffled-pixels, random-pixels, gaussian; P in [0,1] is the fraction of examples corrupted")
    corrupt_test: bool = opt(False, "corrupt the test set the same way (own random stream; shuffled-pixels keeps the train permutation)")
    label_noise_mode: str = opt("uniform", "uniform: redraw from all classes (may keep the true one, as Zhang et al.); other: always a different class", ("uniform", "other"))
    # model
    model: str = opt("mlp", "model name (see `rotelab models`)")
    widths: list[int] = opt([512], "mlp hidden widths, comma-separated, e.g. 512,512,512", flag_type="ints")
    activation: str | None = opt(None, "relu or tanh (default: the model's own, relu for mlp, tanh for tishby)", ("relu", "tanh"))
    depth: int = opt(16, "wrn depth (6n+4)")
    widen: int = opt(4, "wrn widen factor")
    # optimisation
    epochs: int = opt(100, "maximum number of epochs")
    until_train_acc: float | None = opt(None, "stop once train accuracy (clean pass) reaches this value, e.g. 1.0")
    batch_size: int = opt(128, "training batch size")
    eval_batch_size: int = opt(2048, "batch size of evaluation passes")
    optimizer: str = opt("sgd", "optimizer", ("sgd", "adam"))
    lr: float = opt(0.01, "learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.0, "weight decay")
    schedule: str = opt("constant", "lr schedule, stepped once per epoch", SCHEDULES)
    lr_gamma: float = opt(0.95, "lr factor: per epoch for exp (Zhang et al. use 0.95), per --lr-step epochs for step")
    lr_step: int = opt(30, "epochs between lr drops for --schedule step")
    augment: bool = opt(False, "random crop (pad 4) and horizontal flip, on batched tensors")
    # weight noise and the information in the weights
    weight_noise: str = opt("none", "lognormal: multiplicative log-normal noise on every Linear and Conv weight", ("none", "lognormal"))
    noise_alpha: float = opt(1e-3, "initial alpha = Var[log eps] of the weight noise")
    noise_granularity: str = opt("layer", "one alpha per weight, per output unit or per layer", ("weight", "unit", "layer"))
    learn_alpha: bool = opt(False, "learn log alpha with the weights")
    noise_sampling: str = opt("lrt", "lrt: Gaussian pre-activations with the exact moments (Linear); weights: exact draws shared by a batch", ("lrt", "weights"))
    info_weight: float = opt(0.0, "beta of the loss cross-entropy + beta * KL / N (KL under the log-uniform prior, nats)")
    alpha_ref: float = opt(1.0, "reference alpha of the log-uniform KL, which is only defined up to a constant")
    fisher_every: int = opt(0, "log the trace of the Fisher information per layer every N epochs (0: never)")
    fisher_samples: int = opt(256, "training examples of the Monte Carlo Fisher trace (labels sampled from the model)")
    # bookkeeping
    seed: int = opt(0, "one seed for corruption, init, batch order and augmentation")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    example_record: str = opt("evaluation", "source of per-example correctness: a clean evaluation pass, the training forward passes (presentation), or none", ("evaluation", "presentation", "none"))
    example_margins: bool = opt(False, "also store each example's margin (true logit minus largest other) per epoch, float16")
    hist_every: int = opt(10, "TensorBoard weight histograms every N epochs (and at the first and last); 0 disables")
    save_epochs: list[int] = opt([], "also keep checkpoints of these epochs, comma-separated", flag_type="ints")
    checkpoint_every: float = opt(30.0, "seconds between checkpoints (with examples.npz and status.json); the last epoch is always saved; 0: every epoch")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self):
        for name in ("widths", "save_epochs"):  # config files may write "512,512"
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [int(v) for v in value.split(",") if v.strip()])
            elif isinstance(value, int):
                setattr(self, name, [value])

    # -- derived views -------------------------------------------------
    @property
    def corruption(self) -> tuple[str, float]:
        return parse_corruption(self.corrupt)

    def validate(self) -> "FitConfig":
        parse_corruption(self.corrupt)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "lr_step": self.lr_step}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(flag(name), f"must be >= 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("--lr", f"must be a positive number, got {self.lr}")
        if self.subset is not None and self.subset < 1:
            raise ConfigError("--subset", f"must be >= 1, got {self.subset}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError("--test-fraction", f"must be in (0, 1), got {self.test_fraction}")
        if self.until_train_acc is not None and not 0 < self.until_train_acc <= 1:
            raise ConfigError("--until-train-acc", f"must be in (0, 1], got {self.until_train_acc}")
        if not self.widths or min(self.widths) < 1:
            raise ConfigError("--widths", f"needs positive widths such as 512 or 512,512, got {self.widths}")
        if not self.noise_alpha > 0:
            raise ConfigError("--noise-alpha", f"must be positive, got {self.noise_alpha}")
        if not self.alpha_ref > 0:
            raise ConfigError("--alpha-ref", f"must be positive, got {self.alpha_ref}")
        if self.info_weight < 0:
            raise ConfigError("--info-weight", f"must be >= 0, got {self.info_weight}")
        if self.info_weight > 0 and self.weight_noise == "none":
            raise ConfigError("--info-weight", "penalizes the information in noisy weights; add --weight-noise lognormal")
        if self.fisher_every < 0 or self.fisher_samples < 1:
            raise ConfigError("--fisher-every", "needs --fisher-every >= 0 and --fisher-samples >= 1")
        if self.checkpoint_every < 0:
            raise ConfigError("--checkpoint-every", f"must be >= 0 seconds, got {self.checkpoint_every}")
        if self.hist_every < 0:
            raise ConfigError("--hist-every", f"must be >= 0, got {self.hist_every}")
        return self

    # -- files ---------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        return config_from_dict(cls, d)


def parse_seeds(spec: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,7' -> [0, 3, 7]; ranges and lists mix: '0-2,10'."""
    seeds = []
    try:
        for part in str(spec).split(","):
            lo, _, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError("--seeds", f"expected seeds such as 0-9 or 0,3,7, got {spec!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError("--seeds", f"expected distinct non-negative seeds such as 0-9, got {spec!r}")
    return seeds


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_corruption(spec: str, name: str = "--corrupt") -> tuple[str, float]:
    """'labels=0.5' -> ('labels', 0.5); a pixel kind without =P means all examples."""
    kind, _, p = spec.partition("=")
    kind = kind.strip()
    if kind not in CORRUPTIONS:
        raise ConfigError(name, f"unknown kind {kind!r}; use one of {', '.join(CORRUPTIONS)}, e.g. labels=0.5")
    if kind == "none":
        return "none", 0.0
    if not p:
        if kind == "labels":
            raise ConfigError(name, "labels needs a probability, e.g. labels=0.5")
        return kind, 1.0
    try:
        value = float(p)
    except ValueError:
        raise ConfigError(name, f"{p!r} is not a number; write e.g. {kind}=0.5") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(name, f"p must be in [0, 1], got {value}")
    return kind, value


def load_config_file(path: str | Path) -> dict:
    """Read a TOML or JSON config file into a dict of fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"no such file {str(path)!r}")
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path} is not valid TOML ({e})") from None
