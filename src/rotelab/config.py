"""Run configuration: one dataclass per protocol, every field a CLI flag (see cli.py)."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import InitVar, dataclass, field
from pathlib import Path


from .errors import ConfigError  # noqa: F401  (re-exported: `from rotelab.config import ConfigError`)
from .spec import CORRUPTIONS, flag, parse_corruption, parse_fold, parse_remove, parse_seeds  # noqa: F401  (re-exported)
from .spec import MODEL_SPELLINGS, full_model_args


def opt(default, help: str, choices=None, flag_type=None, aliases=(), **bounds):
    """A config field: its default, CLI help text, optional choices and extra flag names, and its
    bounds (gt, ge, lt, le: pydantic's constraints), declared once and enforced by check_fields
    wherever a config enters (flags, config files, sweep points, saved configs). Floats must be
    finite unless `allow_inf_nan=True` is given."""
    meta = {"help": help, "aliases": tuple(aliases), "bounds": bounds}
    if choices is not None:
        meta["choices"] = choices
    if flag_type is not None:
        meta["type"] = flag_type
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@functools.lru_cache(maxsize=None)
def _field_adapters(cls) -> dict:
    """One pydantic TypeAdapter per field of a config class: the field's type with its bounds."""
    import typing
    from typing import Annotated, Optional

    from pydantic import Field, TypeAdapter
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint, bounds = hints[f.name], dict(f.metadata.get("bounds", {}))
        args = typing.get_args(hint)
        optional = type(None) in args
        inner = next(a for a in args if a is not type(None)) if optional else hint
        if inner is float:
            bounds.setdefault("allow_inf_nan", False)
        if f.metadata.get("choices"):
            inner = typing.Literal[tuple(f.metadata["choices"])]
        # strict for bool (no "yes" -> True) and int (no 1.5 -> 1, no "ten"); a float field takes integers
        strict = inner in (bool, int)
        typed = Annotated[inner, Field(strict=strict, **bounds)] if bounds or strict else inner
        out[f.name] = TypeAdapter(Optional[typed] if optional else typed)
    return out


def check_fields(cfg):
    """Check every field of a config against its declared type and bounds (one ConfigError naming the
    flag); floats given as integers are converted, and "none" is None for a field that may be None
    (TOML has no null: `until_train_acc = "none"`). Returns cfg."""
    import typing
    from pydantic import ValidationError
    hints = typing.get_type_hints(type(cfg))
    for name, adapter in _field_adapters(type(cfg)).items():
        value = getattr(cfg, name)
        if isinstance(value, str) and value.lower() == "none" and type(None) in typing.get_args(hints[name]) \
                and str not in typing.get_args(hints[name]):
            value = None
        try:
            setattr(cfg, name, adapter.validate_python(value))
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(flag(name), f"{_plain(err)}, got {value!r}") from None
    return cfg


def _plain(err: dict) -> str:
    """pydantic's message in the words of a command line."""
    msg = err["msg"]
    if err["type"] == "finite_number":
        return "must be a finite number"
    if err["type"] == "literal_error":
        return msg.replace("Input should be", "must be one of").replace("'", "")
    return msg.replace("Input should be", "must be").replace("Input should be a valid", "must be")


def config_from_dict(cls, d: dict):
    """A config dataclass from a dict, naming the first unknown field."""
    if not isinstance(d, dict):
        raise ConfigError("--config", f"expected a table of config fields, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} | config_spellings(cls)
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(flag(unknown[0]), f"unknown config field; known fields: {', '.join(sorted(names))}")
    return cls(**d)


# The older spellings' flags: type ("ints", "bool", int, or choices) and help
SPELLING_FLAGS = {
    "widths": ("ints", "mlp's hidden widths, comma-separated, e.g. 512,512,512 (= --model-args widths=[512,512,512])"),
    "activation": (("relu", "tanh"), "mlp, tishby: relu or tanh (= --model-args activation=NAME; default: relu for mlp, tanh for tishby)"),
    "batch_norm": ("bool", "mlp, tishby: batch norm after each hidden linear layer, before the activation (= --model-args batch_norm=true)"),
    "depth": (int, "wrn's depth, 6n+4 (= --model-args depth=N; default 16)"),
    "widen": (int, "wrn's widen factor (= --model-args widen=K; default 4)"),
    "wrn_batch_norm": ("bool", "wrn: batch norm in every block (off: identity, with conv biases; a control) (= --model-args batch_norm=false)"),
}


def config_spellings(cls) -> set[str]:
    """Keys a config class takes besides its fields: its InitVars (older spellings folded into a field)."""
    return {name for name, f in getattr(cls, "__dataclass_fields__", {}).items()
            if f._field_type is dataclasses._FIELD_INITVAR}   # type: ignore[attr-defined]


class Config:
    """What every protocol's config dataclass gets: its fields checked against their declarations
    (validate; a subclass adds what involves several fields), and plain dicts in and out (the run
    directory's config.json, sweep points, study steps)."""

    def validate(self):
        return check_fields(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # every Config is a dataclass

    @classmethod
    def from_dict(cls, d: dict):
        return config_from_dict(cls, d)


SCHEDULES = ("constant", "step", "exp", "cosine")


@dataclass
class FitConfig(Config):
    # data
    dataset: str = opt("digits", "dataset: a name (see `rotelab datasets`), npz:PATH, imagefolder:PATH or hf:NAME_OR_PATH")
    labels_file: str | None = opt(None, "train on these labels: a file of one label per training example (.npy, .csv, or a .pt/.npz dict such as CIFAR-10N's CIFAR-10_human.pt); the dataset's own labels are the truth and the corruption mask is where they differ")
    labels_key: str | None = opt(None, "which labels of a --labels-file dict (e.g. aggre_label, worse_label, random_label1) or csv column")
    hf_image_key: str | None = opt(None, "hf: datasets: the input column (default: image, img, pixel_values or x)")
    hf_label_key: str | None = opt(None, "hf: datasets: the label column (default: label, labels, fine_label or y)")
    data_root: str = opt("data", "folder with torchvision-format data (cifar10, cifar100, mnist, fashion-mnist)")
    data_file: str | None = opt(None, "tishby: path to var_u.mat; without it a generated 12-bit task is used")
    download: bool = opt(False, "download torchvision data sets into --data-root when missing")
    subset: int | None = opt(None, "train on a fixed, class-balanced subset of this many training examples", ge=1)
    test_fraction: float = opt(0.2, "held-out fraction for data sets without a standard split (digits, tishby)", gt=0, lt=1)
    corrupt: str = opt("none", "KIND=P with KIND in labels, shuffled-pixels, random-pixels, gaussian; P in [0,1] is the fraction of examples corrupted")
    corrupt_test: bool = opt(False, "corrupt the test set the same way (own random stream; shuffled-pixels keeps the train permutation, and shuffled-pixels=1.0 always permutes the test set, as Zhang et al.)")
    label_noise_mode: str = opt("uniform", "uniform: redraw from all classes (may keep the true one, as Zhang et al.); other: always a different class; permute: shuffle the picked labels among themselves (class histogram kept); pair: class-conditional, class c becomes c + 1 mod K (pair flipping)", ("uniform", "other", "permute", "pair"))
    normalize: str = opt("standard", "standard: per-channel standardization with training statistics; none: inputs as the source gives them (images in [0, 1])", ("standard", "none"))
    center_crop: int | None = opt(None, "crop images (train and test) to their central N x N pixels, e.g. 28 for CIFAR-10 as Zhang et al.", ge=1)
    test_subset: int | None = opt(None, "evaluate on a fixed, class-balanced subset of this many test examples", ge=1)
    # model
    model: str = opt("mlp", "model: a name (see `rotelab models`), torchvision:NAME, timm:NAME or MODULE:FUNCTION")
    model_args: dict = opt({}, "keyword arguments of the model's builder, NAME=VALUE comma-separated, values as literals, e.g. widths=[512,512],dropout=0.1 (`rotelab models` lists a model's)", flag_type="kwargs")
    # older spellings of model arguments (flags and config-file keys; folded into model_args, never stored):
    # mlp's widths, activation, batch_norm; tishby's activation, batch_norm; wrn's depth, widen, batch_norm
    widths: InitVar[list[int] | str | int | None] = None
    activation: InitVar[str | None] = None
    batch_norm: InitVar[bool | None] = None
    depth: InitVar[int | None] = None
    widen: InitVar[int | None] = None
    wrn_batch_norm: InitVar[bool | None] = None
    # optimisation
    epochs: int = opt(100, "maximum number of epochs", ge=1)
    until_train_acc: float | None = opt(None, "stop once train accuracy (clean pass) reaches this value, e.g. 1.0", gt=0, le=1)
    batch_size: int = opt(128, "training batch size (at least the training set's size: full batch, one step per epoch)", ge=1)
    loss_reduction: str = opt("mean", "cross-entropy averaged over a batch, or summed (as the Memorizing IB study; the gradient scales with the batch)", ("mean", "sum"))
    eval_batch_size: int = opt(2048, "batch size of evaluation passes", ge=1)
    eval_every: int = opt(1, "evaluate every split every N epochs and at the last (0: at the last only); the epochs between log their training pass alone, and --until-train-acc is checked at evaluated epochs", ge=0)
    optimizer: str = opt("sgd", "optimizer", ("sgd", "adam"))
    lr: float = opt(0.01, "learning rate", gt=0)
    momentum: float = opt(0.9, "SGD momentum, in [0, 1)", ge=0, lt=1)
    weight_decay: float = opt(0.0, "weight decay", ge=0)
    schedule: str = opt("constant", "lr schedule, stepped once per epoch", SCHEDULES)
    lr_gamma: float = opt(0.95, "lr factor: per epoch for exp (Zhang et al. use 0.95), per --lr-step epochs for step", gt=0)
    lr_step: int = opt(30, "epochs between lr drops for --schedule step", ge=1)
    train_fraction: float | None = opt(None, "train on a random class-balanced fraction of the training set, drawn from --seed; every example is still evaluated (the rest are held out: Feldman & Zhang's subsets)", gt=0, lt=1)
    remove: str | None = opt(None, "train on every training example but K, which are held out (still evaluated): random:K (drawn from --seed) or mem:K:PATH (the K of highest memorization estimate in PATH, a memorize folder or its memorization.npz: Feldman & Zhang's marginal-utility experiment)")
    heldout_fold: str | None = opt(None, "K-fold cross-validation: F/K trains on every example outside fold F of K (class-balanced folds drawn from the data seed), e.g. 0/5; the fold is held out")
    data_seed: int | None = opt(None, "seed of the data's draws (corruption, val split, pixel permutation; default: --seed), so runs of different seeds can share one corrupted data set")
    channels_last: bool = opt(False, "convolution weights in channels-last memory order (the WRN trains about 1.5x faster on CPU; results differ from the default order in rounding)")
    augment: bool = opt(False, "random crop (pad 4) and horizontal flip, on batched tensors")
    # weight noise and the information in the weights
    weight_noise: str = opt("none", "lognormal: multiplicative log-normal noise on every Linear and Conv weight", ("none", "lognormal"))
    noise_alpha: float = opt(1e-3, "initial alpha = Var[log eps] of the weight noise", gt=0)
    noise_granularity: str = opt("layer", "one alpha per weight, per output unit or per layer", ("weight", "unit", "layer"))
    learn_alpha: bool = opt(False, "learn log alpha with the weights")
    alpha_lr: float | None = opt(None, "learning rate of the learned log alphas (default: --lr); Adam moves log alpha about this much a step, so at 1e-3 it takes thousands of steps to reach where the information term balances the fit", gt=0)
    noise_sampling: str = opt("lrt", "lrt: Gaussian pre-activations with the exact moments (Linear); weights: exact draws shared by a batch", ("lrt", "weights"))
    info_weight: float = opt(0.0, "beta of the loss cross-entropy + beta * KL / N (KL in nats to --info-prior)", ge=0)
    info_prior: str = opt("loguniform", "the prior of the KL that --info-weight charges: loguniform (improper, defined up to a constant, learned alpha capped at 1) or init (the log-normal law of each layer's initial weights: proper, KL >= 0, 0 for a weight as uncertain as a fresh draw; learned alpha uncapped)", ("loguniform", "init"))
    alpha_ref: float = opt(1.0, "reference alpha of the log-uniform KL, which is only defined up to a constant", gt=0)
    norms: bool = opt(False, "log per epoch each weight matrix's norm, the effective learning rate lr/||w||^2 and the mean gradient norm")
    batch_scalars: bool = opt(False, "TensorBoard scalars per training batch, as the motivating study logged them: lr, weights' norm, log10 gradient norm, log10 loss (tb/batch; step = batches trained)")
    fisher_every: int = opt(0, "log the trace of the Fisher information per layer every N epochs (0: never)", ge=0)
    fisher_samples: int = opt(256, "training examples of the Monte Carlo Fisher trace (labels sampled from the model)", ge=1)
    # bookkeeping
    seed: int = opt(0, "one seed for corruption, init, batch order and augmentation", ge=0)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    precision: str = opt("fp32", "arithmetic of training and evaluation: fp32; tf32 (TF32 matmuls and convolutions on NVIDIA GPUs); bf16 (autocast; losses, per-example records and estimators read float32)", ("fp32", "tf32", "bf16"))
    compile: bool = opt(False, "compile the model with torch.compile (in place: checkpoints keep their keys); not with stacks")
    deterministic: bool = opt(False, "torch's deterministic algorithms (a warning where one has none), cuBLAS's fixed workspace, no cuDNN autotuning: equal runs on one GPU")
    example_record: str = opt("evaluation", "source of per-example correctness: a clean evaluation pass, the training forward passes (presentation), or none", ("evaluation", "presentation", "none"))
    example_margins: bool = opt(False, "also store each example's margin (true logit minus largest other) and the probability of its label per epoch, float16 (AUM, data maps)")
    hist_every: int = opt(10, "TensorBoard weight histograms every N epochs (and at the first and last); 0 disables", ge=0)
    save_epochs: list[int] = opt([], "also keep checkpoints of these epochs, comma-separated", flag_type="ints")
    checkpoint_every: float = opt(30.0, "seconds between checkpoints (with examples.npz and status.json); the last epoch is always saved; 0: every epoch", ge=0)
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self, widths=None, activation=None, batch_norm=None, depth=None, widen=None,
                      wrn_batch_norm=None):
        if isinstance(self.save_epochs, str):  # config files may write "10,20"
            try:
                self.save_epochs = [int(v) for v in self.save_epochs.split(",") if v.strip()]
            except ValueError:
                pass   # left as it is: check_fields names the field
        elif isinstance(self.save_epochs, int):
            self.save_epochs = [self.save_epochs]
        if isinstance(widths, str):   # "512,512"
            try:
                widths = [int(v) for v in widths.split(",") if v.strip()]
            except ValueError:
                raise ConfigError("--widths", f"needs positive widths such as 512 or 512,512, got {widths!r}") from None
        elif isinstance(widths, int):
            widths = [widths]
        spelled = dict(widths=widths, activation=activation, batch_norm=batch_norm, depth=depth, widen=widen,
                       wrn_batch_norm=wrn_batch_norm)
        given = {k for k, v in spelled.items() if v is not None}
        # which model arguments came from an older flag, so that an error names the flag that was typed
        self._spelled = {MODEL_SPELLINGS[k][1]: k for k in given if k not in (self.model_args or {})}
        if isinstance(self.model_args, dict) and isinstance(self.model, str):
            self.model_args = full_model_args(self.model, self.model_args, spelled)

    # -- derived views -------------------------------------------------
    @property
    def corruption(self) -> tuple[str, float]:
        return parse_corruption(self.corrupt)

    def validate(self) -> "FitConfig":
        """Every field against its declaration, then what involves several fields or names."""
        super().validate()
        parse_corruption(self.corrupt)
        widths = self.model_args.get("widths") if self.model in ("mlp",) else None
        if widths is not None and (not isinstance(widths, list) or not widths
                                   or not all(isinstance(w, int) and w >= 1 for w in widths)):
            raise ConfigError(self.model_flag("widths"), f"needs positive widths such as 512 or 512,512, got {widths}")
        if any(e < 1 for e in self.save_epochs):
            raise ConfigError("--save-epochs", f"needs epochs >= 1, got {self.save_epochs}")
        self.check_names()
        if self.info_weight > 0 and self.weight_noise == "none":
            raise ConfigError("--info-weight", "penalizes the information in noisy weights; add --weight-noise lognormal")
        if self.info_prior != "loguniform" and self.weight_noise == "none":
            raise ConfigError("--info-prior", "is the prior of the information in noisy weights; add --weight-noise lognormal")
        if self.alpha_lr is not None and not (self.learn_alpha and self.weight_noise != "none"):
            raise ConfigError("--alpha-lr", "is the learning rate of learned noise; add --weight-noise lognormal "
                                            "--learn-alpha, or drop --alpha-lr")
        if self.labels_file is not None and parse_corruption(self.corrupt)[0] != "none":
            raise ConfigError("--corrupt", "a --labels-file brings its own label noise; drop --corrupt, or drop the labels file")
        if self.labels_key is not None and self.labels_file is None:
            raise ConfigError("--labels-key", "picks the labels of a --labels-file; add one")
        for name in ("hf_image_key", "hf_label_key"):
            if getattr(self, name) is not None and not self.dataset.startswith("hf:"):
                raise ConfigError(flag(name), "names a column of a Hugging Face dataset; use it with --dataset hf:NAME")
        if isinstance(self.remove, str) and self.remove.strip().lower() == "none":   # TOML has no null
            self.remove = None
        if self.remove is not None:
            parse_remove(self.remove)
            if self.train_fraction is not None or self.heldout_fold is not None:
                raise ConfigError("--remove", "leaves examples out; --train-fraction and --heldout-fold do too: give one")
        if self.heldout_fold is not None:
            parse_fold(self.heldout_fold)
            if self.train_fraction is not None:
                raise ConfigError("--heldout-fold", "holds out a fold; --train-fraction a random subset: give one")
        if (self.train_fraction is not None or self.heldout_fold is not None or self.remove is not None) \
                and self.example_record == "presentation":
            raise ConfigError("--example-record", "with --train-fraction the held-out examples are never presented; "
                                                  "use --example-record evaluation")
        return self

    def model_flag(self, arg: str) -> str:
        """The option that gave a model argument: its older flag (--widths) or --model-args."""
        field_ = getattr(self, "_spelled", {}).get(arg)
        return flag(field_) if field_ else "--model-args"

    def check_names(self):
        """Model and dataset names against their registries (these import torch, so only here)."""
        from .data.sources import SOURCES
        from .models import MODELS
        from .models import check_model_args
        SOURCES.get(self.dataset)
        MODELS.get(self.model)
        check_model_args(self.model, self.model_args, self.model_flag)


def load_config_file(path: str | Path) -> dict:
    """Read a TOML or JSON config file into a dict of fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"no such file {str(path)!r}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--config", f"cannot read {path} ({e})") from None
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("--config", f"{path} is not valid JSON ({e})") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("--config", f"{path} is not valid TOML ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError("--config", f"{path} must hold a table of config fields, not a {type(values).__name__}")
    return values
