"""Grids of runs: a sweep file is a protocol, a base config and axes; each point is one run directory.

    protocol = "fit"
    out = "runs/zhang-fig1"
    [base]
    dataset = "fashion-mnist"
    epochs = 100
    [axes]
    corrupt = ["labels=0.0", "labels=0.5", "labels=1.0"]
    seed = {from = 0, to = 2}          # inclusive integer range; {from, to, step} or {from, to, num} too

Points are named from their axis values (`corrupt-labels=0.5__seed-1`). Running a sweep again skips
finished points and resumes broken ones. Executors: `local` (processes, up to --jobs at a time) and
`ray` (one Ray task per point, on a running cluster or a local instance).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, load_config_file
from .registry import get_protocol


@dataclass
class Point:
    name: str
    path: Path
    values: dict      # the axis values of this point
    config: dict      # the full config fields


def axis_values(name: str, spec) -> list:
    """A list as it is, or {from, to[, step]} (inclusive integers) or {from, to, num} (evenly spaced)."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"axes.{name}", "is an empty list")
        return spec
    if isinstance(spec, dict) and {"from", "to"} <= set(spec):
        lo, hi = spec["from"], spec["to"]
        extra = set(spec) - {"from", "to", "step", "num"}
        numbers = [spec[k] for k in ("from", "to", "step", "num") if k in spec]
        if extra or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ConfigError(f"axes.{name}", f"a range is {{from, to[, step|num]}} of finite numbers, got {spec!r}")
        if "num" in spec:
            n = spec["num"]
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"axes.{name}", f"num must be a positive integer, got {n!r}")
            return [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [lo]
        step = spec.get("step", 1)
        if step <= 0 or hi < lo:
            raise ConfigError(f"axes.{name}", f"the range from {lo} to {hi} in steps of {step} yields no values; "
                                              "use from <= to and a positive step")
        if all(isinstance(v, int) for v in (lo, hi, step)):
            return list(range(lo, hi + 1, step))
        n = int(math.floor((hi - lo) / step + 1e-9)) + 1
        return [round(lo + i * step, 12) for i in range(n)]
    raise ConfigError(f"axes.{name}", f"needs a list or a table {{from, to[, step|num]}}, got {spec!r}")


def point_name(values: dict) -> str:
    def fmt(v):
        if isinstance(v, list):
            return ",".join(map(str, v))
        return str(v)
    return "__".join(f"{k}-{re.sub(r'[^A-Za-z0-9=.,+-]', '_', fmt(v))}" for k, v in values.items()) or "base"


def load_sweep(path, out: str | None = None) -> tuple[str, list[Point]]:
    """The protocol and the points of a sweep file; every point's config is validated."""
    spec = load_config_file(path)
    if not spec.get("out") and not out:
        raise ConfigError("--out", f"{path} names no `out` folder; add out = \"runs/name\" or pass --out")
    return sweep_points(spec, out)


def sweep_points(spec: dict, out=None) -> tuple[str, list[Point]]:
    """The protocol and the points of a sweep given as a dict (a sweep file's content)."""
    protocol = spec.get("protocol", "fit")
    proto = get_protocol(protocol) if isinstance(protocol, str) else None
    if proto is None or not proto.sweepable:
        raise ConfigError("protocol", f"a sweep cannot run protocol {protocol!r}; use a protocol that trains runs")
    unknown = set(spec) - {"protocol", "out", "base", "axes"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key of a sweep file; use protocol, out, base and axes")
    root = out or spec.get("out")
    cls = proto.config
    base = spec.get("base", {})
    axes = {k: axis_values(k, v) for k, v in spec.get("axes", {}).items()}
    names = {f.name for f in dataclasses.fields(cls)}
    # An axis whose values are tables sets several fields together (a "variant"): the table's `name`
    # names the point, its other keys are config fields.
    grouped = {k for k, v in axes.items() if all(isinstance(x, dict) for x in v)}
    for k in grouped:
        for v in axes[k]:
            if "name" not in v:
                raise ConfigError(f"axes.{k}", f"each table of a variant axis needs a `name`, got {v!r}")
    fields = list(base) + [k for k in axes if k not in grouped] + \
        [f for k in grouped for v in axes[k] for f in v if f != "name"]
    for key in fields:
        if key not in names:
            raise ConfigError(key, f"is not a field of the {protocol} config; see `rotelab {protocol} --help`")
    points = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        config = dict(base)
        for k, v in values.items():
            config.update({f: x for f, x in v.items() if f != "name"} if k in grouped else {k: v})
        cls.from_dict(config).validate()
        name = point_name({k: (v["name"] if k in grouped else v) for k, v in values.items()})
        points.append(Point(name, Path(root).resolve() / name, values, config))
    if len({p.name for p in points}) != len(points):
        raise ConfigError("axes", "two points got the same name; make the axis values distinct")
    return protocol, points


def record_points(protocol: str, points: list[Point]) -> Path | None:
    """Write OUT/sweep.json: the protocol, the axes and each point's axis values (a variant axis by its
    name), so that readers (rotelab.load) know every run's axis values. Points recorded by an earlier
    sweep into the same folder are kept."""
    from .store import SWEEP_RECORD, atomic_write_json, read_json
    if not points:
        return None
    root = points[0].path.parent
    path = root / SWEEP_RECORD
    old = read_json(path) if path.is_file() else {}
    values = {p.name: {k: (v["name"] if isinstance(v, dict) else v) for k, v in p.values.items()} for p in points}
    axes = list(dict.fromkeys([*old.get("axes", []), *points[0].values]))
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"protocol": protocol, "axes": axes, "points": {**old.get("points", {}), **values}})
    return path


