"""Plan, then execute: the one way every command, sweep and study makes runs.

A protocol's `plan(cfg, out, **inputs)` says which runs to make: a Plan of PlannedRuns (each a path
and a config; runs that may train as one stack share a key; a run may start from a checkpoint of
another). `execute(plans, ...)` makes them: new runs start, broken ones resume, finished ones are
left alone, in this process, in a pool of processes, or as Ray tasks. `replan(path)` plans a run
directory or a folder of runs again from what it recorded (OUT/plan.json), which is what --resume
does. Worker processes and their signals are handled here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, RunLocked, StaleRun, StoreError

PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class PlannedRun:
    protocol: str
    path: Path
    config: Any                    # the protocol's config object
    stack: str | None = None       # new runs of one plan with the same key train as one stack


@dataclass
class Plan:
    protocol: str
    out: Path                      # the run directory, or the folder that holds the plan's runs
    runs: list[PlannedRun]
    record: dict | None = None     # a folder's: written to OUT/plan.json, from which `replan` plans it again
    finish: Callable[[Path], Any] | None = field(default=None, compare=False)   # after its runs (a summary)

    @property
    def is_folder(self) -> bool:
        return self.record is not None


def one_run(protocol: str, cfg, out) -> Plan:
    """The plan of a protocol whose output is one run directory."""
    out = Path(out)
    return Plan(protocol, out, [PlannedRun(protocol, out, cfg)])


def plan(protocol: str, cfg, out, **inputs) -> Plan:
    """What `rotelab PROTOCOL --out OUT` would make, checked (bad config: ConfigError), nothing written."""
    from .protocol import get_protocol
    proto = get_protocol(protocol)
    return proto.plan(cfg.validate(), Path(out), **inputs)


def make(protocol: str, cfg, out, overwrite: bool = False, **inputs) -> list:
    """Plan and execute a new output in this process (what `rotelab PROTOCOL --out OUT` does):
    a non-empty `out` is refused unless `overwrite`; returns the plan's RunDirs."""
    from .store import RunDir
    p = plan(protocol, cfg, out, **inputs)
    execute([p], overwrite=overwrite, keep_existing=False)
    return [RunDir(r.path) for r in p.runs]


def replan(path) -> Plan:
    """The plan of a run directory or a folder of runs, from what it recorded: its config, its
    plan.json, or (folders of earlier versions) what its protocol reads from it."""
    from .protocol import get_protocol, protocol_of
    from .store import RunDir, StoreError, is_run, read_json, runs_in
    path = Path(path)
    if not path.is_dir():
        raise StoreError(path, f"{path} does not exist")
    if is_run(path):
        proto = protocol_of(path)
        return one_run(proto.name, proto.config.from_dict(RunDir(path).read_config()), path)
    if (path / PLAN_FILE).is_file():
        saved = read_json(path / PLAN_FILE)
        proto = get_protocol(saved["protocol"])
        return proto.plan(proto.config.from_dict(saved["config"]), path, **saved.get("inputs", {}))
    dirs = runs_in(path)
    if not dirs:
        raise StoreError(path, f"{path} holds no rotelab runs")
    proto = protocol_of(dirs[0])
    if proto.folder is not None and proto.folder.legacy_plan is not None:
        return proto.folder.legacy_plan(path)
    return Plan(proto.name, path, [PlannedRun(proto.name, Path(d), proto.config.from_dict(RunDir(d).read_config()))
                                   for d in dirs])


def folder_record(protocol: str, cfg, **inputs) -> dict:
    """What a folder's plan.json holds: enough to plan it again."""
    return {"protocol": protocol, "config": cfg.to_dict(), "inputs": inputs}


# -- the state of a planned run, and running one -------------------------------------------------

