"""Model registry: name -> builder(cfg, input_shape, num_classes) -> nn.Module.

Builders say which inputs they fit; `build_model` turns a mismatch into one clear error.
"""

from __future__ import annotations

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
MODELS = Registry("model", "--model")   # name -> builder(cfg, input_shape, num_classes) -> nn.Module


def _image_shape(name, shape):
    if len(shape) != 3 or min(shape[1:]) < 4:
        raise ConfigError("--model", f"{name} needs images (C, H, W) of at least 4x4, but the data has shape {shape}; "
                                     "use --model mlp for this dataset")
    return shape


@MODELS.register("mlp")
def _mlp(cfg, shape, k):
    return MLP(shape, cfg.widths, k, ACTIVATIONS[cfg.activation or "relu"], cfg.batch_norm)


@MODELS.register("tishby")
def _tishby(cfg, shape, k):
    """The 12-10-7-5-4-3-2 net of Shwartz-Ziv & Tishby (hidden widths 10-7-5-4-3), tanh by default."""
    return MLP(shape, list(TISHBY_WIDTHS), k, ACTIVATIONS[cfg.activation or "tanh"], cfg.batch_norm)


@MODELS.register("alexnet-small")
def _alexnet(cfg, shape, k):
    model = AlexNetSmall(_image_shape("alexnet-small", shape)[0], k)
    with torch.no_grad():
        model(torch.zeros(1, *shape))  # materialize the lazy first linear layer for this image size
    return model


@MODELS.register("inception-small")
def _inception(cfg, shape, k):
    return InceptionSmall(_image_shape("inception-small", shape)[0], k)


@MODELS.register("wrn")
def _wrn(cfg, shape, k, *, zero_init_residual=False):
    """Wide ResNet of --depth and --widen; zero_init_residual starts each residual branch at zero (what
    lets the net without batch norm, --no-wrn-batch-norm, train)."""
    if (cfg.depth - 4) % 6 or cfg.depth < 10:
        raise ConfigError("--depth", f"a Wide ResNet has depth 6n+4 (10, 16, 22, 28, ...), got {cfg.depth}")
    if cfg.widen < 1:
        raise ConfigError("--widen", f"must be >= 1, got {cfg.widen}")
    return WideResNet(_image_shape("wrn", shape)[0], k, cfg.depth, cfg.widen, cfg.wrn_batch_norm, zero_init_residual)




def model_arguments(name: str) -> dict:
    """The keyword arguments a model's builder declares (its keyword-only parameters, with their
    defaults): what --model-args may set. A model with a hyperparameter is one decorated builder."""
    import inspect
    params = inspect.signature(MODELS.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


def check_model_args(name: str, given: dict):
    """One ConfigError naming the model's arguments where `given` holds one it does not declare, or a
    value of another kind than its default's."""
    known = model_arguments(name)
    for key, value in given.items():
        if key not in known:
            takes = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "no arguments"
            raise ConfigError("--model-args", f"{name} takes {takes}; got {key!r}")
        default = known[key]
        number = (int, float)
        if default is not None and (isinstance(default, bool) != isinstance(value, bool) or
                                    isinstance(default, number) != isinstance(value, number) or
                                    (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float))):
            raise ConfigError("--model-args", f"{name}'s {key} takes values like its default {default!r}; got {value!r}")


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Build cfg.model for the data; initialization is deterministic from cfg.seed."""
    builder = MODELS.get(cfg.model)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(derive_seed(cfg.seed, "init"))  # initial weights: CPU draws
        model = builder(cfg, tuple(input_shape), num_classes, **getattr(cfg, "model_args", {}))
    if getattr(cfg, "weight_noise", "none") == "lognormal":
        add_weight_noise(model, cfg.noise_alpha, cfg.noise_granularity, cfg.learn_alpha, cfg.noise_sampling)
    if getattr(cfg, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)   # 4-d weights only; inputs may stay as they are
    return model