def point_state(protocol: str, path: Path) -> str:
    """done, running (another process holds a run's lock), partial (has files: resume it) or new."""
    from .store import RunDir, runs_in
    proto = get_protocol(protocol)
    runs = runs_in(path)
    if not runs:
        return "new"
    if any(RunDir(r).locked_by_other() for r in runs):
        return "running"
    if len(runs) < proto.expected_runs(proto.config.from_dict(RunDir(runs[0]).read_config())):
        return "partial"
    return "done" if all(RunDir(r).read_status().get("state") == "done" for r in runs) else "partial"


def quiet(cls, config: dict) -> dict:
    """A point's config without a progress bar, where the config has one (workers share a terminal)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {**config, "progress": False} if "progress" in names else dict(config)


def run_point(protocol: str, config: dict, path: str, threads: int | None = None) -> dict:
    """Run (or resume, or skip) one point. Never raises: a failure is returned with its error."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from .store import RunLocked
    path = Path(path)
    try:
        state = point_state(protocol, path)
        if state == "done":
            return {"path": str(path), "state": "skipped"}
        proto = get_protocol(protocol)
        proto.start(proto.config.from_dict(quiet(proto.config, config)), path, keep_existing=True)
        return {"path": str(path), "state": "done"}
    except RunLocked as e:   # another sweep (or command) runs this point: never both
        return {"path": str(path), "state": "running", "pid": e.holder}
    except BaseException as e:   # a failing point must not stop the grid
        if isinstance(e, KeyboardInterrupt):
            interrupted(e)
        return {"path": str(path), "state": "failed", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}


