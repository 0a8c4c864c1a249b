"""The run directory: the one contract between protocols, plots, reports and notebooks.

    config.json  metrics.jsonl  examples.npz  info.jsonl  status.json  checkpoints/  tb/  figures/

Every file name and reader lives here. Files that are rewritten (status, examples, checkpoints) are
written to a temporary name and renamed, so a run killed at any moment leaves either the old or the
new file, never half of one. A process that writes a run holds its exclusive lock (`.lock`), which
the operating system releases when the process ends, however it ends.

Errors are neutral (StoreError names the path and what is wrong with it); the CLI names the option
the user typed. Nothing here imports torch until a checkpoint is read or written.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import json
import os
import platform
import re
import shutil
import threading
import subprocess
import time
from pathlib import Path

import numpy as np

from .version import __version__
from .config import parse_corruption


from .errors import RunLocked, StoreError  # noqa: F401  (re-exported)


def atomic_write_bytes(path: Path, data: bytes, at_once: bool = False):
    """Write to a temporary name, make it durable (fsync), then rename: a reader sees the old file or
    the new one, also after a power cut. On any failure (a full disk, a signal) the temporary file is
    removed; an OSError names the file. Inside `writes_together` the fsync and the rename wait for the
    end of the block, unless `at_once` (a file that is then appended to, such as metrics.jsonl cut
    back on resume: an append must find the new file in place)."""
    group = _WRITE_GROUP.get()
    if group is not None and group.thread == threading.get_ident() and not at_once:
        group.write(Path(path), data)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path)


def _naming(e: BaseException, path: Path) -> BaseException:
    if isinstance(e, OSError) and e.filename is None:
        return OSError(e.errno, e.strerror, str(path))
    return e


class _WriteGroup:
    """The atomic writes of one `writes_together` block: written and flushed at once, made durable
    together at its end."""

    def __init__(self):
        self.thread = threading.get_ident()
        self.pending: list[tuple[Path, Path]] = []   # (temporary file, target), in the order written
        self.data: dict[Path, bytes] = {}            # what a target will hold: reads in the block see it

    def write(self, path: Path, data: bytes):
        tmp = path.with_name(f".{path.name}.{len(self.pending)}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            raise _naming(e, path)
        self.pending.append((tmp, path))
        self.data[path] = data

    def commit(self):
        """fsync every temporary file at once (threads: the waits overlap), then rename each into place
        in the order written; at the first that failed, the rest are removed and its error raised, as
        the writes one by one would have stopped there."""
        if not self.pending:
            return
        from concurrent.futures import ThreadPoolExecutor

        def sync(tmp: Path):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        with ThreadPoolExecutor(max_workers=min(16, len(self.pending))) as pool:
            synced = list(pool.map(lambda item: _outcome(sync, item[0]), self.pending))
        for i, ((tmp, path), error) in enumerate(zip(self.pending, synced)):
            if error is None:
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    error = e
            if error is not None:
                for t, _ in self.pending[i:]:
                    t.unlink(missing_ok=True)
                raise _naming(error, path)


def _outcome(fn, arg) -> BaseException | None:
    try:
        fn(arg)
        return None
    except OSError as e:
        return e


_WRITE_GROUP: contextvars.ContextVar[_WriteGroup | None] = contextvars.ContextVar("write_group", default=None)


@contextlib.contextmanager
def writes_together():
    """Atomic writes made in this block (by this thread) become durable together: each file is written
    at once, and at the end of the block their fsyncs run side by side and every file is renamed into
    place in the order written, so that a kill or a power cut leaves what the writes one by one would
    have left at some point between them. Reads through the store in the block see what was written
    (`current_text`). A block inside another joins it. Several runs that persist at the same epoch (a
    stack) wait for the disk once instead of once per file."""
    if _WRITE_GROUP.get() is not None:
        yield
        return
    group = _WriteGroup()
    token = _WRITE_GROUP.set(group)
    try:
        yield
    finally:
        _WRITE_GROUP.reset(token)
        group.commit()


def current_text(path: Path) -> str:
    """A file's text as the store will leave it: what a `writes_together` block of this thread has
    written to it and not yet renamed into place, else the file's."""
    group = _WRITE_GROUP.get()
    if group is not None and Path(path) in group.data:
        return group.data[Path(path)].decode()
    return Path(path).read_text()


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
    """`git describe` of the rotelab source, when it is a git checkout; "-dirty" when the package's own
    files differ from that commit (changes elsewhere in the checkout, such as docs, do not count)."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "describe", "--always"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        changed = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True,
                                 text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def compute_conditions() -> dict:
    """What decides how this process's CPU arithmetic rounds: the instruction set torch's kernels
    use (AVX2, AVX512, ...) and the thread count."""
    import torch
    return {"cpu_kernels": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def environment(device, model=None, spec=None) -> dict:
    """Versions, device, CPU kernels and threads, so a run says what produced it (the last two decide
    how its products round: a replay is bit for bit only where they match); with the model, its
    parameter count; on CUDA, the CUDA and cuDNN versions; with the loop's spec, the arithmetic it
    asked for (precision, compile, deterministic)."""
    import torch
    env: dict[str, object] = {"rotelab": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "device": str(device), **compute_conditions()}
    if spec is not None:
        env.update(precision=spec.precision, compile=spec.compile, deterministic=spec.deterministic)
    if model is not None:
        env["parameters"] = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("log_alpha"))
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    if source_version():
        env["git"] = source_version()
    return env


def stored_file(path: Path) -> Path | None:
    """Where a run's or folder's file is: the file, else its gzipped copy FILE.gz (a published record,
    docs/records, gzips its JSONL rows and per-example tables); None where neither is."""
    path = Path(path)
    packed = path.with_name(path.name + ".gz")
    return path if path.is_file() else packed if packed.is_file() else None


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON line of a file (or of its gzipped copy, FILE.gz, where only that exists); [] if it is
    missing. A last line cut by a kill (no newline after it) is left out; a bad line anywhere else
    means the file is damaged (StoreError)."""
    found = stored_file(path)
    if found is None:
        return []
    raw = found.read_bytes()
    if found != Path(path):   # the packed copy
        import gzip
        raw = gzip.decompress(raw)
    path = found
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise StoreError(path, f"{path} is damaged (not text)") from None
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if i == len(lines) - 1:   # the torn tail of a killed writer: cut back on resume
                break
            raise StoreError(path, f"{path} is damaged (line {i + 1} is not a JSON record)")
        out.append(record)
    return out


