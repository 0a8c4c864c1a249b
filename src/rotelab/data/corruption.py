"""Corruptions of Zhang et al. (ICLR 2017), as pure functions of tensors and a torch.Generator.

Each returns the corrupted tensor and a boolean mask of the examples it changed. Inputs are
(N, C, *positions) images or (N, D) vectors; a "pixel" is one position across all channels.
"""

from __future__ import annotations

import torch


def _pick(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Each of n examples independently with probability p."""
    return torch.rand(n, generator=gen) < p


def corrupt_labels(y: torch.Tensor, p: float, num_classes: int, gen: torch.Generator,
                   mode: str = "uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """With probability p, replace each label by a random class.

    mode 'uniform' draws from all classes (the true one included), as Zhang et al.; the expected
    fraction of changed labels is then p * (1 - 1/K). Mode 'other' draws from the K-1 other classes.
    Mode 'permute' shuffles the picked examples' labels among themselves (the class histogram kept).
    Mode 'pair' is class-conditional noise: every picked label of class c becomes c + 1 (mod K), the
    pair flipping of Han et al. (NeurIPS 2018, co-teaching), the case confident learning is built for.
    Returns (labels used, mask of labels that differ from the true ones).
    """
    picked = _pick(len(y), p, gen)
    if mode == "permute":
        # the picked examples' labels shuffled among themselves: the label histogram is kept exactly
        # (p = 1 is one random permutation of all labels, as the Memorizing IB study draws them)
        out = y.clone()
        idx = picked.nonzero().squeeze(1)
        out[idx] = y[idx[torch.randperm(len(idx), generator=gen)]]
        return out, out != y
    if mode == "uniform":
        new = torch.randint(num_classes, (len(y),), generator=gen)
    elif mode == "other":
        new = (y + torch.randint(1, num_classes, (len(y),), generator=gen)) % num_classes
    elif mode == "pair":
        new = (y + 1) % num_classes
    else:
        raise ValueError(f"unknown label noise mode {mode!r}")
    out = torch.where(picked, new, y)
    return out, out != y


def _as_pixels(x: torch.Tensor) -> torch.Tensor:
    """View (N, C, *positions) as (N, C, P) and (N, D) as (N, 1, D)."""
    return x.reshape(len(x), 1, -1) if x.dim() == 2 else x.reshape(x.shape[0], x.shape[1], -1)


def pixel_permutation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random permutation of the pixel positions of x's examples."""
    return torch.randperm(_as_pixels(x).shape[-1], generator=gen)


def shuffle_pixels(x: torch.Tensor, p: float, gen: torch.Generator,
                   perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one fixed permutation of pixel positions (all channels alike) to a fraction p of images."""
    if perm is None:
        perm = pixel_permutation(x, gen)
    picked = _pick(len(x), p, gen)
    px = _as_pixels(x)
    out = px.clone()
    out[picked] = px[picked][:, :, perm]
    return out.reshape(x.shape), picked


def random_pixels(x: torch.Tensor, p: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply an independent random permutation of pixel positions to each of a fraction p of images."""
    picked = _pick(len(x), p, gen)
    px = _as_pixels(x)
    out = px.clone()
    rows = px[picked]
    perms = torch.rand(rows.shape[0], rows.shape[-1], generator=gen).argsort(dim=1)
    out[picked] = torch.gather(rows, 2, perms[:, None, :].expand_as(rows))
    return out.reshape(x.shape), picked


def gaussian_inputs(x: torch.Tensor, p: float, gen: torch.Generator,
                    stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a fraction p of inputs by Gaussian noise with the data's per-channel mean and std."""
    picked = _pick(len(x), p, gen)
    px = _as_pixels(x)
    mean, std = stats if stats is not None else channel_stats(x)
    noise = torch.randn(int(picked.sum()), *px.shape[1:], generator=gen, dtype=x.dtype)
    out = px.clone()
    out[picked] = noise * std[None, :, None] + mean[None, :, None]
    return out.reshape(x.shape), picked


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over examples and positions."""
    px = _as_pixels(x).double()
    return px.mean(dim=(0, 2)).to(x.dtype), px.std(dim=(0, 2)).to(x.dtype)
