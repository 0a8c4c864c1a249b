"""One writer per run directory: a lock held by the writing process and released by the OS when it
dies; sweep workers die with their sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rotelab.store import RunDir

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rotelab(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "rotelab.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(cond, timeout=120):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.1)


def running(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and len((path / "metrics.jsonl").read_text().splitlines()) >= 2


FIT = ["fit", "--dataset", "digits", "--widths", "32", "--epochs", "100", "--lr", "0.05", "--no-progress",
       "--hist-every", "0", "--checkpoint-every", "0"]


def test_lock_in_process(tmp_path):
    a, b = RunDir(tmp_path / "r"), RunDir(tmp_path / "r")
    a.lock()
    a.lock()   # held by this process: idempotent
    assert not b.locked_by_other()
    code = f"from rotelab.store import RunDir\nRunDir({str(tmp_path / 'r')!r}).lock()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and f"PID {os.getpid()}" in done.stderr
    a.unlock()
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0   # released


LONG = 800   # long enough that the first run is still writing when both second writers have given up


def test_second_writer_stops_and_first_finishes(tmp_path):
    out = tmp_path / "run"
    first = rotelab(*FIT, "--epochs", LONG, "--checkpoint-every", 1, "--out", out)
    wait_for(lambda: running(out))
    seconds = [rotelab(*FIT, "--out", out, "--overwrite"), rotelab("fit", "--resume", out)]
    for second in seconds:
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert err.count("\n") == 1 and f"PID {first.pid}" in err and "Traceback" not in err
    assert first.poll() is None, "the first run ended before the second writers tried; make it longer"
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert len(RunDir(out).read_metrics()) == LONG
    assert json.loads((out / "status.json").read_text())["state"] == "done"


def test_sigkill_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    first = rotelab(*FIT, "--out", out)
    wait_for(lambda: running(out))
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not RunDir(out).locked_by_other()
    again = rotelab("fit", "--resume", out)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert [m["epoch"] for m in RunDir(out).read_metrics()] == list(range(1, 101))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead, only not yet reaped
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="workers die with the sweep through Linux's PDEATHSIG")
def test_sweep_workers_die_with_the_sweep(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'protocol = "fit"\nout = "{tmp_path / "g"}"\n[base]\ndataset = "digits"\nwidths = [32]\n'
                    'epochs = 150\nlr = 0.05\nhist_every = 0\ncheckpoint_every = 0\n[axes]\nseed = [0, 1, 2]\n')
    sweep = rotelab("sweep", grid, "--jobs", "2", start_new_session=True)
    wait_for(lambda: sum(running(p) for p in (tmp_path / "g").glob("*")) >= 1 if (tmp_path / "g").is_dir() else False)
    workers = {int((p / ".lock").read_text()) for p in (tmp_path / "g").glob("*") if (p / ".lock").is_file()
               and (p / ".lock").read_text().strip()}
    assert workers and sweep.pid not in workers
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    try:   # every worker gone within 5 s
        wait_for(lambda: not [w for w in workers if alive(w)], timeout=5)
    except TimeoutError:
        pytest.fail(f"workers {[w for w in workers if alive(w)]} outlived their sweep by 5 s")
    # and a rerun finishes every point with every epoch (nothing races it)
    again = rotelab("sweep", grid, "--jobs", "2")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    for p in (tmp_path / "g").glob("seed-*"):
        assert [m["epoch"] for m in RunDir(p).read_metrics()] == list(range(1, 151))


RACES = int(os.environ.get("ROTELAB_SWEEP_RACES", "8"))   # 20 were run for the record; 8 keep the suite short


@pytest.mark.parametrize("vectorize", [False, True])
def test_racing_sweeps_never_report_a_point_failed(tmp_path, vectorize, monkeypatch):
    """Two sweeps of one grid into one folder, the second started at a random offset: each point is made
    once, by one of them; the other skips it or reports it running elsewhere, never failed."""
    import multiprocessing
    import random
    import rotelab.data
    from rotelab.sweep import sweep
    load_data = rotelab.data.load_data

    def slow_load(cfg):   # a fresh worker's first load pays its imports (1.7 s measured): a window to race in
        time.sleep(random.uniform(0, 0.5))
        return load_data(cfg)
    monkeypatch.setattr(rotelab.data, "load_data", slow_load)
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    for race in range(-1, RACES):   # race -1, one sweep alone: the imports are paid once, before the forks
        out = tmp_path / f"g{race}"
        grid = tmp_path / f"grid{race}.toml"
        grid.write_text(f'protocol = "fit"\nout = "{out}"\n[base]\ndataset = "digits"\nwidths = [16]\nepochs = 3\n'
                        'lr = 0.05\nhist_every = 0\nprogress = false\n[axes]\nseed = [0, 1]\n'
                        'corrupt = ["labels=0.0", "labels=1.0"]\n')
        results = ctx.Queue()

        def go(delay):
            time.sleep(delay)
            results.put(sweep(grid, jobs=2, vectorize_seeds=vectorize))

        if race < 0:
            sweep(grid, jobs=1)
            continue
        offset = rng.uniform(0, 1.5)
        procs = [ctx.Process(target=go, args=(d,)) for d in (0.0, offset)]
        for p in procs:
            p.start()
        states = [r for _ in procs for r in results.get(timeout=300)]
        for p in procs:
            p.join()
        failed = [r for r in states if r["state"] == "failed"]
        assert not failed, f"race {race} (offset {offset:.2f} s): {failed[0]}"
        assert {r["state"] for r in states} <= {"done", "skipped", "running"}
        points = sorted(p for p in out.iterdir() if p.is_dir())
        assert len(points) == 4
        for p in points:   # every point whole: one run, every epoch once, done
            assert [m["epoch"] for m in RunDir(p).read_metrics()] == [1, 2, 3]
            assert RunDir(p).read_status()["state"] == "done"
