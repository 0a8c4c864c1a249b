"""Per-example statistics over epochs, from boolean correctness matrices (epochs x examples)."""

from __future__ import annotations

import numpy as np


def pack(correct: np.ndarray) -> np.ndarray:
    """Pack booleans along the last axis into bits (uint8), 8 examples a byte."""
    return np.packbits(np.asarray(correct, dtype=bool), axis=-1)


def unpack(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack` for n examples."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=n).astype(bool)


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The fraction of examples correct at both of two epochs (intersection) and at either (union)."""
    return np.count_nonzero(a & b) / len(a), np.count_nonzero(a | b) / len(a)


def consecutive_overlap(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For epochs t-1 and t: the fraction of examples correct at both (intersection) and at
    either (union). Returns two arrays of length epochs-1; by construction
    intersection[t-1] <= min(acc[t-1], acc[t]) <= max(...) <= union[t-1]."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2:
        raise ValueError(f"correctness must be epochs x examples, got shape {c.shape}")
    pairs = np.array([overlap(prev, cur) for prev, cur in zip(c[:-1], c[1:])]).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Per example, the number of forgetting events (Toneva et al., ICLR 2019): epochs t where the
    example was correct at t-1 and wrong at t."""
    c = np.asarray(correct, dtype=bool)
    return (c[:-1] & ~c[1:]).sum(axis=0)


def first_correct(correct: np.ndarray) -> np.ndarray:
    """Per example, the index of the first epoch at which it was correct; -1 if never."""
    c = np.asarray(correct, dtype=bool)
    return np.where(c.any(axis=0), c.argmax(axis=0), -1)


def learned_for_good(correct: np.ndarray) -> np.ndarray:
    """Per example, the index of the first epoch from which it stays correct to the end; -1 if it is
    wrong at the last epoch."""
    c = np.asarray(correct, dtype=bool)
    wrong_after = np.flip(np.logical_or.accumulate(np.flip(~c, axis=0), axis=0), axis=0)  # wrong at t or later
    stays = ~wrong_after
    return np.where(stays[-1], stays.argmax(axis=0), -1)


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"n": 0}
    return {"n": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
            "q25": float(np.quantile(values, 0.25)), "q75": float(np.quantile(values, 0.75))}


def example_summary(correct: np.ndarray, epochs: np.ndarray, corrupted: np.ndarray) -> dict:
    """Forgetting and learning statistics of one split, overall and for clean vs corrupted examples.
    Epoch numbers (not indices) are reported; `first_learned` counts examples ever correct."""
    c = np.asarray(correct, dtype=bool)
    epochs = np.asarray(epochs)
    corrupted = np.asarray(corrupted, dtype=bool)
    events = forgetting_events(c)
    first = first_correct(c)
    stable = learned_for_good(c)
    ever = first >= 0
    counts = np.bincount(events) if events.size else np.zeros(1, dtype=int)
    out = {
        "examples": int(c.shape[1]), "epochs": int(c.shape[0]),
        "never_learned": int((~ever).sum()),
        "never_forgotten": int((ever & (events == 0)).sum()),   # Toneva et al.'s unforgettable examples
        "forgetting_histogram": {str(k): int(v) for k, v in enumerate(counts) if v},
        "forgetting_events": _stats(events.astype(float)),
    }
    for name, mask in (("clean", ~corrupted), ("corrupted", corrupted)):
        out[name] = {
            "examples": int(mask.sum()),
            "forgetting_events": _stats(events[mask].astype(float)),
            "first_learned_epoch": _stats(epochs[first[mask & ever]].astype(float)),
            "learned_for_good_epoch": _stats(epochs[stable[mask & (stable >= 0)]].astype(float)),
            "never_learned": int((mask & ~ever).sum()),
        }
    return out


def split_names(ex: dict) -> list[str]:
    """The splits recorded in an examples.npz's arrays."""
    return [k[:-len("_correct")] for k in ex if k.endswith("_correct")]


def correctness(ex: dict, split: str) -> np.ndarray:
    """The (epochs x examples) boolean matrix of a split of an examples.npz's arrays."""
    return unpack(ex[f"{split}_correct"], int(ex[f"n_{split}"]))
