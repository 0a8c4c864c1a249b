"""Multilayer perceptrons (also the 12-10-7-5-4-3-2 net of Shwartz-Ziv & Tishby)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, then Linear(+BatchNorm)+activation per hidden width, then a linear classifier.

    `layers` holds the hidden blocks in order, so activation-capture hooks can find each layer.
    With batch_norm the hidden weights become scale-invariant (what weight decay then shrinks).
    """

    def __init__(self, input_shape, widths, num_classes, activation=nn.ReLU, batch_norm: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        dims = [math.prod(input_shape), *widths]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), *([nn.BatchNorm1d(b)] if batch_norm else []), activation(),
                          *([nn.Dropout(dropout)] if dropout else []))
            for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], num_classes)
        self.batch_norm = batch_norm

    def scale_invariant(self) -> list[str]:
        """Names of the weights whose scale the output ignores: with batch norm each hidden
        layer's (its output is normalized); the classifier's never."""
        return [f"layers.{i}.0.weight" for i in range(len(self.layers))] if self.batch_norm else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def activations(self, x: torch.Tensor, output: str = "softmax") -> list[torch.Tensor]:
        """Each hidden layer's output and the output layer, as softmax probabilities or raw logits
        (the layers of an information plane)."""
        out, x = [], x.flatten(1)
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        logits = self.head(x).float()
        out.append(logits if output == "logits" else torch.softmax(logits, dim=1))
        return out
