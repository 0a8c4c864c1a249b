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


def parse_remove(text: str) -> tuple[str, int, str | None]:
    """'random:1000' -> ('random', 1000, None); 'mem:1000:PATH' -> ('mem', 1000, PATH)."""
    kind, _, rest = str(text).partition(":")
    count, _, path = rest.partition(":")
    try:
        k = int(count)
    except ValueError:
        k = -1
    if kind not in ("random", "mem") or k < 1 or (kind == "mem") != bool(path):
        raise ConfigError("--remove", f"expected random:K or mem:K:PATH (a memorize folder) with K >= 1, got {text!r}")
    return kind, k, path or None


def parse_fold(text: str) -> tuple[int, int]:
    """'F/K' -> (F, K): fold F (0-based) of K folds."""
    try:
        f, k = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ConfigError("--heldout-fold", f"expected F/K such as 0/5, got {text!r}") from None
    if k < 2 or not 0 <= f < k:
        raise ConfigError("--heldout-fold", f"needs K >= 2 folds and 0 <= F < K, got {text!r}")
    return f, k


# The built-in models' keyword arguments and their defaults (what `rotelab.models` builders declare:
# tests/test_model_checks.py holds the two equal), here without torch, so that a saved config can be
# read into its full form (and compared, plotted) by code that never builds a model.
BUILT_IN_MODEL_ARGS: dict[str, dict] = {
    "mlp": {"widths": [512], "activation": "relu", "batch_norm": False, "dropout": 0.0},
    "tishby": {"activation": "tanh", "batch_norm": False},
    "alexnet-small": {},
    "inception-small": {},
    "wrn": {"depth": 16, "widen": 4, "batch_norm": True, "zero_init_residual": False},
}

# Older config fields that spell a model argument (still flags and config-file keys): field ->
# (the models that read it, the argument it sets)
MODEL_SPELLINGS: dict[str, tuple[tuple[str, ...], str]] = {
    "widths": (("mlp",), "widths"),
    "activation": (("mlp", "tishby"), "activation"),
    "batch_norm": (("mlp", "tishby"), "batch_norm"),
    "depth": (("wrn",), "depth"),
    "widen": (("wrn",), "widen"),
    "wrn_batch_norm": (("wrn",), "batch_norm"),
}


# what the older fields held when not given (older configs store every field): not a choice of the user
SPELLING_DEFAULTS = {"widths": [512], "activation": None, "batch_norm": False, "depth": 16, "widen": 4,
                     "wrn_batch_norm": True}


def full_model_args(model: str, model_args: dict | None, spelled: dict | None = None) -> dict:
    """A model's keyword arguments in their one stored form: the spelled fields that model reads
    (--widths for mlp, --depth for wrn, ...; None: not given), then --model-args over them, and for
    a built-in model every argument it declares, defaults filled in (so that a run made before an
    argument existed compares equal). A spelled field given for a model of a scheme, plugin or import
    path, which would ignore it, is one error; a built-in model ignores another's (a sweep over
    models shares one base)."""
    import json
    out: dict = {}
    defaults = BUILT_IN_MODEL_ARGS.get(model)
    for field, value in (spelled or {}).items():
        if value is None:
            continue
        readers, arg = MODEL_SPELLINGS[field]
        if model in readers:
            out[arg] = list(value) if isinstance(value, tuple) else value
        elif defaults is None and value != SPELLING_DEFAULTS[field]:
            raise ConfigError(flag(field), f"is an argument of {' and '.join(readers)}; for {model} give its "
                                           "own arguments with --model-args NAME=VALUE")
    out.update(model_args or {})
    if defaults is not None:
        out = {**defaults, **out}
        if out.get("activation") is None and "activation" in defaults:   # older configs: None = the model's own
            out["activation"] = defaults["activation"]
    try:   # lists, not tuples: as JSON stores them
        return json.loads(json.dumps(out))
    except (TypeError, ValueError):
        return out


def read_model_fields(config: dict) -> dict:
    """A config dict (a saved config.json, a study step, a sweep point) in the current form: older
    model fields (widths, depth, ...) folded into model_args, which is filled in for built-in models."""
    if "model" not in config and "model_args" not in config and not any(k in config for k in MODEL_SPELLINGS):
        return dict(config)
    out = {k: v for k, v in config.items() if k not in MODEL_SPELLINGS}
    spelled = {k: config[k] for k in MODEL_SPELLINGS if k in config}
    try:
        out["model_args"] = full_model_args(config.get("model", "mlp"), config.get("model_args") or {}, spelled)
    except ConfigError:
        out["model_args"] = dict(config.get("model_args") or {})
    return out
