"""Model registry: a name, a scheme (`torchvision:NAME`, `timm:NAME`), an entry point of the
`rotelab.models` group, or an import path `MODULE:FUNCTION`, each giving a builder

    builder(*, input_shape, num_classes, **its own keyword arguments) -> nn.Module

A model owns its hyperparameters: they are the builder's keyword arguments (`rotelab models` lists
them; `--model-args` sets them). A builder receives `input_shape` and `num_classes` only where it
declares them. `build_model` turns whatever a builder refuses, and a first layer that does not fit the
data, into one clear error.
"""

from __future__ import annotations

import inspect
import math

import torch

from ..errors import ConfigError
from ..registry import Registry
from ..seeding import derive_seed
from ..spec import TISHBY_WIDTHS
from .convnets import AlexNetSmall, InceptionSmall
from .mlp import MLP
from .noisy import add_weight_noise
from .wrn import WideResNet

ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}
MODELS = Registry("model", "--model", plugins="rotelab.models", import_paths=True)
DATA_ARGUMENTS = ("input_shape", "num_classes")   # what the data gives a builder, never --model-args


def _image_shape(name, shape):
    if len(shape) != 3 or min(shape[1:]) < 4:
        raise ConfigError("--model", f"{name} needs images (C, H, W) of at least 4x4, but the data has shape {shape}; "
                                     "use --model mlp for this dataset")
    return shape


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


@MODELS.register("mlp")
def mlp(*, input_shape, num_classes, widths=(512,), activation="relu", batch_norm=False, dropout=0.0):
    """Flatten, then Linear(+BatchNorm)+activation(+Dropout) per hidden width, then a linear classifier."""
    if not isinstance(widths, (list, tuple)) or not widths or min(widths) < 1:
        raise ValueError(f"widths must be positive, such as [512] or [512,512], got {widths}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout is a probability in [0, 1), got {dropout}")
    return MLP(input_shape, list(widths), num_classes, _activation(activation), batch_norm, dropout)


@MODELS.register("tishby")
def tishby(*, input_shape, num_classes, activation="tanh", batch_norm=False):
    """The 12-10-7-5-4-3-2 net of Shwartz-Ziv & Tishby (hidden widths 10-7-5-4-3), tanh by default."""
    return MLP(input_shape, list(TISHBY_WIDTHS), num_classes, _activation(activation), batch_norm)


@MODELS.register("alexnet-small")
def alexnet_small(*, input_shape, num_classes):
    """Zhang et al.'s small AlexNet (appendix A), for any image size."""
    model = AlexNetSmall(_image_shape("alexnet-small", input_shape)[0], num_classes)
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))  # materialize the lazy first linear layer for this image size
    return model


@MODELS.register("inception-small")
def inception_small(*, input_shape, num_classes):
    """Zhang et al.'s small Inception (Fig. 3)."""
    return InceptionSmall(_image_shape("inception-small", input_shape)[0], num_classes)


@MODELS.register("wrn")
def wrn(*, input_shape, num_classes, depth=16, widen=4, batch_norm=True, zero_init_residual=False):
    """Wide ResNet of depth 6n+4 and widen factor k; batch_norm=False is the control without batch norm
    (conv biases instead), and zero_init_residual starts each residual branch at zero (what lets it train)."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"a Wide ResNet has depth 6n+4 (10, 16, 22, 28, ...), got depth={depth}")
    if widen < 1:
        raise ValueError(f"widen must be >= 1, got widen={widen}")
    return WideResNet(_image_shape("wrn", input_shape)[0], num_classes, depth, widen, batch_norm, zero_init_residual)


# -- other people's models -----------------------------------------------------------------------

@MODELS.scheme("torchvision", "torchvision.models.get_model(NAME, weights=None, num_classes=...)")
def _torchvision(name: str):
    import torchvision
    if name not in torchvision.models.list_models():
        raise ConfigError("--model", f"torchvision has no model {name!r}; see torchvision.models.list_models()")

    def build(*, input_shape, num_classes, **kwargs):
        kwargs.setdefault("weights", None)
        return torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
    build.__doc__ = f"torchvision's {name} (random weights unless --model-args weights=...)"
    return build


@MODELS.scheme("timm", "timm.create_model(NAME, num_classes=..., in_chans=the data's channels)")
def _timm(name: str):
    try:
        import timm
    except ImportError:
        raise ConfigError("--model", "timm:NAME needs timm: pip install 'rotelab[timm]'") from None
    if not timm.is_model(name):
        raise ConfigError("--model", f"timm has no model {name!r}; see timm.list_models()")

    def build(*, input_shape, num_classes, **kwargs):
        if len(input_shape) == 3:
            kwargs.setdefault("in_chans", input_shape[0])
        kwargs.setdefault("pretrained", False)
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    build.__doc__ = f"timm's {name} (in_chans from the data; random weights unless --model-args pretrained=true)"
    return build


def model_arguments(name: str) -> dict:
    """The keyword arguments a model's builder declares, with their defaults (what --model-args may
    set): its parameters with defaults but the data's (input_shape, num_classes)."""
    params = inspect.signature(MODELS.get(name)).parameters.values()
    return {p.name: p.default for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty
            and p.name not in DATA_ARGUMENTS}


def takes_any_keyword(name: str) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(MODELS.get(name)).parameters.values())