# What a run's saved config may differ in from its plan's and still be the planned run: where things
# are (data, source runs, a stage's checkpoint), where it ran, how it is shown, how often it saves,
# and which other runs its folder holds (an infoplane group's seeds).
BOOKKEEPING_FIELDS = frozenset({"data_root", "data_file", "labels_file", "download", "source", "stage2_from", "device",
                                "progress", "checkpoint_every", "save_epochs", "hist_every", "seeds"})


def config_differences(planned, saved: dict) -> list[str]:
    """The fields in which a run's saved config differs from its plan's, as "name = saved value
    (planned: value)": fields both have (a newer version's fields are not in older runs), values as
    JSON stores them, bookkeeping left out."""
    from .spec import read_model_fields
    want = json.loads(json.dumps(planned.to_dict()))
    if "model_args" in want:   # a run saved before models owned their arguments: read in today's form
        saved = read_model_fields(saved)
    return [f"{k} = {json.dumps(saved[k])} (planned: {json.dumps(v)})" for k, v in want.items()
            if k in saved and k not in BOOKKEEPING_FIELDS and _compared(k, saved[k]) != _compared(k, v)]


def _compared(field: str, value):
    """What of a field's value decides what a run computes: --remove mem:K:PATH names where the
    estimates lie (bookkeeping, as data_root), not which they are."""
    if field == "remove" and isinstance(value, str):
        return value.split(":")[:2]
    return value


def run_state(path: Path, planned=None) -> str:
    """done, running (another process holds its lock), partial (has files: resume it) or new; stale
    when its saved config differs from `planned` (a config) in what it computes (config_differences)."""
    from .store import RunDir
    run = RunDir(path)
    if not run.config_file.is_file():
        return "running" if run.locked_by_other() else ("partial" if run.has_files() else "new")
    if run.locked_by_other():
        return "running"
    if planned is not None and (config_differences(planned, run.read_config()) or changed_data(planned, run)):
        return "stale"
    return "done" if run.read_status().get("state") == "done" else "partial"


def plan_state(p: Plan) -> str:
    """done, running, stale, partial or new for a whole plan (a sweep point)."""
    states = [run_state(r.path, r.config) for r in p.runs]
    for state in ("running", "stale"):
        if state in states:
            return state
    if all(s == "done" for s in states):
        return "done"
    return "new" if all(s == "new" for s in states) else "partial"


def stale_fields(pr: PlannedRun) -> list[str]:
    """config_differences of a planned run and the config its directory saved ([] where it has none)."""
    from .store import RunDir
    run = RunDir(pr.path)
    return config_differences(pr.config, run.read_config()) + changed_data(pr.config, run) if run.config_file.is_file() else []


def changed_data(planned, run) -> list[str]:
    """The files a run read (a file source, a labels file) as they differ now from its record."""
    recorded = run.read_data_record()
    if not recorded or not hasattr(planned, "dataset"):   # a noise ramp reads its source run's data
        return []
    from .data import data_differences
    return data_differences(planned, recorded)


def described_state(p: Plan) -> str:
    """plan_state, and for a stale plan the first field that differs (what --dry-run prints)."""
    state = plan_state(p)
    if state == "stale":
        r, diffs = next((r, d) for r in p.runs for d in [stale_fields(r)] if d)
        which = "" if r.path == p.out else f"{r.path.name}: "
        return f"stale    {p.out}  ({which}{diffs[0]})"
    return f"{state:8s} {p.out}"


def check_not_stale(pr: PlannedRun):
    """A run directory made with other settings than its plan's is never resumed nor counted done."""
    diffs = stale_fields(pr)
    if diffs:
        more = f" and {len(diffs) - 1} more field{'s' * (len(diffs) > 2)}" if len(diffs) > 1 else ""
        raise StaleRun(pr.path, f"{pr.path} was made with {diffs[0]}{more}: it is not the planned run; "
                                f"move it away to make the planned one, or plan it as it was made")


