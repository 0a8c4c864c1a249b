"""The contract every registered protocol keeps, checked on each protocol's own `example` run (as
scikit-learn's estimator checks run over every estimator): a new protocol gets these tests by
registering. Through the real command, in subprocesses:

- killed (SIGKILL) mid-run, `--resume` finishes equal to an uninterrupted run;
- SIGTERM ends it as "interrupted" at the epoch its checkpoint holds, and it resumes equal;
- a second writer is refused and changes nothing;
- plotting a finished run imports no torch;

and, cheaply (the fast subset, no run made): its config survives a round trip through its record,
and a bad config writes nothing.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rotelab.cli import main
from rotelab.protocol import load_protocols
from rotelab.store import RunDir, runs_in

PROTOCOLS = sorted(name for name, p in load_protocols().items() if p.example)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def rotelab(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "rotelab.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def metrics(out: Path) -> dict:
    """Every run's metrics under `out`, without wall-clock fields."""
    return {str(d.relative_to(out)): [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in RunDir(d).read_metrics()]
            for d in runs_in(out)}


def lines(out: Path) -> int:
    return sum(len((d / "metrics.jsonl").read_text().splitlines()) for d in [out, *out.rglob("*")]
               if (d / "metrics.jsonl").is_file())


def digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module", params=PROTOCOLS)
def case(request, tmp_path_factory):
    """A protocol's example: its command line, and one uninterrupted run of it."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    fields, extra = load_protocols()[name].example(tmp)
    cfg = tmp / "example.json"
    cfg.write_text(json.dumps(fields))
    args = [name, "--config", cfg, *extra]
    full = tmp / "full"
    proc = rotelab(*args, "--out", full)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return {"name": name, "tmp": tmp, "args": args, "full": full, "total": lines(full)}


def cut(case, sig, name) -> Path:
    """Start the example and send `sig` once a few epochs are on disk, well before its end."""
    out = case["tmp"] / name
    proc = rotelab(*case["args"], "--out", out)
    t0 = time.time()
    while lines(out) < 3 and time.time() - t0 < 120:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert lines(out) < case["total"], "the signal should land mid-run"
    case["err"], case["rc"] = err, proc.returncode
    return out


@pytest.mark.slow
def test_killed_then_resumed_equals_an_uninterrupted_run(case):
    out = cut(case, signal.SIGKILL, "killed")
    r = rotelab(case["name"], "--resume", out)
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert metrics(out) == metrics(case["full"])


@pytest.mark.slow
def test_sigterm_ends_as_interrupted_and_resumes_equal(case):
    out = cut(case, signal.SIGTERM, "terminated")
    assert case["rc"] == 128 + signal.SIGTERM
    assert case["err"].strip().splitlines()[-1] == (f"rotelab: interrupted (SIGTERM); continue with "
                                                   f"`rotelab {case['name']} --resume {out}`")
    statuses = [RunDir(d).read_status() for d in runs_in(out)]
    assert "interrupted" in {s["state"] for s in statuses} and "running" not in {s["state"] for s in statuses}
    for d, s in zip(runs_in(out), statuses):
        if s["state"] == "interrupted":   # where its resume starts: the checkpoint's epoch
            import torch
            assert s["epochs_completed"] == torch.load(RunDir(d).last_checkpoint, weights_only=False)["epoch"]
    r = rotelab(case["name"], "--resume", out, "--no-progress")
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert metrics(out) == metrics(case["full"])


@pytest.mark.parametrize("name", PROTOCOLS)
def test_the_example_config_survives_a_round_trip(name, tmp_path):
    proto = load_protocols()[name]
    fields, _ = proto.example(tmp_path)
    cfg = proto.config(**fields).validate()
    again = proto.config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("name", PROTOCOLS)
def test_a_bad_config_writes_nothing(name, tmp_path, capsys):
    fields, extra = load_protocols()[name].example(tmp_path)
    good = tmp_path / "example.json"
    good.write_text(json.dumps(fields))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no_such_field": 1}))
    out = tmp_path / "never"
    assert main([name, "--config", str(good), *map(str, extra), "--config", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--no-such-field" in err
    assert not out.exists()


@pytest.mark.slow
def test_a_second_writer_is_refused_and_changes_nothing(case, capsys):
    target = runs_in(case["full"])[0]
    before = digest(case["full"])
    holder = subprocess.Popen([sys.executable, "-c", "import time; from rotelab.store import RunDir; "
                               f"RunDir({str(target)!r}).lock(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main([*map(str, case["args"]), "--out", str(case["full"]), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert digest(case["full"]) == before


@pytest.mark.slow
def test_plotting_a_finished_run_imports_no_torch(case):
    code = (f"import sys; from rotelab.cli import main; rc = main(['plot', {str(case['full'])!r}]); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