def check_model_args(name: str, given: dict, option=lambda arg: "--model-args"):
    """One ConfigError naming the model's arguments where `given` holds one it does not declare, or a
    value of another kind than its default's. A builder that takes **kwargs (torchvision, timm)
    checks its own when it is built."""
    known = model_arguments(name)
    for key, value in given.items():
        if key in DATA_ARGUMENTS:
            raise ConfigError("--model-args", f"{key} comes from the data; drop it from --model-args")
        if key not in known:
            if takes_any_keyword(name):
                continue
            takes = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "no arguments"
            raise ConfigError(option(key), f"{name} takes {takes}; got {key!r}")
        default = known[key]
        number = (int, float)
        sequence = (list, tuple)
        if default is not None and (isinstance(default, bool) != isinstance(value, bool) or
                                    isinstance(default, number) != isinstance(value, number) or
                                    isinstance(default, sequence) != isinstance(value, sequence) or
                                    isinstance(default, str) != isinstance(value, str) or
                                    (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float))):
            raise ConfigError(option(key), f"{name}'s {key} takes values like its default {default!r}; got {value!r}")


def model_kwargs(cfg) -> dict:
    """The model's keyword arguments: the config's model_args, which its config filled in from the older
    flags (--widths for mlp, --depth for wrn, ...) and, for a built-in model, its defaults."""
    return dict(getattr(cfg, "model_args", {}))


def call_builder(builder, input_shape: tuple, num_classes: int, kwargs: dict) -> torch.nn.Module:
    """builder(**kwargs), with input_shape and num_classes where it declares them."""
    params = inspect.signature(builder).parameters
    data = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    return builder(**{k: v for k, v in data.items() if k in params}, **kwargs)


def _refused(cfg, kwargs: dict, e: Exception) -> ConfigError:
    """What a builder's exception says, as one line naming the argument it most likely refuses, by
    the flag that gave it (--model-args, or an older spelling such as --depth)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    named = [k for k in kwargs if k in msg] or list(kwargs)
    if not named:
        return ConfigError("--model", f"{cfg.model} cannot be built: {type(e).__name__}: {msg}")
    given = ", ".join(f"{k}={kwargs[k]!r}" for k in named)
    option = cfg.model_flag(named[0]) if len(named) == 1 and hasattr(cfg, "model_flag") else "--model-args"
    return ConfigError(option, f"{cfg.model} refuses {given}: {msg}")


_fits_data: set = set()   # (model, args, shape, classes) already tried on a batch in this process


def check_fits(model: torch.nn.Module, name: str, input_shape: tuple, num_classes: int, key) -> None:
    """One forward pass of two zero inputs (eval mode: no statistics move, no random draws): a first
    layer that does not fit the data, or an output that is not one logit per class, is one error."""
    if key in _fits_data:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("its builder's input argument (e.g. in_chans) with --model-args, or data of the shape it takes"
                if not name.startswith("torchvision:") else
                "data of the shape it takes (torchvision's classifiers take 3-channel images), or timm:NAME, "
                "whose in_chans rotelab sets from the data")
        raise ConfigError("--model", f"{name} does not take inputs of shape {tuple(input_shape)} "
                                     f"({type(e).__name__}: {msg}); set {hint}") from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(out) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError("--model", f"{name} gives outputs of shape {shape} for 2 inputs, not (2, {num_classes}) "
                                     "logits; its builder must take num_classes (or set it with --model-args)")
    _fits_data.add(key)


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Build cfg.model for the data with its keyword arguments (model_kwargs); initialization is
    deterministic from cfg.seed. Raises ConfigError for anything the builder refuses."""
    builder = MODELS.get(cfg.model)
    kwargs = model_kwargs(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(derive_seed(cfg.seed, "init"))  # initial weights: CPU draws
        try:
            model = call_builder(builder, input_shape, num_classes, dict(kwargs))
        except ConfigError:
            raise
        except (TypeError, ValueError, AssertionError, RuntimeError, KeyError, NotImplementedError) as e:
            raise _refused(cfg, kwargs, e) from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("--model", f"{cfg.model} returned a {type(model).__name__}, not a torch.nn.Module")
    check_fits(model, cfg.model, tuple(input_shape), num_classes,
               (cfg.model, repr(sorted(kwargs.items())), tuple(input_shape), num_classes))
    if getattr(cfg, "weight_noise", "none") == "lognormal":
        uncapped = getattr(cfg, "info_prior", "loguniform") == "init"
        add_weight_noise(model, cfg.noise_alpha, cfg.noise_granularity, cfg.learn_alpha, cfg.noise_sampling,
                         max_alpha=math.inf if uncapped else None)
    if getattr(cfg, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)   # 4-d weights only; inputs may stay as they are
    return model


def random_in_training(model: torch.nn.Module, input_shape: tuple, device=None) -> bool:
    """Whether the model draws random numbers in a training forward pass (dropout, drop-path,
    stochastic depth...), found by the model itself: two training passes of a copy on one input
    differ. Such a model cannot be stacked (a stack's runs must each equal their separate run)."""
    import copy
    trial = copy.deepcopy(model).train()
    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0)).to(device or "cpu")
    with torch.no_grad(), torch.random.fork_rng(devices=[] if device is None or torch.device(device).type == "cpu"
                                                 else [torch.device(device)]):
        a, b = trial(x), trial(x)
    return not torch.equal(a, b)