def start_or_resume(pr: PlannedRun) -> str:
    """Make one planned run: resume it if it has begun, leave it if it is done, else start it.
    Returns "skipped" or "done"; raises what the run raises (StaleRun for a stale one)."""
    from .protocol import get_protocol
    from .runner import DISPLAY_FIELDS, resume, start_one
    from .store import RunDir
    if RunDir(pr.path).config_file.is_file():
        check_not_stale(pr)
        if RunDir(pr.path).read_status().get("state") == "done":
            return "skipped"
        resume(pr.path, {k: getattr(pr.config, k) for k in DISPLAY_FIELDS if hasattr(pr.config, k)})
        return "done"
    start_one(get_protocol(pr.protocol), pr.config, pr.path, keep_existing=True)
    return "done"


def start_stack_or_none(runs: list[PlannedRun]) -> bool:
    """Start new runs as one stack, or resume begun ones as one; False (nothing written) where they
    cannot be (another process took some of them after they were planned, or their checkpoints are
    of different epochs), so that each goes its own way. Raises what the stack raises."""
    from .runner import resume_stack, start_stack
    states = {run_state(r.path, r.config) for r in runs}
    try:
        if states == {"new"}:
            start_stack([r.config for r in runs], [r.path for r in runs], protocol=runs[0].protocol)
            return True
        return states == {"partial"} and resume_stack([r.path for r in runs]) is not None
    except (StoreError, RunLocked):
        return False