def run_group(protocol: str, configs: list[dict], paths: list[str], threads: int | None = None) -> list[dict]:
    """New fit points that differ only in seed or corruption, trained as one batched model
    (`--vectorize-seeds`); a failure marks every point of the group failed, except a point another
    process took meanwhile: then each point goes its own way (run_point)."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from .runner import start_stack
    from .store import StoreError
    cls = get_protocol(protocol).config
    try:
        start_stack([cls.from_dict(quiet(cls, c)) for c in configs], paths, protocol=protocol)
        return [{"path": p, "state": "done"} for p in paths]
    except StoreError:   # another sweep took some of these points after they were planned (RunLocked, or
        # a run made meanwhile): nothing of the stack was written; each point goes its own way
        return [run_point(protocol, c, p, threads) for c, p in zip(configs, paths)]
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            interrupted(e)
        return [{"path": p, "state": "failed", "error": f"{type(e).__name__}: {e}"} for p in paths]


def plan(protocol: str, points: list[Point], vectorize: bool, workers: int = 1) -> list[tuple]:
    """Tasks: ("point", point) or, with vectorize, ("group", [points]) for new fit points that may
    be trained together (they differ only in the fields vectorized runs may differ in). With fewer
    groups than `workers`, groups are split evenly so that every worker trains a stack (one stack of
    a whole grid on one worker left the others idle)."""
    if not vectorize or not get_protocol(protocol).stackable:
        return [("point", p) for p in points]
    from .vectorized import PER_RUN_FIELDS, stackable
    groups, tasks = {}, []
    for p in points:
        if point_state(protocol, p.path) != "new" or not stackable(p.config):
            tasks.append(("point", p))
            continue
        key = repr(sorted((k, repr(v)) for k, v in p.config.items() if k not in PER_RUN_FIELDS))
        groups.setdefault(key, []).append(p)
    parts = -(-workers // len(groups)) if groups else 1   # per group, so that tasks >= workers
    for g in groups.values():
        k = min(parts, len(g))
        for chunk in (g[i::k] for i in range(k)):
            tasks.append(("group", chunk) if len(chunk) > 1 else ("point", chunk[0]))
    return tasks


def _submit(run, protocol, task, threads=None):
    kind, what = task
    if kind == "point":
        return run(run_point, protocol, what.config, str(what.path), threads)
    return run(run_group, protocol, [p.config for p in what], [str(p.path) for p in what], threads)


def _flatten(results) -> list[dict]:
    out = []
    for r in results:
        out += r if isinstance(r, list) else [r]
    return out


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs() -> int:
    """Parallel points that fit this machine: one per core, at most one per 2 GiB of free memory."""
    cores = usable_cores()
    try:
        free_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        free_gib = 2.0 * cores
    return max(1, min(cores, int(free_gib // 2)))


def _start_method(threads: int) -> str:
    """fork where it is safe: Linux, this process has not touched CUDA, and each worker runs torch on
    one thread (libgomp's pool does not survive a fork; torch runs one-thread work inline). Workers
    then start with torch and rotelab already imported: seconds each, a real share of a grid of
    small runs. spawn otherwise."""
    import sys
    import torch
    if sys.platform == "linux" and threads == 1 and not torch.cuda.is_initialized():
        from . import data, engine, hooks, models  # noqa: F401  (imported once, inherited)
        return "fork"
    return "spawn"


_WORKER = False   # this process is a sweep's worker


def interrupted(e: KeyboardInterrupt):
    """A point's run was interrupted (its status says so): a worker process ends here (a pool would
    otherwise wait for its next point, possibly of a sweep that is gone); elsewhere it propagates."""
    if _WORKER:
        os._exit(128 + getattr(e, "signum", 2))
    raise e


def die_with_parent(parent: int):
    """Sweep workers end with the sweep: SIGTERM ends a worker's run as interrupted (as it ends a
    command's), and on Linux the kernel sends it SIGTERM when its parent dies (however it dies), so
    no worker keeps writing points after its sweep was killed."""
    import ctypes
    import signal
    import sys
    from .runner import handle_termination
    global _WORKER
    _WORKER = True
    handle_termination()
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # the parent died before the request took effect
        os._exit(1)


def run_local(protocol: str, tasks: list[tuple], jobs: int) -> list[dict]:
    """Tasks in parallel processes (spawned, so each has its own torch), threads split among them."""
    if jobs <= 1:
        return _flatten(_submit(lambda f, *a: f(*a), protocol, t) for t in tasks)
    import concurrent.futures
    import multiprocessing
    cores = os.cpu_count() or 1
    threads = max(1, cores // jobs)
    ctx = multiprocessing.get_context(_start_method(threads))
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=die_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        futures = [_submit(pool.submit, protocol, t, threads) for t in tasks]
        try:
            return _flatten(f.result() for f in futures)
        except KeyboardInterrupt:   # SIGINT or SIGTERM: the workers end their runs as interrupted, then we go
            for proc in list(getattr(pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def run_ray(protocol: str, tasks: list[tuple], address: str | None, cpus: float, gpus: float) -> list[dict]:
    """One Ray task per point (or group) with the given resources; `address` joins a cluster, None
    starts a local one."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError("--executor", "ray is not installed; install it with: pip install 'rotelab[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        started = True
    try:
        remote = {f: ray.remote(num_cpus=cpus, num_gpus=gpus)(f) for f in (run_point, run_group)}
        refs = [_submit(lambda f, *a: remote[f].remote(*a), protocol, t, max(1, int(cpus))) for t in tasks]
        return _flatten(ray.get(refs))
    finally:
        if started:
            ray.shutdown()


def sweep(path, out: str | None = None, executor: str = "local", jobs: int | None = None,
          address: str | None = None, cpus_per_point: float = 1, gpus_per_point: float = 0,
          vectorize_seeds: bool = False) -> list[dict]:
    protocol, points = load_sweep(path, out)
    record_points(protocol, points)
    if executor == "local":
        jobs = jobs or default_jobs()
        return run_local(protocol, plan(protocol, points, vectorize_seeds, jobs), jobs)
    tasks = plan(protocol, points, vectorize_seeds)
    if executor == "ray":
        return run_ray(protocol, tasks, address, cpus_per_point, gpus_per_point)
    raise ConfigError("--executor", f"unknown executor {executor!r}; use local or ray")
