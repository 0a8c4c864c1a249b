"""The small AlexNet and small Inception of Zhang et al. (ICLR 2017), appendix A, for any image size."""

from __future__ import annotations

import torch
from torch import nn


class LocalResponseNorm(nn.Module):
    """torch's LocalResponseNorm, x / (k + alpha/size * sum of x^2 over `size` neighbouring channels)^beta,
    with the channel window summed from shifted slices instead of an average pool: the same values (to
    float rounding, tested against nn.LocalResponseNorm) and a backward of slices and adds, which is
    deterministic on CUDA, where the pool's backward is not (and raises under deterministic mode)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        sq = torch.nn.functional.pad((x * x).unsqueeze(1), (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2)).squeeze(1)
        window = sq[:, 0:c]
        for j in range(1, self.size):
            window = window + sq[:, j:j + c]
        return x / (window * (self.alpha / self.size) + self.k).pow(self.beta)


class AlexNetSmall(nn.Module):
    """Two (conv 5x5, 64 channels -> max-pool 3x3 stride 2 -> local response norm) modules,
    then fully connected layers of 384 and 192 units and a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()

        def module(c_in):
            # LRN as in the TensorFlow CIFAR-10 model: radius 4, bias 1, alpha 0.001/9 per element.
            return nn.Sequential(nn.Conv2d(c_in, 64, 5, padding=2), nn.ReLU(),
                                 nn.MaxPool2d(3, stride=2, padding=1),
                                 LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0))

        self.features = nn.Sequential(module(in_channels), module(64))
        self.classifier = nn.Sequential(nn.Flatten(), nn.LazyLinear(384), nn.ReLU(),
                                        nn.Linear(384, 192), nn.ReLU(), nn.Linear(192, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def conv_bn(c_in, c_out, k, stride=1):
    """Conv module of Zhang et al.'s Fig. 3: convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class Inception(nn.Module):
    """Two branches, a 1x1 and a 3x3 conv module, concatenated."""

    def __init__(self, c_in, c1, c3):
        super().__init__()
        self.b1, self.b3 = conv_bn(c_in, c1, 1), conv_bn(c_in, c3, 3)
        self.out_channels = c1 + c3

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x)], dim=1)


class Downsample(nn.Module):
    """A 3x3 stride-2 conv module beside a 3x3 stride-2 max-pool, concatenated."""

    def __init__(self, c_in, c3):
        super().__init__()
        self.conv = conv_bn(c_in, c3, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c_in + c3

    def forward(self, x):
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class InceptionSmall(nn.Module):
    """Conv(96) -> Inc(32,32) -> Inc(32,48) -> Down(80) -> Inc(112,48) -> Inc(96,64) -> Inc(80,80)
    -> Inc(48,96) -> Down(96) -> Inc(176,160) -> Inc(176,160) -> global mean pool -> linear."""

    PLAN = [("i", 32, 32), ("i", 32, 48), ("d", 80), ("i", 112, 48), ("i", 96, 64), ("i", 80, 80),
            ("i", 48, 96), ("d", 96), ("i", 176, 160), ("i", 176, 160)]

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        blocks, c = [conv_bn(in_channels, 96, 3)], 96
        for kind, *ch in self.PLAN:
            block = Inception(c, *ch) if kind == "i" else Downsample(c, *ch)
            blocks.append(block)
            c = block.out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))
