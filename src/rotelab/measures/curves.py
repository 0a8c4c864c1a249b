"""Measurements on per-epoch curves."""

from __future__ import annotations

import numpy as np


def find_collapses(epochs, acc, drop: float, window: int) -> list[dict]:
    """Collapses of an accuracy curve: epochs where accuracy is more than `drop` below its best over
    the previous `window` epochs. Consecutive flagged epochs form one collapse, reported with the
    epoch it was first flagged, the best accuracy before it, the lowest accuracy within it and the
    epoch of that lowest point."""
    epochs, acc = np.asarray(epochs), np.asarray(acc, dtype=float)
    events, current = [], None
    for t in range(1, len(acc)):
        before = acc[max(0, t - window):t].max()
        if before - acc[t] > drop:
            if current is None:
                current = {"epoch": int(epochs[t]), "before": float(before),
                           "lowest": float(acc[t]), "lowest_epoch": int(epochs[t])}
                events.append(current)
            elif acc[t] < current["lowest"]:
                current.update(lowest=float(acc[t]), lowest_epoch=int(epochs[t]))
        else:
            current = None
    for e in events:
        e["drop"] = e["before"] - e["lowest"]
    return events


def lr_drops(metrics: list[dict]) -> list[int]:
    """The epochs whose learning rate is below the previous record's (a schedule's steps); records
    without an lr are skipped."""
    rows = [m for m in metrics if m.get("lr")]
    return [b["epoch"] for a, b in zip(rows, rows[1:]) if b["lr"] < a["lr"] * (1 - 1e-9)]
