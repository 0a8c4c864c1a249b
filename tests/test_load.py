"""rotelab.load as a notebook uses it: numeric run fields, sweep axes, long float tables, and the
shipped analysis notebook executed in a real kernel."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rotelab
from rotelab.runs import numeric_frame
from rotelab.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]

GRID = """
protocol = "fit"
out = "{out}"
[base]
dataset = "digits"
widths = [16]
epochs = 2
lr = 0.1
hist_every = 0
progress = false
[axes]
corrupt = ["labels=0.0", "labels=0.5", "shuffled-pixels=0.25"]
variant = [{{name = "narrow", widths = [8]}}, {{name = "wide", widths = [32]}}]
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    f = tmp / "grid.toml"
    f.write_text(GRID.format(out=tmp / "grid"))
    assert [r["state"] for r in sweep(f, jobs=1)] == ["done"] * 6
    return tmp / "grid"


def test_run_fields_are_numbers_and_axes(grid):
    run = rotelab.load(grid / "corrupt-shuffled-pixels=0.25__variant-wide")
    assert run.label_corruption == 0.0 and run.pixel_corruption == "shuffled-pixels"
    assert run.pixel_fraction == 0.25 and run.seed == 0
    assert run.axes == {"corrupt": "shuffled-pixels=0.25", "variant": "wide"}
    half = rotelab.load(grid / "corrupt-labels=0.5__variant-narrow")
    assert (half.label_corruption, half.pixel_corruption, half.pixel_fraction) == (0.5, "none", 0.0)
    assert half.config["model_args"]["widths"] == [8]
    # digits are 8 x 8: 64*8 + 8 + 8*10 + 10 and 64*32 + 32 + 32*10 + 10 parameters
    assert (half.parameters, run.parameters) == (610, 2410)


def test_a_folder_gives_long_tables_with_float_columns(grid):
    runs = rotelab.load(grid)
    assert len(runs) == 6
    m = runs.metrics
    assert len(m) == 6 * 2 and set(m["run"]) == {r.path.name for r in runs}
    for col in ("label_corruption", "pixel_fraction", "train_acc_corrupted", "test_acc_corrupted"):
        assert m[col].dtype == float, col
    assert m["test_acc_corrupted"].isna().all()              # no --corrupt-test: NaN, not None
    assert m.loc[m.corrupt == "labels=0.0", "train_acc_corrupted"].isna().all()
    # a groupby mean keeps the all-NaN column instead of dropping it
    means = m.groupby("label_corruption")[["train_acc", "train_acc_corrupted"]].mean()
    assert list(means.columns) == ["train_acc", "train_acc_corrupted"] and means.index.tolist() == [0.0, 0.5]
    assert set(m["variant"]) == {"narrow", "wide"}
    final = runs.final
    assert len(final) == 6 and (final["epoch"] == 2).all() and set(final["state"]) == {"done"}
    assert final.groupby("variant").parameters.first().to_dict() == {"narrow": 610, "wide": 2410}
    run = rotelab.load(grid / "corrupt-labels=0.5__variant-wide")
    row = final[final.run == run.path.name].iloc[0]
    assert row["test_acc"] == pytest.approx(run.metrics["test_acc"].iloc[-1])


def test_summary_gives_each_group_its_mean_and_interval(grid):
    from rotelab.measures.stats import mean_interval
    runs = rotelab.load(grid)
    table = runs.summary("variant", "test_acc", "train_acc_corrupted")
    final = runs.final
    for variant in ("narrow", "wide"):
        accs = final[final.variant == variant].test_acc.to_numpy()
        row = table.loc[variant]
        assert row["runs"] == 3 and row["test_acc"] == pytest.approx(accs.mean())
        ci = mean_interval(accs)
        assert (row["test_acc_lo"], row["test_acc_hi"]) == pytest.approx((ci.lo, ci.hi))
        assert row["test_acc_n"] == 3 and row["test_acc_interval"] == "t 95%"
        assert row["train_acc_corrupted"] == pytest.approx(final[final.variant == variant].train_acc_corrupted.mean())
    two = runs.summary(["variant", "label_corruption"], "test_acc")
    assert len(two) == 4 and two["runs"].sum() == 6   # (narrow, wide) x (p = 0, 0.5; shuffled pixels at p = 0)


def test_numeric_frame_keeps_strings_and_makes_none_nan():
    df = numeric_frame([{"a": None, "b": "x", "c": 1, "d": None}, {"a": None, "b": None, "c": None, "d": 2.5}])
    assert df["a"].dtype == float and df["a"].isna().all()
    assert df["b"].dtype != float and df["b"].tolist()[0] == "x" and df["c"].dtype == float and df["d"].tolist()[1] == 2.5


def test_a_run_outside_a_sweep_has_no_axes(grid, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(grid / "corrupt-labels=0.0__variant-wide", one)
    assert rotelab.load(one).axes == {}


@pytest.mark.slow
def test_the_analysis_notebook_runs_in_a_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    (tmp_path / "examples").mkdir()
    (tmp_path / "sweeps").mkdir()
    shutil.copy(ROOT / "sweeps" / "digits-corruption.toml", tmp_path / "sweeps")
    nb = nbformat.read(ROOT / "examples" / "analysis.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path / "examples")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "15 runs: ['done']" in text and "ci95" in text
    # the interval table the notebook shows, recomputed from the runs it made
    final = rotelab.load(tmp_path / "examples" / "runs" / "digits-corruption").final
    assert sorted(final.label_corruption.unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    mean = final.groupby("label_corruption").test_acc.mean()
    assert f"{mean[1.0]:.6f}" in text
    assert mean[0.0] > mean[1.0] + 0.5
