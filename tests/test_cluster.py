"""A memorization study spread over a real multi-node Ray cluster started on this machine (a head
with no CPUs and two worker nodes, `ray.cluster_utils.Cluster`), with one worker node killed while it
trains: Ray retries its task on the other node, the run resumes from its checkpoint, and the estimates
equal a local run's; no finished model is trained again, none is lost. Bounded in time; every node it
started is stopped."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rotelab.plan import execute, plan
from rotelab.protocols.memorize import MemorizeConfig, memorize, read_matrices
from rotelab.store import RunDir


def cfg_of(**kw):
    base = dict(dataset="digits", widths=[64], epochs=40, lr=0.1, corrupt="labels=0.2", label_noise_mode="other",
                models=6, stack=1, train_fraction=0.5, cscore_fractions=[], signals=False, hist_every=0,
                checkpoint_every=0, progress=False)
    return MemorizeConfig(**{**base, **kw})


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: a worker node's processes are its raylet's children)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out += kids
        todo += kids
    return out


def finished(out) -> dict:
    return {d.name: RunDir(d) for d in sorted(out.glob("r-*")) if RunDir(d).read_status().get("state") == "done"}


@pytest.mark.slow
def test_a_node_killed_mid_study_loses_nothing(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})   # the head trains nothing
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        out = tmp_path / "ray"
        errors = []

        def run():
            try:
                execute([plan("memorize", cfg_of(), out)], "ray", 1, address=cluster.address, cpus=1)
            except BaseException as e:   # noqa: BLE001  (reported below)
                errors.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        def training(done):
            return [d for d in out.glob("r-*") if (d / "config.json").is_file() and d.name not in done]

        t0 = time.time()
        while time.time() - t0 < 240:   # two models done and another under way (not between two tasks)
            done_before = {name: run.metrics_file.stat().st_mtime_ns for name, run in finished(out).items()}
            if len(done_before) >= 2 and training(done_before):
                break
            time.sleep(0.02)
        assert 2 <= len(done_before) < 6 and training(done_before), "the node should die while models train"
        # the node dies as a machine does, every process at once: its raylet, and the workers it started
        # (left alone, a worker notices its raylet's death late under load and holds its run's lock meanwhile)
        node_processes = descendants(workers[0].all_processes["raylet"][0].process.pid)
        cluster.remove_node(workers[0], allow_graceful=False)
        for pid in node_processes:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        thread.join(timeout=300)
        assert not thread.is_alive() and not errors, errors
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    runs = finished(out)
    assert len(runs) == 6   # none lost
    for name, mtime in done_before.items():   # none finished before the kill was trained again
        assert runs[name].metrics_file.stat().st_mtime_ns == mtime
    for run in runs.values():   # each epoch once in every record
        assert [m["epoch"] for m in run.read_metrics()] == list(range(1, 41))
    memorize(cfg_of(), tmp_path / "local")
    a, b = read_matrices(out), read_matrices(tmp_path / "local")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with np.load(out / "memorization.npz") as x, np.load(tmp_path / "local" / "memorization.npz") as y:
        assert all(np.array_equal(x[k], y[k], equal_nan=True) for k in x.files)


def test_a_run_left_locked_by_a_dying_worker_is_made_again(tmp_path):
    """The race behind a node's death: Ray's retry finds the run still locked by the dying worker and
    reports it "running". Once the lock is free the run is made again; a lock a live process keeps
    (another sweep) leaves it "running"."""
    import subprocess
    import sys
    from rotelab.config import FitConfig
    from rotelab.plan import PlannedRun, _retry_orphans
    hold = ("import sys, time; from rotelab.store import RunDir; RunDir(sys.argv[1]).lock(); print('held', flush=True); "
            "time.sleep(float(sys.argv[2]))")
    made = []

    def run_units(units):
        made.extend(str(u[0].path) for u in units)
        return [{"path": str(u[0].path), "state": "done"} for u in units]

    for name, holds, grace, want in (("dying", 1.0, 30.0, "done"), ("alive", 30.0, 1.0, "running")):
        path = tmp_path / name
        proc = subprocess.Popen([sys.executable, "-c", hold, str(path), str(holds)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        work = [[PlannedRun("fit", path, FitConfig())]]
        out = _retry_orphans([{"path": str(path), "state": "running"}], work, run_units, grace=grace)
        assert out == [{"path": str(path), "state": want}] if want == "done" else out[0]["state"] == "running"
        proc.kill()
        proc.wait()
    assert made == [str(tmp_path / "dying")]
