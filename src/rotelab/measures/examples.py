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
    """Per example, the index of the first presentation (row) at which it was correct, -1 if never
    (Toneva et al.'s `first_learned`, 0-based; theirs is NaN where ours is -1)."""
    c = np.asarray(correct, dtype=bool)
    return np.where(c.any(axis=0), c.argmax(axis=0), -1)


def presentations_to_learn(correct: np.ndarray) -> np.ndarray:
    """Per example, the index of the last presentation at which it was wrong, plus one: 0 if it was
    never wrong, the number of presentations if it is wrong at the last (Toneva et al.'s
    `presentations_needed_to_learn`). Where it is below that number, it is the index from which the
    example stays correct."""
    c = np.asarray(correct, dtype=bool)
    wrong = ~c
    last_wrong = len(c) - 1 - np.flip(wrong, axis=0).argmax(axis=0)
    return np.where(wrong.any(axis=0), last_wrong + 1, 0)


def breaking_step(correct: np.ndarray) -> np.ndarray:
    """Per example, the index of the first row (noise level) at which it is wrong, among examples right
    at the first row; -1 for an example wrong from the first row on, len(rows) for one never wrong."""
    c = np.asarray(correct, dtype=bool)
    wrong = ~c
    first = np.where(wrong.any(axis=0), wrong.argmax(axis=0), len(c))
    return np.where(c[0], first, -1)


def forgetting_score(correct: np.ndarray) -> np.ndarray:
    """Per example, the key Toneva et al. rank examples by: its forgetting events, or the number of
    presentations if it was never learned (never-learned examples are the most forgettable)."""
    c = np.asarray(correct, dtype=bool)
    return np.where(c.any(axis=0), forgetting_events(c), len(c))


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"n": 0}
    return {"n": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
            "q25": float(np.quantile(values, 0.25)), "q75": float(np.quantile(values, 0.75))}


def forgetting_histogram(events: np.ndarray, ever: np.ndarray) -> dict:
    """Examples per number of forgetting events among those ever learned ("0": the unforgettable
    ones), and the never-learned ones in a bin of their own."""
    counts = np.bincount(events[ever]) if ever.any() else np.zeros(0, dtype=int)
    out = {str(k): int(v) for k, v in enumerate(counts) if v}
    if (~ever).any():
        out["never_learned"] = int((~ever).sum())
    return out


def example_summary(correct: np.ndarray, epochs: np.ndarray, corrupted: np.ndarray) -> dict:
    """Forgetting and learning statistics of one split (correctness: presentations x examples), overall
    and for clean vs corrupted examples, by Toneva et al.'s definitions. Presentation index t is the
    epoch epochs[t]; every field is defined in the README (per-example dynamics)."""
    c = np.asarray(correct, dtype=bool)
    corrupted = np.asarray(corrupted, dtype=bool)
    events, first, to_learn = forgetting_events(c), first_correct(c), presentations_to_learn(c)
    ever = first >= 0

    def part(mask):
        return {
            "examples": int(mask.sum()),
            "never_learned": int((mask & ~ever).sum()),
            "never_forgotten": int((mask & ever & (events == 0)).sum()),   # Toneva et al.'s unforgettable examples
            "forgetting_histogram": forgetting_histogram(events[mask], ever[mask]),
            "forgetting_events": _stats(events[mask].astype(float)),
            "first_learned": _stats(first[mask & ever].astype(float)),
            "presentations_to_learn": _stats(to_learn[mask].astype(float)),
        }
    everything = np.ones(c.shape[1], dtype=bool)
    epochs = np.asarray(epochs)
    return {"presentations": int(c.shape[0]), "first_epoch": int(epochs[0]) if len(epochs) else None,
            "last_epoch": int(epochs[-1]) if len(epochs) else None, **part(everything),
            "clean": part(~corrupted), "corrupted": part(corrupted)}


def split_names(ex: dict) -> list[str]:
    """The splits recorded in an examples.npz's arrays."""
    return [k[:-len("_correct")] for k in ex if k.endswith("_correct")]


def correctness(ex: dict, split: str) -> np.ndarray:
    """The (epochs x examples) boolean matrix of a split of an examples.npz's arrays."""
    return unpack(ex[f"{split}_correct"], int(ex[f"n_{split}"]))
