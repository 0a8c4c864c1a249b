"""The run directory: the one contract between protocols, plots and reports.

    config.json  metrics.jsonl  examples.npz  status.json  checkpoints/  tb/  figures/

Files that are rewritten (status, examples, checkpoints) are written to a temporary name and
renamed, so a run killed at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import ConfigError


def atomic_write_bytes(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


@functools.lru_cache(maxsize=1)
def source_version() -> str | None:
    """`git describe` of the rotelab source, when it is a git checkout (once per process)."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict:
    """Versions and device, so a run says what produced it."""
    env = {"rotelab": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "device": str(device)}
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if source_version():
        env["git"] = source_version()
    return env


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON line of a file (a line cut by a kill is ignored); [] if it is missing."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_jsonl(path: Path, upto_epoch: int) -> list[dict]:
    """Keep the records with epoch <= upto_epoch, atomically; returns them."""
    keep = [r for r in read_jsonl(path) if r.get("epoch", 0) <= upto_epoch]
    atomic_write_bytes(Path(path), "".join(json.dumps(r) + "\n" for r in keep).encode())
    return keep


def examples_upto(ex: dict, upto: int) -> dict:
    """examples.npz arrays with only the per-epoch rows (epochs, *_correct, *_margin) of epochs <= upto."""
    keep = np.asarray(ex["epochs"]) <= upto
    return {k: (v[keep] if k == "epochs" or k.endswith(("_correct", "_margin")) else v) for k, v in ex.items()}


def metrics_line(record: dict) -> str:
    """A metrics record as one line of metrics.jsonl."""
    return json.dumps(record, default=_jsonable) + "\n"


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    # -- layout -------------------------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    status_file = property(lambda self: self.path / "status.json")
    examples_file = property(lambda self: self.path / "examples.npz")
    checkpoints = property(lambda self: self.path / "checkpoints")
    tb = property(lambda self: self.path / "tb")
    figures = property(lambda self: self.path / "figures")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def check_new(cls, path, overwrite: bool = False) -> "RunDir":
        """Refuse a non-empty folder unless overwrite; touches nothing (call before any work)."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError("--out", f"{run.path} exists and is not a folder; choose another --out")
        if run.path.is_dir() and any(run.path.iterdir()) and not overwrite:
            raise ConfigError("--out", f"{run.path} is not empty; pass --resume {run.path} to continue it, "
                                       "--overwrite to replace it, or choose another --out")
        return run

    def create(self, config: dict, env: dict, overwrite: bool = False, protocol: str = "fit"):
        if overwrite and self.path.is_dir():
            shutil.rmtree(self.path)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_file, {"protocol": protocol, **config, "environment": env})
        self.write_status("running", epochs_completed=0)

    # -- config and status --------------------------------------------------------------------
    def _config_json(self) -> dict:
        if not self.config_file.is_file():
            raise ConfigError("--resume", f"{self.path} has no config.json; is it a rotelab run directory?")
        try:
            return json.loads(self.config_file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError("--resume", f"{self.config_file} is not valid JSON ({e})") from None

    def read_config(self) -> dict:
        """The config fields (without the protocol name and the environment)."""
        cfg = self._config_json()
        cfg.pop("environment", None)
        cfg.pop("protocol", None)
        return cfg

    def read_protocol(self) -> str:
        return self._config_json().get("protocol", "fit")

    def write_status(self, state: str, **extra):
        old = self.read_status()
        status = {**old, "state": state, **extra, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if state != "failed":
            status.pop("error", None)
        atomic_write_json(self.status_file, status)

    def read_status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    # -- metrics ------------------------------------------------------------------------------
    def append_metrics(self, record: dict):
        # No fsync: a killed process loses nothing the OS has; resume cuts back to the checkpoint.
        with open(self.metrics_file, "a") as f:
            f.write(metrics_line(record))

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (a line cut by a kill is ignored)."""
        return read_jsonl(self.metrics_file)

    def truncate_metrics(self, upto_epoch: int):
        """Keep the records of epochs <= upto_epoch (before resuming from that epoch's checkpoint)."""
        truncate_jsonl(self.metrics_file, upto_epoch)

    # -- arrays and checkpoints ---------------------------------------------------------------
    def write_examples(self, arrays: dict):
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(self.examples_file, buf.getvalue())

    def read_examples(self) -> dict:
        with np.load(self.examples_file) as z:
            return {k: z[k] for k in z.files}

    def save_checkpoint(self, state: dict, name: str = "last.pt"):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.checkpoints / name, buf.getvalue())

    def load_checkpoint(self, path=None, map_location="cpu") -> dict:
        path = Path(path) if path is not None else self.last_checkpoint
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:
            raise ConfigError("--resume", f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to "
                                          "restart the run from scratch, or pass --overwrite") from None
