"""The trace of the Fisher information per layer (Achille et al., "Critical learning periods").

tr F = E_x E_{y ~ p(y|x)} ||d/dtheta log p(y|x)||^2, estimated by Monte Carlo over examples x with
one label drawn from the model's own predictive distribution per example. Per-example gradients
come from torch.func (vmap over grad), in chunks.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap


def _owner(name: str) -> str:
    """The module a parameter belongs to, named as its wrapper: 'layers.0.0.layer.weight' -> 'layers.0.0'."""
    parts = name.split(".")[:-1]
    if parts and parts[-1] == "layer":   # a LogNormalNoise wrapper's inner layer
        parts = parts[:-1]
    return ".".join(parts) or "(model)"


def fisher_trace(model: torch.nn.Module, x: torch.Tensor, gen: torch.Generator, chunk: int = 64) -> dict[str, float]:
    """Per layer (module owning the parameters), the Monte Carlo trace of the Fisher information at
    the current parameters, on the examples x (eval mode: batch norm uses its running statistics)."""
    was_training = model.training
    model.eval()
    # the weights (and biases) carry the information; noise scales are held fixed
    params = {k: v.detach() for k, v in model.named_parameters() if not k.endswith("log_alpha")}
    frozen = {k: v.detach() for k, v in model.named_parameters() if k.endswith("log_alpha")}
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)
    labels = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(x.device)

    def log_p(p, xi, yi):
        out = functional_call(model, ({**p, **frozen}, buffers), (xi[None],))
        return torch.log_softmax(out.float(), dim=1)[0].gather(0, yi[None]).squeeze(0)

    per_example_grad = vmap(grad(log_p), in_dims=(None, 0, 0))
    sums = {k: 0.0 for k in params}
    for i in range(0, len(x), chunk):
        g = per_example_grad(params, x[i:i + chunk], labels[i:i + chunk])
        for k, v in g.items():
            sums[k] += float((v.float() ** 2).sum())
    model.train(was_training)
    out = {}
    for k, s in sums.items():
        out[_owner(k)] = out.get(_owner(k), 0.0) + s / len(x)
    return out