def _failed(path, e: BaseException) -> dict:
    return {"path": str(path), "state": "failed", "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc()}


def run_unit(runs: list[PlannedRun], threads: int | None = None) -> list[dict]:
    """Make one unit of a plan: a run, or new runs trained as one stack. Never raises: each run's
    result is a dict (path, state: done, skipped, running elsewhere, stale or failed with its error)."""
    if threads:
        import torch
        torch.set_num_threads(threads)
    if len(runs) > 1:
        try:
            if start_stack_or_none(runs):
                return [{"path": str(r.path), "state": "done"} for r in runs]
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                interrupted(e)
            return [_failed(r.path, e) for r in runs]
    out = []
    for r in runs:
        try:
            out.append({"path": str(r.path), "state": start_or_resume(r)})
        except RunLocked as e:   # another sweep (or command) runs it: never both
            out.append({"path": str(r.path), "state": "running", "pid": e.holder})
        except StaleRun as e:   # made with other settings: left as it is
            out.append({"path": str(r.path), "state": "stale", "error": str(e)})
        except BaseException as e:   # a failing run must not stop the others
            if isinstance(e, KeyboardInterrupt):
                interrupted(e)
            out.append(_failed(r.path, e))
    return out


# -- from plans to units ---------------------------------------------------------------------------

def units(plans: list[Plan], vectorize: bool = False, workers: int = 1) -> list[list[PlannedRun]]:
    """The units of work: new runs of a plan that share a stack key train together; with `vectorize`,
    so do new single runs of different plans (sweep points) that may be stacked (they differ only
    in the fields a stack lets differ), split so that every worker gets a stack."""
    from .protocol import get_protocol
    out, across = [], {}
    for p in plans:
        keyed: dict[str, list[PlannedRun]] = {}
        for r in p.runs:
            state = run_state(r.path, r.config)
            new = state == "new"
            if r.stack is not None and state in ("new", "partial"):   # begun runs of a stack resume as one
                keyed.setdefault(f"{state} {r.stack}", []).append(r)
            elif vectorize and new and len(p.runs) == 1 and get_protocol(r.protocol).stackable:
                from .vectorized import PER_RUN_FIELDS, stackable
                config = r.config.to_dict()
                if stackable(config):
                    key = repr((r.protocol, sorted((k, repr(v)) for k, v in config.items() if k not in PER_RUN_FIELDS)))
                    across.setdefault(key, []).append(r)
                else:
                    out.append([r])
            else:
                out.append([r])
        out += list(keyed.values())
    parts = -(-workers // len(across)) if across else 1   # per group, so that units >= workers
    for group in across.values():
        k = min(parts, len(group))
        out += [group[i::k] for i in range(k)]
    return out


def prepare(plans: list[Plan], overwrite: bool = False, keep_existing: bool = True, vectorize: bool = False):
    """Before any run starts: a new output must be empty (or is cleared with `overwrite`); every
    distinct config of a folder's new runs is built once, so bad input writes nothing; each folder's
    plan.json is written."""
    from .protocol import get_protocol
    from .store import RunDir, atomic_write_json
    for p in plans:
        if overwrite and p.out.is_dir():
            RunDir.check_new(p.out, overwrite=True)
        elif not keep_existing:
            RunDir.check_new(p.out)
        proto = get_protocol(p.protocol)
        if not p.is_folder and not (vectorize and proto.stackable):
            continue
        built = set()
        for r in p.runs:
            key = repr(sorted((k, repr(v)) for k, v in r.config.to_dict().items() if k != "seed"))
            if key not in built and run_state(r.path) == "new":
                loop = proto.build_loop(r.config, RunDir(p.out / "probe"))   # bad data, model or source raise here
                if (vectorize and proto.stackable) or r.stack is not None:
                    from .vectorized import check_stackable_model
                    check_stackable_model(loop)   # a model with dropout is refused before any run starts
                built.add(key)
    for p in plans:
        if overwrite and p.out.is_dir():
            RunDir(p.out).clear()
        if p.is_folder:
            p.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(p.out / PLAN_FILE, p.record)


def execute(plans: list[Plan], executor: str = "inline", jobs: int = 1, overwrite: bool = False,
            keep_existing: bool = True, vectorize: bool = False, address: str | None = None,
            cpus: float = 1, gpus: float | None = None) -> list[dict]:
    """Make every planned run. `inline` runs in this process and raises what a run raises (a
    command); `local` runs units in up to `jobs` processes and `ray` as Ray tasks, where a failed
    run is reported in its result and the others go on (sweeps, studies). Returns one result per
    run: path and state (done, skipped, running elsewhere, failed with its error)."""
    prepare(plans, overwrite, keep_existing, vectorize)
    work = units(plans, vectorize, jobs if executor == "local" else 1)
    if executor == "inline":
        results = []
        for unit in work:   # a command: what a run raises reaches the user as it is (bad input: exit 2)
            if len(unit) > 1 and start_stack_or_none(unit):
                results += [{"path": str(r.path), "state": "done"} for r in unit]
            else:
                results += [{"path": str(r.path), "state": start_or_resume(r)} for r in unit]
    elif executor == "local":
        results = run_local(work, jobs)
    elif executor == "ray":
        results = run_ray(work, address, cpus, gpus)
    else:
        raise ConfigError("--executor", f"unknown executor {executor!r}; use local or ray")
    for p in plans:
        if p.finish is not None and all(run_state(r.path, r.config) == "done" for r in p.runs):
            p.finish(p.out)
    return results


# -- executors ---------------------------------------------------------------------------------------

def _flatten(results) -> list[dict]:
    return [r for rs in results for r in rs]


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs() -> int:
    """Parallel units that fit this machine: one per core, at most one per 2 GiB of free memory."""
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


_WORKER = False   # this process is a pool's worker


def interrupted(e: KeyboardInterrupt):
    """A run was interrupted (its status says so): a worker process ends here (a pool would otherwise
    wait for its next unit, possibly of a sweep that is gone); elsewhere it propagates."""
    if _WORKER:
        os._exit(128 + getattr(e, "signum", 2))
    raise e


def die_with_parent(parent: int):
    """Workers end with their parent: SIGTERM ends a worker's run as interrupted (as it ends a
    command's), and on Linux the kernel sends it SIGTERM when its parent dies (however it dies), so
    no worker keeps writing runs after its sweep was killed."""
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


def run_local(work: list[list[PlannedRun]], jobs: int) -> list[dict]:
    """Units in up to `jobs` processes, the cores' threads split among them; one job: this process."""
    if jobs <= 1:
        return _flatten(run_unit(u) for u in work)
    import concurrent.futures
    import multiprocessing
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context(_start_method(threads))
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=die_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(run_unit, u, threads) for u in work]
        try:
            return _flatten(f.result() for f in futures)
        except KeyboardInterrupt:   # SIGINT or SIGTERM: the workers end their runs as interrupted, then we go
            for proc in list(getattr(pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def gpu_share(requested: float | None, devices: set[str], cluster_gpus: float) -> float:
    """The GPUs each point's Ray task asks for. Ray hides the GPUs from a task that asks for none
    (CUDA_VISIBLE_DEVICES=""), and --device auto then trains on the CPU without a word; so by default
    (requested None) a point gets one GPU wherever the cluster has GPUs and its device is not cpu. A
    point that must run on CUDA with no GPU share, or on a cluster without GPUs, is one error."""
    cuda = any(d.startswith("cuda") for d in devices)
    if requested is None:
        if cuda and cluster_gpus <= 0:
            raise ConfigError("--device", "the Ray cluster has no GPUs for --device cuda; use --device auto or cpu, "
                                          "or start the cluster's nodes with their GPUs")
        return 1.0 if cluster_gpus > 0 and any(d != "cpu" for d in devices) else 0.0
    if requested <= 0 and cuda:
        raise ConfigError("--gpus-per-point", "--device cuda needs a GPU share for each point (Ray hides the GPUs "
                                              "from a task without one); give --gpus-per-point 1, or a fraction "
                                              "such as 0.25 to share a GPU")
    return requested


def run_ray(work: list[list[PlannedRun]], address: str | None, cpus: float, gpus: float | None) -> list[dict]:
    """One Ray task per unit with the given resources (`gpus` None: gpu_share's default); `address`
    joins a cluster, None starts a local one."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError("--executor", "ray is not installed; install it with: pip install 'rotelab[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        started = True
    try:
        devices = {str(getattr(r.config, "device", "auto")) for unit in work for r in unit}
        gpus = gpu_share(gpus, devices, float(ray.cluster_resources().get("GPU", 0)))
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_unit)
        results = _flatten(ray.get([remote.remote(u, max(1, int(cpus))) for u in work]))
        return _retry_orphans(results, work, lambda units: _flatten(ray.get(
            [remote.remote(u, max(1, int(cpus))) for u in units])))
    finally:
        if started:
            ray.shutdown()


def _retry_orphans(results: list[dict], work: list[list[PlannedRun]], run_units, grace: float = 60.0) -> list[dict]:
    """When a node dies, Ray runs its task again elsewhere, but the dying node's worker may still hold
    a run's lock for a moment: the retry then finds the run "running" and leaves it. Such runs are made
    again once their lock is free (polled for up to `grace` seconds); a run another live process holds
    (a second sweep) stays "running"."""
    import time
    by_path = {str(r.path): r for unit in work for r in unit}
    waiting = [res["path"] for res in results if res.get("state") == "running" and res["path"] in by_path]
    if not waiting:
        return results
    from .store import RunDir
    deadline = time.monotonic() + grace
    while any(RunDir(p).locked_by_other() for p in waiting) and time.monotonic() < deadline:
        time.sleep(0.5)
    freed = [p for p in waiting if not RunDir(p).locked_by_other()]
    if not freed:
        return results
    again = {res["path"]: res for res in run_units([[by_path[p]] for p in freed])}
    return [again.get(res["path"], res) for res in results]


def replace_config(pr: PlannedRun, **changes) -> PlannedRun:
    """The planned run with config fields changed (e.g. no progress bar in workers)."""
    return dataclasses.replace(pr, config=dataclasses.replace(pr.config, **changes))
