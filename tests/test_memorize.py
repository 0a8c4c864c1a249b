"""rotelab memorize: K subset models, their raw matrices, the estimates, stacking, resume, bad input."""

import dataclasses
import json

import numpy as np
import pytest

from rotelab.cli import main
from rotelab.measures.examples import unpack
from rotelab.plan import execute, plan
from rotelab.protocols.memorize import MemorizeConfig, memorize, read_estimates, read_matrices
from rotelab.runs import Run
from rotelab.store import RunDir


def cfg_of(**kw):
    base = dict(dataset="digits", widths=[64], epochs=50, lr=0.1, corrupt="labels=0.2", label_noise_mode="other",
                models=6, stack=3, train_fraction=0.5, cscore_fractions=[0.3], hist_every=0, checkpoint_every=0,
                progress=False)
    return MemorizeConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("mem") / "m"
    memorize(cfg_of(), out)
    return out


def test_matrices_are_the_runs_own_records(folder):
    mats = read_matrices(folder)
    for r in (0.5, 0.3):
        seen = mats[f"r-{r:g}/seen"]
        assert seen.shape == (6, 1438) and mats[f"r-{r:g}/test_correct"].shape == (6, 359)
        assert np.all(seen.sum(1) == round(r * 1438))   # each model trained on exactly its fraction
        for k in range(6):
            ex = RunDir(folder / f"r-{r:g}_model-{k:04d}").read_examples()
            assert np.array_equal(seen[k], ex["train_seen"])
            assert np.array_equal(mats[f"r-{r:g}/train_correct"][k], unpack(ex["train_correct"][-1], 1438))
    assert not np.array_equal(mats["r-0.5/seen"][0], mats["r-0.5/seen"][1])   # each model its own subset
    # one corruption for all models: the labels every run used are the same
    used = [RunDir(folder / f"r-0.5_model-{k:04d}").read_examples()["train_labels_used"] for k in range(6)]
    assert all(np.array_equal(u, used[0]) for u in used)


def test_estimates_recomputed_by_hand(folder):
    mats, table = read_matrices(folder), read_estimates(folder)
    seen, right = mats["r-0.5/seen"], mats["r-0.5/train_correct"]
    for i in (0, 17, 400, 1437):   # the definition, model by model
        inside = [right[k, i] for k in range(6) if seen[k, i]]
        outside = [right[k, i] for k in range(6) if not seen[k, i]]
        want = np.mean(inside) - np.mean(outside) if inside and outside else np.nan
        assert table["mem"][i] == pytest.approx(want, nan_ok=True)
        held = [mats["r-0.3/train_correct"][k, i] for k in range(6) if not mats["r-0.3/seen"][k, i]]
        assert table["cscore_0.3"][i] == pytest.approx(np.mean(held) if held else np.nan, nan_ok=True)
    assert list(table["corrupted"]) == list(mats["train_corrupted"].astype(bool))


def test_corrupted_labels_are_the_memorized_ones(folder):
    # our threshold: with every picked label changed, models that fit what they saw get corrupted
    # examples right only when trained on them (mem near 1); clean ones mostly either way
    summary = json.loads((folder / "memorization.json").read_text())
    assert summary["fit_seen_mean"] > 0.95
    assert summary["mem_corrupted_mean"] > 0.7 and summary["mem_clean_median"] < 0.1
    assert summary["detection_mem"]["auroc"] > 0.85


def test_stacked_one_by_one_and_in_a_pool_agree(folder, tmp_path):
    small = dict(models=4, cscore_fractions=[], epochs=8, signals=False)
    execute([plan("memorize", cfg_of(**small, stack=2), tmp_path / "pool")], "local", 2)
    memorize(cfg_of(**small, stack=2), tmp_path / "inline")
    memorize(cfg_of(**small, stack=1), tmp_path / "alone")
    a, b, c = (read_matrices(tmp_path / n) for n in ("pool", "inline", "alone"))
    for key in ("r-0.5/seen", "r-0.5/train_correct", "r-0.5/test_correct"):
        assert np.array_equal(a[key], b[key])   # the same stacks wherever they ran
    assert np.array_equal(b["r-0.5/seen"], c["r-0.5/seen"])
    # a stack and single runs differ only in the rounding of their sums: a few borderline examples
    assert (b["r-0.5/train_correct"] != c["r-0.5/train_correct"]).mean() < 0.01