def read_json(path: Path):
    """A JSON file's content; StoreError naming the file if it is damaged."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(path, f"{path} is damaged (not valid JSON: {e})") from None


def truncate_jsonl(path: Path, upto_epoch: int) -> list[dict]:
    """Keep the records with epoch <= upto_epoch, atomically; returns them."""
    keep = [r for r in read_jsonl(path) if r.get("epoch", 0) <= upto_epoch]
    atomic_write_bytes(Path(path), "".join(json.dumps(r) + "\n" for r in keep).encode(), at_once=True)
    return keep


def examples_upto(ex: dict, upto: int) -> dict:
    """examples.npz arrays with only the per-epoch rows (epochs, *_correct, *_margin, *_prob) of epochs <= upto."""
    keep = np.asarray(ex["epochs"]) <= upto
    return {k: (v[keep] if k == "epochs" or k.endswith(("_correct", "_margin", "_prob")) else v) for k, v in ex.items()}


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
    info_file = property(lambda self: self.path / "info.jsonl")
    activations = property(lambda self: self.path / "activations")

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def check_new(cls, path, overwrite: bool = False) -> "RunDir":
        """Refuse a non-empty folder unless overwrite; touches nothing (call before any work)."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise StoreError(run.path, f"{run.path} exists and is not a folder")
        if run.path.is_dir() and run.has_files() and not overwrite:
            raise StoreError(run.path, f"{run.path} is not empty")
        return run

    def has_files(self) -> bool:
        return self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())

    def create(self, config: dict, env: dict, overwrite: bool = False, protocol: str = "fit", data: dict | None = None):
        """Lock the folder (if this process does not hold it yet) and write a fresh run into it; `data`
        is what a file source read (config.json's "data")."""
        if overwrite:
            self.clear()
        else:
            self.lock()
        if self.has_files():
            raise StoreError(self.path, f"{self.path} is not empty")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_file, {"protocol": protocol, **config, "environment": env,
                                             **({"data": data} if data else {})})
        self.write_status("running", epochs_completed=0)

    def clear(self):
        """Take the lock, then remove everything in the folder but the lock file (removing it would
        let a third writer in). For --overwrite, of a run or of a folder of runs."""
        self.lock()
        inner = [RunDir(d) for d in runs_in(self.path) if d != self.path]
        held = []
        try:
            for run in inner:   # a run below that another process writes stops this before anything goes
                run.lock()
                held.append(run)
            for p in self.path.iterdir():
                if p.name != LOCK:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        finally:
            for run in held:
                run.unlock()

    # -- the writer's lock --------------------------------------------------------------------
    def lock(self) -> "RunDir":
        """Hold this run's exclusive lock until unlock() or the end of the process (the OS releases
        it however the process ends, so a killed run never leaves a stale lock). Raises RunLocked,
        naming the holder's PID, if another process holds it. Creates the folder if needed."""
        key = str(self.path.resolve())
        if key in _HELD:
            return self
        import fcntl
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(self.path, f"{self.path} is being written by another process (PID {holder})",
                            holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.set_inheritable(fd, False)
        _HELD[key] = fd
        return self

    def unlock(self):
        fd = _HELD.pop(str(self.path.resolve()), None)
        if fd is not None:
            os.close(fd)   # closing the descriptor releases the lock

    def locked_by_other(self) -> bool:
        """True if another live process holds this run's lock (this process's own lock does not count)."""
        if str(self.path.resolve()) in _HELD or not (self.path / LOCK).is_file():
            return False
        import fcntl
        fd = os.open(self.path / LOCK, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    # -- config and status --------------------------------------------------------------------
    def _config_json(self) -> dict:
        if not self.path.is_dir():
            raise StoreError(self.path, f"{self.path} does not exist")
        if not self.config_file.is_file():
            raise StoreError(self.path, f"{self.path} has no config.json; it is not a rotelab run directory")
        try:
            cfg = json.loads(self.config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(self.config_file, f"{self.config_file} is damaged (not valid JSON: {e})") from None
        if not isinstance(cfg, dict):
            raise StoreError(self.config_file, f"{self.config_file} is damaged (not a JSON object)")
        return cfg

    def read_config(self) -> dict:
        """The config fields (without the protocol name and the environment)."""
        cfg = self._config_json()
        cfg.pop("environment", None)
        cfg.pop("protocol", None)
        cfg.pop("data", None)
        return cfg

    def read_data_record(self) -> dict | None:
        """What the run's data source read (a file source or labels file: path, sizes, hashes), or None."""
        return self._config_json().get("data")

    def read_protocol(self) -> str:
        return self._config_json().get("protocol", "fit")

    def read_environment(self) -> dict:
        """What produced the run: versions, device, git commit, and the model's parameter count."""
        return self._config_json().get("environment", {})

    def write_status(self, state: str, **extra):
        old = self.read_status()
        status = {**old, "state": state, **extra, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if state != "failed":
            status.pop("error", None)
        atomic_write_json(self.status_file, status)

    def read_status(self) -> dict:
        try:
            return json.loads(current_text(self.status_file))
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
        if not self.examples_file.is_file():
            raise StoreError(self.path, f"{self.path} has no examples.npz (runs record it unless --example-record none)")
        try:
            with np.load(self.examples_file) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:
            raise StoreError(self.examples_file, f"{self.examples_file} is damaged ({_short(e)})") from None

    def save_checkpoint(self, state: dict, name: str = "last.pt"):
        """Write a checkpoint atomically and record its epoch and size in checkpoints/manifest.json
        (so that a damaged one is noticed without reading it)."""
        import torch
        buf = io.BytesIO()
        torch.save(state, buf)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        data = buf.getvalue()
        atomic_write_bytes(self.checkpoints / name, data)
        manifest = self.checkpoint_manifest()
        manifest[name] = {"epoch": state.get("epoch"), "bytes": len(data)}
        atomic_write_json(self.checkpoints / "manifest.json", manifest)

    def checkpoint_manifest(self) -> dict:
        try:
            manifest = json.loads(current_text(self.checkpoints / "manifest.json"))
            return manifest if isinstance(manifest, dict) else {}
        except (OSError, ValueError):
            return {}

    def damaged_checkpoints(self) -> list[str]:
        """Kept checkpoints whose size differs from the one written (cut off by a crash, a full disk or a
        copy). last.pt is rewritten all along, so its manifest entry may lag it; it is checked by loading."""
        return [name for name, entry in self.checkpoint_manifest().items()
                if name != "last.pt" and (self.checkpoints / name).is_file()
                and (self.checkpoints / name).stat().st_size != entry.get("bytes")]

    def resume_checkpoints(self) -> list[Path]:
        """The checkpoints a resume may start from, newest first: last.pt, then the kept epoch_NNNN.pt
        (stage1.pt is not one: it is saved before the stage changes)."""
        kept = sorted(self.checkpoints.glob("epoch_*.pt"), key=lambda p: p.name, reverse=True) \
            if self.checkpoints.is_dir() else []
        return [p for p in [self.last_checkpoint, *kept] if p.is_file()]

    def load_checkpoint(self, path=None, map_location="cpu") -> dict:
        import torch
        path = Path(path) if path is not None else self.last_checkpoint
        if path.name in self.damaged_checkpoints() and path.parent == self.checkpoints:
            raise StoreError(path, f"checkpoint {path} is damaged ({path.stat().st_size} bytes of the "
                                   f"{self.checkpoint_manifest()[path.name]['bytes']} written)")
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:
            raise StoreError(path, f"checkpoint {path} is unreadable ({_short(e)})") from None
        if not isinstance(state, dict) or "model" not in state:
            raise StoreError(path, f"checkpoint {path} is damaged (it holds no model state)")
        return state

    # -- reading, for plots, reports and notebooks ---------------------------------------------
    def read_info(self) -> list[dict]:
        """info.jsonl (infoplane): one record per captured epoch, layer and estimator."""
        return read_jsonl(self.info_file)

    def num_classes(self) -> int:
        """The number of classes of the run's data (from the true labels it recorded)."""
        return int(self.read_examples()["train_labels_true"].max()) + 1

    def label_corruption(self) -> float:
        """The label-corruption level p of this run (0 for other corruptions), for coloring figures."""
        kind, p = parse_corruption(self.read_config().get("corrupt", "none"))
        return p if kind == "labels" else 0.0

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"


def _short(e: Exception) -> str:
    """An exception in a few words, for a one-line message."""
    text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return text if len(text) <= 90 else text[:87] + "..."


LOCK = ".lock"
_HELD: dict[str, int] = {}   # resolved path -> descriptor of a lock this process holds


def _natural(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def is_run(path) -> bool:
    return (Path(path) / "config.json").is_file()


# None: every run; else finished runs only, less these (resolved) run directories (finished_runs_only)
_FINISHED_ONLY: contextvars.ContextVar[frozenset | None] = contextvars.ContextVar("finished_only", default=None)


@contextlib.contextmanager
def finished_runs_only(leave_out=()):
    """Within the block, runs_in sees finished runs only (state done), and none of `leave_out` (run
    directories made with other settings than a design's): how a study's checks and figures read a
    design whose runs are not all done (`rotelab reproduce --finished`), so that a run still training,
    or a stale one, never enters a mean curve or a count."""
    token = _FINISHED_ONLY.set(frozenset(Path(p).resolve() for p in leave_out))
    try:
        yield
    finally:
        _FINISHED_ONLY.reset(token)


def runs_in(path, protocol: str | None = None) -> list[Path]:
    """The run directories a folder stands for: itself if it is one, else its child run directories
    (the seeds of an infoplane group, the runs of a noise ramp), in natural order; optionally only
    those of one protocol (and only finished ones inside `finished_runs_only`)."""
    path = Path(path)
    dirs = [path] if is_run(path) else sorted((p.parent for p in path.glob("*/config.json")), key=_natural)
    if protocol is not None:
        dirs = [d for d in dirs if _protocol_of(d) == protocol]
    leave_out = _FINISHED_ONLY.get()
    if leave_out is not None:
        dirs = [d for d in dirs if RunDir(d).read_status().get("state") == "done" and d.resolve() not in leave_out]
    return dirs


def _protocol_of(path: Path) -> str | None:
    try:
        return RunDir(path).read_protocol()
    except StoreError:
        return None


def find_runs(paths) -> list[RunDir]:
    """Every run directory at or below the given paths (searched recursively)."""
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise StoreError(p, f"{p} does not exist")
        configs = [p / "config.json"] if is_run(p) else sorted(p.rglob("config.json"))
        runs += [RunDir(c.parent) for c in configs if _protocol_of(c.parent) is not None]
    if not runs:
        raise StoreError(Path(paths[0]), f"no rotelab run directories under {', '.join(map(str, paths))}")
    return runs


SWEEP_RECORD = "sweep.json"   # beside a sweep's points: its axes and each point's values (sweep.record_points)


def sweep_axes(path: Path) -> dict:
    """The axis values of the sweep point a run belongs to, from the nearest folder above it with a
    sweep.json (written by `rotelab sweep` and `rotelab reproduce`); {} if none."""
    path = Path(path).resolve()
    for point, root in zip([path, *path.parents], path.parents):
        record = root / SWEEP_RECORD
        if record.is_file():
            return dict(read_json(record).get("points", {}).get(point.name, {}))
    return {}


def read_info(paths) -> list[dict]:
    """info.jsonl records of runs or of folders of runs, each tagged with the folder (`group`) it came from."""
    rows = []
    for p in map(Path, paths):
        dirs = [d for d in runs_in(p) if stored_file(d / "info.jsonl")]
        if not dirs:
            raise StoreError(p, f"{p} has no info.jsonl and no runs with one; give an infoplane run or folder")
        for d in dirs:
            rows += [{**r, "group": p.name} for r in RunDir(d).read_info()]
    return rows
