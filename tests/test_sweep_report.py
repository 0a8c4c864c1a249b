"""Sweeps (grid, naming, skip/resume, executors, failures) and the HTML report."""

import base64
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rotelab.cli import main
from rotelab.config import ConfigError
from rotelab.sweep import axis_values, load_sweep, point_name, sweep

SMALL = """
protocol = "fit"
out = "{out}"
[base]
dataset = "digits"
widths = [32]
epochs = {epochs}
lr = 0.1
hist_every = 0
checkpoint_every = 0
[axes]
corrupt = ["labels=0.0", "labels=1.0"]
seed = {{from = 0, to = 1}}
"""


def write(tmp_path, epochs=3, extra=""):
    f = tmp_path / "grid.toml"
    f.write_text(SMALL.format(out=tmp_path / "grid", epochs=epochs) + extra)
    return f


def test_grid_expansion_and_naming(tmp_path):
    protocol, points = load_sweep(write(tmp_path))
    assert protocol == "fit" and len(points) == 4
    assert [p.name for p in points] == ["corrupt-labels=0.0__seed-0", "corrupt-labels=0.0__seed-1",
                                        "corrupt-labels=1.0__seed-0", "corrupt-labels=1.0__seed-1"]
    assert points[3].config["seed"] == 1 and points[3].config["widths"] == [32]
    assert points[0].path == (tmp_path / "grid" / points[0].name).resolve()
    assert axis_values("lr", {"from": 0.1, "to": 0.3, "step": 0.1}) == [0.1, 0.2, 0.3]
    assert axis_values("p", {"from": 0.0, "to": 1.0, "num": 5}) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert point_name({"widths": [512, 512], "data_root": "a/b"}) == "widths-512,512__data_root-a_b"


@pytest.mark.parametrize("old,new,field", [('dataset = "digits"', 'dataset = "digits"\nbogus = 1', "bogus"),
                                          ("lr = 0.1", "lr = -1.0", "--lr"),
                                          ('protocol = "fit"', 'protocol = "noise"', "protocol")])
def test_bad_sweep_files(tmp_path, old, new, field):
    f = write(tmp_path)
    f.write_text(f.read_text().replace(old, new))
    with pytest.raises(ConfigError, match=field):
        load_sweep(f)


def test_local_sweep_runs_and_skips(tmp_path):
    f = write(tmp_path)
    results = sweep(f, jobs=2)
    assert [r["state"] for r in results] == ["done"] * 4
    again = sweep(f, jobs=1)
    assert [r["state"] for r in again] == ["skipped"] * 4