def test_ray_spreads_the_stacks_with_the_same_estimates(tmp_path):
    """The folder's stacks as Ray tasks (a local cluster of 2 CPUs): the same matrices and estimates as
    the same plan made in this process."""
    pytest.importorskip("ray")
    small = dict(models=4, cscore_fractions=[], epochs=3, widths=[32], signals=False, stack=2)
    execute([plan("memorize", cfg_of(**small), tmp_path / "ray")], "ray", 2)
    memorize(cfg_of(**small), tmp_path / "inline")
    a, b = read_matrices(tmp_path / "ray"), read_matrices(tmp_path / "inline")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with np.load(tmp_path / "ray" / "memorization.npz") as x, np.load(tmp_path / "inline" / "memorization.npz") as y:
        assert all(np.array_equal(x[k], y[k], equal_nan=True) for k in x.files)


def test_a_killed_folder_resumes_at_the_next_unfinished_model(tmp_path, capsys):
    cfg = cfg_of(models=4, stack=1, cscore_fractions=[], epochs=6, signals=False)
    out = tmp_path / "m"
    p = plan("memorize", cfg, out)
    p.runs = p.runs[:2]   # as if killed after two of the four models
    p.finish = None
    execute([p], keep_existing=False)
    assert not (out / "memorization.json").exists()
    assert main(["memorize", "--resume", str(out)]) == 0
    assert "4 models" in capsys.readouterr().out
    memorize(cfg, tmp_path / "whole")
    for name in ("memorization.json",):
        got, want = (json.loads((d / name).read_text()) for d in (out, tmp_path / "whole"))
        assert got == want


def test_a_stack_killed_midway_resumes_as_one_stack(tmp_path, monkeypatch):
    """Models killed together at epoch 3 of 6 resume together from their checkpoints (not one by one)
    and end where an uninterrupted folder ends, bit for bit."""
    from conftest import Crash
    from rotelab import runner
    from rotelab.protocols.memorize import build_loop, model_dir
    cfg = cfg_of(models=4, stack=2, cscore_fractions=[], epochs=6, signals=False)
    out = tmp_path / "m"
    p = plan("memorize", cfg, out)
    execute([dataclasses.replace(p, runs=[], finish=None)], keep_existing=False)   # the folder and its plan.json

    def crashing(c, run, state=None):
        loop = build_loop(c, run, state)
        loop.hooks.insert(0, Crash(3))   # before anything of epoch 3 is written (a kill mid-epoch)
        return loop
    for first in (0, 2):
        with pytest.raises(RuntimeError):
            runner.start_stack([r.config for r in p.runs[first:first + 2]], [r.path for r in p.runs[first:first + 2]],
                               build_loop=crashing, protocol="memorize")
    assert {RunDir(out / model_dir(0.5, k)).read_status()["epochs_completed"] for k in range(4)} == {2}

    def one_by_one(*a, **kw):
        raise AssertionError("a begun stack was resumed one model at a time")
    monkeypatch.setattr(runner, "resume", one_by_one)
    assert main(["memorize", "--resume", str(out)]) == 0
    memorize(cfg, tmp_path / "whole")
    a, b = read_matrices(out), read_matrices(tmp_path / "whole")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for k in range(4):
        got, want = (RunDir(d / model_dir(0.5, k)).read_metrics() for d in (out, tmp_path / "whole"))
        assert [{k: v for k, v in m.items() if not k.startswith("seconds")} for m in got] == \
               [{k: v for k, v in m.items() if not k.startswith("seconds")} for m in want]


