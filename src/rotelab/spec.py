"""The small languages of config values, parsed without torch: corruption specs (KIND=P), seed lists
(0-9,12) and flag names."""

from __future__ import annotations

from .errors import ConfigError

TISHBY_WIDTHS = (10, 7, 5, 4, 3)   # the hidden widths of Shwartz-Ziv & Tishby's 12-10-7-5-4-3-2 net

CORRUPTIONS = ("none", "labels", "shuffled-pixels", "random-pixels", "gaussian")


def parse_seeds(spec: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,7' -> [0, 3, 7]; ranges and lists mix: '0-2,10'."""
    seeds = []
    try:
        for part in str(spec).split(","):
            lo, _, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError("--seeds", f"expected seeds such as 0-9 or 0,3,7, got {spec!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError("--seeds", f"expected distinct non-negative seeds such as 0-9, got {spec!r}")
    return seeds


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_corruption(spec: str, name: str = "--corrupt") -> tuple[str, float]:
    """'labels=0.5' -> ('labels', 0.5); a pixel kind without =P means all examples."""
    kind, _, p = spec.partition("=")
    kind = kind.strip()
    if kind not in CORRUPTIONS:
        raise ConfigError(name, f"unknown kind {kind!r}; use one of {', '.join(CORRUPTIONS)}, e.g. labels=0.5")
    if kind == "none":
        return "none", 0.0
    if not p:
        if kind == "labels":
            raise ConfigError(name, "labels needs a probability, e.g. labels=0.5")
        return kind, 1.0
    try:
        value = float(p)
    except ValueError:
        raise ConfigError(name, f"{p!r} is not a number; write e.g. {kind}=0.5") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(name, f"p must be in [0, 1], got {value}")
    return kind, value


def parse_fold(text: str) -> tuple[int, int]:
    """'F/K' -> (F, K): fold F (0-based) of K folds."""
    try:
        f, k = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ConfigError("--heldout-fold", f"expected F/K such as 0/5, got {text!r}") from None
    if k < 2 or not 0 <= f < k:
        raise ConfigError("--heldout-fold", f"needs K >= 2 folds and 0 <= F < K, got {text!r}")
    return f, k
