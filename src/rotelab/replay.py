"""`rotelab replay RUN`: train a run's first epochs again with this code and compare their metrics.

Every draw in a run comes from its seed, so on the same device, CPU kernels (instruction set) and
thread count a replay must give the same numbers bit for bit; a run records them (its environment).
A study whose runs were trained by an earlier version can show, this way, that the code it is
published with still makes them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import ConfigError, StoreError
from .plan import execute, one_run
from .protocol import protocol_of
from .store import RunDir, compute_conditions, source_version


def _timing(key: str) -> bool:
    return key.startswith("seconds")   # wall times: never equal


def replay(path, epochs: int = 3) -> dict:
    """Train the first `epochs` epochs of the run at `path` again in a temporary folder and compare
    every metric both have, exactly. Returns the epochs and values compared, the differences as
    (epoch, key, saved, replayed), and the source versions that trained and replayed it."""
    if epochs < 1:
        raise ConfigError("--epochs", f"must be at least 1, got {epochs}")
    run = RunDir(path)
    if not (run.path / "config.json").is_file():
        raise StoreError(run.path, f"{run.path} is not a run directory (no config.json); give a run of fit, forget "
                                   "or one seed of an infoplane folder")
    proto = protocol_of(run.path)
    if not proto.trains:
        raise ConfigError("RUN", f"{run.path} is a {proto.name} run; replay trains runs again (fit, forget, infoplane)")
    saved = {m["epoch"]: m for m in run.read_metrics() if m["epoch"] >= 1}
    if not saved:
        raise StoreError(run.path, f"{run.path} has no finished epoch to replay")
    n = min(epochs, max(saved))
    cfg = {**run.read_config(), "epochs": n, "progress": False}
    for key, value in (("epochs2", 0), ("until_train_acc", None)):   # only stage 1's first epochs matter
        if key in cfg:
            cfg[key] = value
    if "seeds" in cfg:   # one seed of a folder of seeds
        cfg["seeds"] = str(cfg.get("seed", 0))
    config = proto.config.from_dict(cfg).validate()
    with tempfile.TemporaryDirectory() as tmp:
        # the run alone, not the folder its protocol would plan around it (a memorize fold, one seed)
        execute([one_run(proto.name, config, Path(tmp) / "replay")], keep_existing=False)
        again = {m["epoch"]: m for m in RunDir(Path(tmp) / "replay").read_metrics()}
    compared, differences = 0, []
    for e in range(1, n + 1):
        for key in sorted(set(saved.get(e, {})) & set(again.get(e, {}))):
            if _timing(key):
                continue
            compared += 1
            if saved[e][key] != again[e][key]:
                differences.append((e, key, saved[e][key], again[e][key]))
    env = run.read_environment()
    now = compute_conditions()
    # where the run recorded them: the conditions that differ (a difference there explains rounding)
    unlike = [f"{k} {env[k]} then, {now[k]} now" for k in now if k in env and env[k] != now[k]]
    # a GPU run replayed on the CPU (or another kind of device) rounds otherwise at every step
    if env.get("device") and getattr(config, "device", None):
        from .engine import resolve_device
        here = resolve_device(config.device)
        if here.type != str(env["device"]).split(":")[0]:
            unlike.insert(0, f"device {env['device']} then, {here} now")
    for key in ("precision", "deterministic"):
        if key in env and getattr(config, key, env[key]) != env[key]:
            unlike.insert(0, f"{key} {env[key]} then, {getattr(config, key)} now")
    return {"epochs": n, "compared": compared, "differences": differences,
            "trained_at": env.get("git") or env.get("rotelab"), "replayed_at": source_version(),
            "unlike": unlike, "conditions_known": all(k in env for k in now)}