@pytest.mark.parametrize("flags,field", [
    (["--train-fraction", "1.0"], "--train-fraction"),
    (["--train-fraction", "0"], "--train-fraction"),
    (["--models", "1"], "--models"),
    (["--train-fraction", "0.003"], "--train-fraction"),          # 4 examples: fewer than the 10 classes
    (["--batch-norm", "--stack", "4"], "--stack"),                # batch norm needs each model's own batches
    (["--cscore-fractions", "0.5,1.5"], "--cscore-fractions"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, field):
    out = tmp_path / "m"
    assert main(["memorize", "--dataset", "digits", "--widths", "8", "--epochs", "1", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert field in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_every_signal_is_scored_against_the_corruption(folder):
    from sklearn.metrics import roc_auc_score
    import pandas as pd
    summary = json.loads((folder / "memorization.json").read_text())
    table = pd.read_csv(folder / "per_example.csv")
    rows = {r["signal"]: r for r in summary["signals"]}
    assert {"mem", "aum (low)", "confidence (low)", "forgetting events", "cleanlab (low quality)"} <= set(rows)
    y = table["corrupted"].to_numpy()
    # recomputed from the published table with scikit-learn directly
    assert rows["aum (low)"]["auroc"] == pytest.approx(roc_auc_score(y, -table["aum"]))
    assert rows["forgetting events"]["auroc"] == pytest.approx(roc_auc_score(y, table["forgetting_events"]))
    assert rows["mem"]["auroc"] == pytest.approx(summary["detection_mem"]["auroc"])
    # breaking alpha: the whole-set run's noise ramp, read back through the noise protocol's own join
    fate = Run(folder / "noise-ramp" / "full").table("noise_fate", split="train")
    assert np.array_equal(table["breaking_alpha"], fate["breaking_alpha"], equal_nan=True)
    alpha = table["breaking_alpha"].to_numpy()
    wrong_first = np.isnan(alpha)   # wrong before the ramp bit: ranked most suspect
    assert rows["breaking alpha (low)"]["auroc"] == pytest.approx(
        roc_auc_score(y, np.where(wrong_first, np.inf, -np.where(np.isinf(alpha), 1e9, alpha)).clip(max=1.0)))
    assert rows["breaking alpha (low)"]["seconds"] > rows["aum (low)"]["seconds"]   # the ramp's cost counted
    assert all(r["seconds"] > 0 for r in rows.values())
    assert all(r["n"] == len(table) for name, r in rows.items() if not name.startswith(("mem", "cscore")))
    assert rows["mem"]["n"] == int(table["mem"].notna().sum())   # mem: NaN where no model held it out (or all did)
    # cleanlab's probabilities are out of fold: every example was held out by exactly one fold run
    held = sum(~RunDir(folder / f"fold-{f}").read_examples()["train_seen"].astype(bool) for f in range(5))
    assert np.all(held == 1)
    assert np.array_equal(table["label_used"], read_matrices(folder)["train_labels_used"])


def test_aum_equals_the_aum_package():
    # an independent implementation (Pleiss et al.'s package) on the same logits, epoch by epoch
    import torch
    from aum import AUMCalculator
    from rotelab.engine import margins
    from rotelab.measures.memorization import aum
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, 10, generator=gen) * 3
    y = torch.randint(0, 10, (50,), generator=gen)
    calc = AUMCalculator("unused", compressed=True)
    for epoch in logits:
        calc.update(epoch, y, list(range(50)))
    want = np.array([calc.sums[i] / calc.counts[i] for i in range(50)])
    ours = aum(np.stack([margins(epoch, y).numpy() for epoch in logits]))
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6)


def test_examples_by_any_signal(folder, tmp_path, capsys):
    assert main(["examples", str(folder), "--by", "mem", "--top", "3"]) == 0
    out = capsys.readouterr().out
    table = read_estimates(folder)
    top = table.sort_values("mem", ascending=False, kind="stable").head(3)
    assert f"the 3 examples of highest mem" in out and all(f" {i} " in out for i in top["example"])
    # a signal the run does not record: one line naming the flag that records it, exit 2
    run = folder / "r-0.5_model-0000"
    assert main(["examples", str(run), "--by", "aum"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--example-margins" in err and len(err.splitlines()) == 1
    # the gallery of Feldman & Zhang's figures: per class the most memorized clean examples
    with np.load(folder / "gallery.npz") as g:
        mem, clean = table["mem"].to_numpy(), ~table["corrupted"].to_numpy()
        for row, c in zip(g["class_index"], g["classes"]):
            best = np.nanmax(np.where(clean & (table["label_used"].to_numpy() == c), mem, np.nan))
            assert mem[row[0]] == best and clean[row].all()


def test_a_folder_whose_finish_was_cut_short_is_finished_on_resume(tmp_path, capsys):
    """Every model done but the estimates never written (the finish failed or was killed): --resume
    writes them instead of calling the folder finished."""
    out = tmp_path / "m"
    memorize(cfg_of(models=2, stack=1, epochs=3, signals=False, cscore_fractions=[]), out)
    written = json.loads((out / "memorization.json").read_text())
    (out / "memorization.json").unlink()
    assert main(["memorize", "--resume", str(out)]) == 0
    assert "finishing the folder again" in capsys.readouterr().out
    assert json.loads((out / "memorization.json").read_text()) == written


def test_influence_ships_with_its_permutation_null(folder):
    """Every top pair carries its p-value against its test example's null, the summary says what chance
    gives, and the gallery shows only pairs above what chance gives any pair."""
    summary = json.loads((folder / "memorization.json").read_text())["influence"]
    with np.load(folder / "memorization.npz") as est:
        p, val = est["infl_p"], est["infl_value"]
    assert p.shape == val.shape and np.all((p > 0) & (p <= 1))
    assert summary["perms"] == 100 and summary["test_examples"] == val.shape[0]
    assert summary["top1_pass_own_null"] == int((p[:, 0] <= 0.05).sum())
    assert summary["pairs_shown"] == int((val[:, 0] > summary["shown_above"]).sum())
    with np.load(folder / "gallery.npz") as g:
        assert np.all(g["pair_value"] > summary["shown_above"]) and len(g["pair_value"]) <= 12


def test_the_gallery_orders_ties_by_how_sure_mem_is(folder):
    """Per class, the clean examples of highest mem; where mem ties (many sit at 1.00, where the C-score
    is 0 for all), the most surely memorized first: the higher lower end of mem's 95% interval."""
    with np.load(folder / "gallery.npz") as g, np.load(folder / "memorization.npz") as est:
        index, mem, lo = g["class_index"], est["mem"], np.nan_to_num(est["mem_lo"], nan=-np.inf)
    assert any(len(set(mem[row].tolist())) < len(row) for row in index)   # there are ties to order
    for row in index:
        keys = [(-mem[i], -lo[i]) for i in row]
        assert keys == sorted(keys)


def test_a_published_folder_reads_its_gzipped_per_example_table(tmp_path):
    """A record keeps per_example.csv gzipped: the folder's table and figures read it as the csv."""
    import gzip
    import pandas as pd
    from rotelab.protocols.memorize import folder_table
    from rotelab.store import stored_file
    table = pd.DataFrame({"example": [0, 1], "corrupted": [True, False], "mem": [0.9, 0.1]})
    (tmp_path / "per_example.csv.gz").write_bytes(gzip.compress(table.to_csv(index=False).encode()))
    assert stored_file(tmp_path / "per_example.csv") == tmp_path / "per_example.csv.gz"
    pd.testing.assert_frame_equal(folder_table(tmp_path), table)
    assert stored_file(tmp_path / "elsewhere" / "per_example.csv") is None
