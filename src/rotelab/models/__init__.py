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
def _wrn(cfg, shape, k):
    if (cfg.depth - 4) % 6 or cfg.depth < 10:
        raise ConfigError("--depth", f"a Wide ResNet has depth 6n+4 (10, 16, 22, 28, ...), got {cfg.depth}")
    if cfg.widen < 1:
        raise ConfigError("--widen", f"must be >= 1, got {cfg.widen}")
    return WideResNet(_image_shape("wrn", shape)[0], k, cfg.depth, cfg.widen, cfg.wrn_batch_norm)




def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Build cfg.model for the data; initialization is deterministic from cfg.seed."""
    builder = MODELS.get(cfg.model)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(derive_seed(cfg.seed, "init"))  # initial weights: CPU draws
        model = builder(cfg, tuple(input_shape), num_classes)
    if getattr(cfg, "weight_noise", "none") == "lognormal":
        add_weight_noise(model, cfg.noise_alpha, cfg.noise_granularity, cfg.learn_alpha, cfg.noise_sampling)
    if getattr(cfg, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)   # 4-d weights only; inputs may stay as they are
    return model
