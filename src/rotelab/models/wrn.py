"""Wide ResNet (Zagoruyko & Komodakis 2016): pre-activation basic blocks, depth 6n+4, widen factor k.

With batch_norm=False every BatchNorm becomes the identity and the convolutions get biases: the
control that tells what batch norm does to training under weight decay. Such a net does not train at
SGD 0.1 from the usual initialization; zero_init_residual=True starts each block's last convolution
at zero, so that every block starts as its shortcut (Fixup's and SkipInit's remedy: Zhang et al.
2019, De & Smith 2020) and the net trains without normalization."""

from __future__ import annotations

from torch import nn
import torch.nn.functional as F


def _norm(c: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if batch_norm else nn.Identity()


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, batch_norm: bool = True):
        super().__init__()
        bias = not batch_norm
        self.bn1, self.conv1 = _norm(c_in, batch_norm), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.bn2, self.conv2 = _norm(c_out, batch_norm), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=bias)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int = 16, widen: int = 4, batch_norm: bool = True,
                 zero_init_residual: bool = False):
        super().__init__()
        self.batch_norm = batch_norm
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not batch_norm)]
        c = widths[0]
        for group, w in enumerate(widths[1:]):
            for i in range(n):
                layers.append(Block(c, w, 2 if (group > 0 and i == 0) else 1, batch_norm))
                c = w
        self.features = nn.Sequential(*layers)
        self.bn = _norm(c, batch_norm)
        self.head = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Block):
                    nn.init.zeros_(m.conv2.weight)
                    if m.conv2.bias is not None:
                        nn.init.zeros_(m.conv2.bias)

    def scale_invariant(self) -> list[str]:
        """Names of the weights whose joint scale the output ignores: with batch norm, every
        convolution's (each block's input is normalized before use, and so is the last feature map);
        the classifier is not among them. None without batch norm."""
        if not self.batch_norm:
            return []
        return [n for n, p in self.named_parameters() if n.startswith("features.") and p.dim() == 4]

    def forward(self, x):
        return self.head(F.relu(self.bn(self.features(x))).mean(dim=(2, 3)))