def test_failing_point_does_not_stop_the_grid(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text(SMALL.format(out=tmp_path / "f", epochs=2).replace(
        'corrupt = ["labels=0.0", "labels=1.0"]', 'dataset = ["cifar10", "digits"]').replace('dataset = "digits"\n', ""))
    results = sweep(f, jobs=1)
    states = {Path(r["path"]).name: r["state"] for r in results}
    assert states["dataset-cifar10__seed-0"] == "failed" and states["dataset-digits__seed-1"] == "done"
    assert "--data-root" in [r for r in results if r["state"] == "failed"][0]["error"]
    assert main(["sweep", str(f)]) == 1


@pytest.mark.slow
def test_killed_sweep_finishes_on_rerun_and_runs_nothing_twice(tmp_path):
    f = write(tmp_path, epochs=40)
    cmd = [sys.executable, "-m", "rotelab.cli", "sweep", str(f), "--jobs", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grid = tmp_path / "grid"
    deadline = time.time() + 120
    first = grid / "corrupt-labels=0.0__seed-0"
    second = grid / "corrupt-labels=0.0__seed-1" / "metrics.jsonl"
    while time.time() < deadline and not (second.is_file() and len(second.read_text().splitlines()) >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((first / "status.json").read_text())["state"] == "done"
    finished = (first / "metrics.jsonl").stat().st_mtime_ns
    results = sweep(f, jobs=1)
    assert [r["state"] for r in results] == ["skipped", "done", "done", "done"]
    assert (first / "metrics.jsonl").stat().st_mtime_ns == finished
    for d in (p for p in grid.iterdir() if p.is_dir()):   # beside them: sweep.json
        epochs = [json.loads(l)["epoch"] for l in (d / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 41)), d.name      # every point complete, no epoch twice


def test_dry_run_lists_points_with_their_state(tmp_path, capsys):
    f = write(tmp_path)
    assert main(["sweep", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("new ") == 4 and "4 points (fit)" in out
    assert not (tmp_path / "grid").exists()


def test_config_differences_names_what_a_run_computes_differently():
    from rotelab.config import FitConfig
    from rotelab.plan import config_differences
    planned = FitConfig(epochs=3, widths=[32], lr=0.1)
    saved = {**json.loads(json.dumps(planned.to_dict())), "epochs": 2, "widths": [32], "data_root": "elsewhere",
             "progress": False, "checkpoint_every": 0.0, "device": "cpu", "environment": {"torch": "x"}}
    del saved["fisher_every"]   # a run of a version before a field existed: that field is not compared
    assert config_differences(planned, saved) == ["epochs = 2 (planned: 3)"]
    saved["epochs"] = 3
    assert config_differences(planned, saved) == []


def test_a_point_made_with_other_settings_is_stale_never_skipped_nor_resumed(tmp_path, capsys):
    f = write(tmp_path, epochs=2)
    sweep(f, jobs=1)
    grid = tmp_path / "grid"
    stamp = {p: p.read_bytes() for p in grid.rglob("metrics.jsonl")}
    # bookkeeping (how often a run saves) is not a different run: the points stay done
    f.write_text(f.read_text().replace("checkpoint_every = 0", "checkpoint_every = 5"))
    assert [r["state"] for r in sweep(f, jobs=1)] == ["skipped"] * 4
    # one more epoch in the design: every point is a run of the old design, and nothing of it is lost
    f.write_text(f.read_text().replace("epochs = 2", "epochs = 3"))
    capsys.readouterr()
    assert main(["sweep", str(f), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("stale ") == 4 and printed.count("corrupt-labels=0.0__seed-0  (epochs = 2 (planned: 3))") == 1
    results = sweep(f, jobs=1)
    assert [r["state"] for r in results] == ["stale"] * 4
    assert "was made with epochs = 2 (planned: 3): it is not the planned run; move it away" in results[0]["error"]
    assert {p: p.read_bytes() for p in grid.rglob("metrics.jsonl")} == stamp
    assert main(["sweep", str(f), "--jobs", "1"]) == 1
    assert "0 failed, 4 stale (made with other settings; left as they are)" in capsys.readouterr().out
    # moved away, the point is made as planned
    first = Path(results[0]["path"])
    first.rename(tmp_path / "old-point")
    states = {Path(r["path"]).name: r["state"] for r in sweep(f, jobs=1)}
    assert states[first.name] == "done" and len((first / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_ray_executor_runs_a_two_point_grid(tmp_path):
    pytest.importorskip("ray")
    f = tmp_path / "r.toml"
    f.write_text(SMALL.format(out=tmp_path / "r", epochs=2).replace('corrupt = ["labels=0.0", "labels=1.0"]\n', ""))
    results = sweep(f, executor="ray", cpus_per_point=1)
    assert [r["state"] for r in results] == ["done", "done"]
    for r in results:
        assert json.loads((Path(r["path"]) / "status.json").read_text())["state"] == "done"


def test_ray_missing_says_how_to_install(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "ray":
            raise ModuleNotFoundError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ConfigError, match=r"pip install 'rotelab\[ray\]'"):
        sweep(write(tmp_path), executor="ray")


@pytest.mark.slow
def test_report_renders_every_figure_it_lists(tmp_path):
    f = write(tmp_path, epochs=4)
    sweep(f, jobs=1)
    assert main(["report", str(tmp_path / "grid"), "--out", str(tmp_path / "rep" / "report.html")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">', page)
    names = [n for n, _ in images]
    for fig in ("zhang_1a_loss.png", "zhang_1b_convergence.png", "zhang_1c_test_error.png"):
        assert fig in names and (tmp_path / "rep" / "report_figures" / fig).is_file()
    assert names.count("curves.png") == 4 and names.count("overlap.png") == 4
    for _, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "rep" / "report.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("run,protocol,state,corrupt,seed")
    assert "By configuration" in page and "Student's t" in page


def test_by_config_rows_give_each_configuration_its_seeds_mean_and_interval():
    from rotelab.measures.stats import mean_interval
    from rotelab.report import by_config_rows
    rows = [{"run": f"r{i}", "protocol": "fit", "state": "done", "corrupt": c, "seed": s, "epochs": 5,
             "fit_epoch": f, "test_acc": a}
            for i, (c, s, f, a) in enumerate([("labels=0.0", 0, 10, 0.9), ("labels=0.0", 1, 12, 0.8),
                                             ("labels=1.0", 0, 30, 0.1), ("labels=1.0", 1, None, 0.12),
                                             ("labels=1.0", 2, 34, 0.08)])]
    out = {r["corrupt"]: r for r in by_config_rows(rows)}
    assert out["labels=0.0"]["runs"] == 2 and out["labels=1.0"]["runs"] == 3
    assert out["labels=0.0"]["test_acc"] == pytest.approx(0.85)
    assert out["labels=1.0"]["fit_epoch"] == 32   # the run that did not fit has no fit epoch
    ci = mean_interval([0.1, 0.12, 0.08])
    assert out["labels=1.0"]["test_acc_ci95"] == pytest.approx([ci.lo, ci.hi])
    assert out["labels=1.0"]["test_acc_interval"] == "t 95%, n = 3"
    assert out["labels=0.0"]["test_acc_ci95"] == pytest.approx([0.8, 0.9])   # two seeds: their range
    assert out["labels=0.0"]["test_acc_interval"] == "range of 2, n = 2"
    assert "seed" not in out["labels=0.0"] and "train_acc" not in out["labels=0.0"]
