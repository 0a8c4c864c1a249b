"""Per-example statistics over epochs, from boolean correctness matrices (epochs x examples)."""

from __future__ import annotations

import numpy as np


def pack(correct: np.ndarray) -> np.ndarray:
    """Pack booleans along the last axis into bits (uint8), 8 examples a byte."""
    return np.packbits(np.asarray(correct, dtype=bool), axis=-1)


def unpack(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack` for n examples."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=n).astype(bool)


def consecutive_overlap(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For epochs t-1 and t: the fraction of examples correct at both (intersection) and at
    either (union). Returns two arrays of length epochs-1; by construction
    intersection[t-1] <= min(acc[t-1], acc[t]) <= max(...) <= union[t-1]."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2:
        raise ValueError(f"correctness must be epochs x examples, got shape {c.shape}")
    prev, cur = c[:-1], c[1:]
    return (prev & cur).mean(axis=1), (prev | cur).mean(axis=1)
