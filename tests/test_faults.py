"""What a user sees when a run ends early: signals, a full disk, damaged checkpoints, a point that
another sweep runs. Every case ends in one line, an honest status.json and a run that resumes."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import strip_times
from rotelab.cli import main
from rotelab.store import RunDir

FAST = ["--dataset", "digits", "--widths", "32", "--lr", "0.05", "--no-progress", "--hist-every", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def metrics(path: Path) -> list[dict]:
    return strip_times(RunDir(path).read_metrics())


def epochs_written(path: Path) -> int:
    m = path / "metrics.jsonl"
    return len(m.read_text().splitlines()) if m.is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_as_interrupted_and_it_resumes_equal(tmp_path, sig):
    """SIGTERM (timeout, docker stop, schedulers) and SIGINT: status "interrupted" at the epoch a
    resume starts from, one line naming the command that continues, and the resumed run equals an
    uninterrupted one."""
    args = ["fit", *FAST, "--epochs", "60", "--save-epochs", "4"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    # a suite started in the background (`cmd &`) ignores SIGINT, and so would the child: restore it
    proc = subprocess.Popen([sys.executable, "-m", "rotelab.cli", *args, "--checkpoint-every", "3600",
                             "--out", str(cut)], env=ENV, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while epochs_written(cut) < 8 and time.time() - t0 < 120:
        time.sleep(0.01)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + sig
    assert err.strip().splitlines() == [f"rotelab: interrupted ({signal.Signals(sig).name}); continue with "
                                        f"`rotelab fit --resume {cut}`"]
    status = json.loads((cut / "status.json").read_text())
    # the checkpoint of --save-epochs 4 is the last one on disk (the interval is an hour)
    assert status["state"] == "interrupted" and status["epochs_completed"] == 4
    assert epochs_written(cut) > 4
    assert main(["fit", "--resume", str(cut), "--no-progress"]) == 0   # a display flag is fine on resume
    assert metrics(cut) == metrics(tmp_path / "full")


def test_a_full_disk_ends_in_one_line_a_failed_status_and_no_temporary_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst, *a, **kw):   # the third checkpoint finds the disk full
        if str(dst).endswith("last.pt"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)
    monkeypatch.setattr(os, "replace", replace)
    assert main(["fit", *FAST, "--epochs", "6", "--checkpoint-every", "0", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0] and "No space left on device (ENOSPC)" in err[0]
    assert f"`rotelab fit --resume {out}`" in err[0]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["epochs_completed"] == 2 and "ENOSPC" not in status["error"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["fit", "--resume", str(out)]) == 0
    assert [m["epoch"] for m in metrics(out)] == list(range(1, 7))


def test_a_damaged_last_checkpoint_falls_back_to_the_newest_kept_one(tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["fit", *FAST, "--epochs", "8", "--save-epochs", "3,5", "--checkpoint-every", "0"]
    assert main(args + ["--out", str(full)]) == 0
    assert main(args + ["--epochs", "6", "--out", str(cut)]) == 0
    # a run of 8 epochs cut at 6: continue it as if it had been killed, with a truncated last.pt
    cfg = json.loads((cut / "config.json").read_text())
    (cut / "config.json").write_text(json.dumps({**cfg, "epochs": 8}))
    status = json.loads((cut / "status.json").read_text())
    (cut / "status.json").write_text(json.dumps({**status, "state": "running"}))
    last = cut / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["fit", "--resume", str(cut)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0] and "resuming from checkpoints/epoch_0005.pt (epoch 5)" in err[0]
    assert metrics(cut) == metrics(full)


def test_a_damaged_kept_checkpoint_is_noticed(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["fit", *FAST, "--epochs", "4", "--save-epochs", "2", "--checkpoint-every", "0",
                 "--out", str(out)]) == 0
    kept = out / "checkpoints" / "epoch_0002.pt"
    kept.write_bytes(kept.read_bytes()[:-10])
    status = json.loads((out / "status.json").read_text())
    (out / "status.json").write_text(json.dumps({**status, "state": "running"}))
    capsys.readouterr()
    assert main(["fit", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "epoch_0002.pt is damaged" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_on_a_sweep_names_the_sweeps_own_command(tmp_path, capsys, monkeypatch):
    import rotelab.plan as plan_module
    grid = tmp_path / "g.toml"
    grid.write_text(f'protocol = "fit"\nout = "{tmp_path / "g"}"\n[base]\ndataset = "digits"\nepochs = 1\n'
                    '[axes]\nseed = [0, 1]\n')

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(plan_module, "run_local", interrupted)
    assert main(["sweep", str(grid), "--jobs", "2"]) == 130
    assert capsys.readouterr().err.strip() == (f"rotelab: interrupted (SIGINT); continue with "
                                               f"`rotelab sweep {grid} --jobs 2`")


@pytest.mark.slow
def test_a_point_another_process_runs_is_reported_as_running_not_failed(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(f'protocol = "fit"\nout = "{tmp_path / "g"}"\n[base]\ndataset = "digits"\nepochs = 2\n'
                    'widths = [16]\nhist_every = 0\n[axes]\nseed = [0, 1]\n')
    busy = tmp_path / "g" / "seed-1"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rotelab.store import RunDir; "
                               f"RunDir({str(busy)!r}).lock(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["sweep", str(grid), "--jobs", "1"]) == 0
        out = capsys.readouterr().out
        assert f"running  {busy}" in out and "failed" not in out.replace("0 failed", "")
        assert f"another process (PID {holder.pid}) is running 1 of these points" in out
        assert f"tail --pid={holder.pid}" in out
        assert not (busy / "config.json").exists()           # nothing written into the point it runs
        assert RunDir(tmp_path / "g" / "seed-0").read_status()["state"] == "done"
    finally:
        holder.kill()
        holder.wait()


def test_writes_together_rename_in_order_at_the_end_and_stop_at_the_first_failure(tmp_path, monkeypatch):
    """A block's atomic writes: nothing is in place until its end, reads through the store see them,
    a nested block joins the outer one; at the end each file is renamed after its own fsync, in the
    order written, and a failed fsync stops there as the writes one by one would have."""
    import threading
    from rotelab.store import atomic_write_bytes, atomic_write_json, current_text, writes_together
    a, b, c = (tmp_path / n for n in ("a.json", "b.json", "c.json"))
    atomic_write_json(a, {"v": 0})
    with writes_together():
        atomic_write_json(a, {"v": 1})
        with writes_together():   # joins
            atomic_write_json(b, {"v": 1})
        atomic_write_json(a, {"v": 2})   # the same file twice: the later one wins
        assert json.loads(a.read_text()) == {"v": 0} and not b.exists()   # nothing in place yet
        assert json.loads(current_text(a)) == {"v": 2}                 # but the store reads it
        other = threading.Thread(target=atomic_write_json, args=(c, {"v": 1}))   # another thread: at once
        other.start()
        other.join()
        assert json.loads(c.read_text()) == {"v": 1}
    assert json.loads(a.read_text()) == {"v": 2} and json.loads(b.read_text()) == {"v": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    real_fsync, synced = os.fsync, []

    def fsync(fd):   # b's data cannot be made durable
        name = os.readlink(f"/proc/self/fd/{fd}")
        synced.append(name)
        if ".b.json." in name:
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as caught:
        with writes_together():
            for path in (a, b, c):
                atomic_write_bytes(path, b"3")
    assert caught.value.errno == errno.EIO and caught.value.filename == str(b)
    assert a.read_bytes() == b"3" and json.loads(b.read_text()) == {"v": 1} and json.loads(c.read_text()) == {"v": 1}
    assert len(synced) == 3 and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_stack_makes_its_runs_durable_in_one_wait_per_epoch(tmp_path, monkeypatch):
    """Four stacked runs: every file they write still ends in place (resume reads it), and the fsyncs
    of one epoch's closing run side by side (one group per step, not one wait per file)."""
    from rotelab.config import FitConfig
    from rotelab.runner import start_stack
    import rotelab.store as store
    groups = []
    real = store._WriteGroup.commit

    def commit(self):
        groups.append(len(self.pending))
        return real(self)
    monkeypatch.setattr(store._WriteGroup, "commit", commit)
    cfgs = [FitConfig(dataset="digits", widths=[16], epochs=3, seed=s, progress=False, hist_every=0,
                      checkpoint_every=0) for s in range(4)]
    runs = start_stack(cfgs, [tmp_path / f"s{s}" for s in range(4)])
    for r in runs:
        assert r.read_status()["state"] == "done" and r.read_status()["epochs_completed"] == 3
        assert r.load_checkpoint()["epoch"] == 3 and set(r.checkpoint_manifest()) == {"last.pt"}
        assert [m["epoch"] for m in r.read_metrics()] == [1, 2, 3]
    # creation (config and status of 4 runs), then 3 epochs each persisting 4 runs' files at once
    assert groups[0] == 8 and len([g for g in groups if g >= 4 * 3]) == 3, groups
    assert not [p for p in tmp_path.rglob("*.tmp")]
