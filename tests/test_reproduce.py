"""rotelab reproduce: every study's smoke scale runs end to end (so no study can rot), the checks give
known answers on hand-made runs, and the paper-scale Table 1 study runs on small CIFAR-format files."""

import html
import json
from pathlib import Path

import numpy as np
import pytest

from rotelab import reproduce as rp
from rotelab.protocols import fit_study as fitp
from rotelab.protocols import infoplane_study as ipp
from rotelab.protocols import noise_study as noisep
from rotelab.cli import main
from rotelab.errors import ConfigError
from rotelab.store import RunDir

STUDIES = [f.stem for f in rp.study_files()]


def test_every_study_names_registered_figures_and_checks():
    figures, checks = rp.study_tables()
    for name in STUDIES:
        spec = rp.load_study(name).spec
        assert {f["kind"] for f in spec.get("figures", [])} <= set(figures), name
        assert {c["kind"] for c in spec.get("checks", [])} <= set(checks), name
        # a judged check says where its expected value comes from; the others say they are reported
        for c in spec.get("checks", []):
            assert c.get("source") or "reported" in c["name"], (name, c["name"])


def test_list_names_every_study_with_its_scales(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("zhang-fig1", "zhang-table1", "noise-ramp", "forgetting", "oscillation", "infoplane-12bit"):
        assert name in STUDIES and name in out
    assert "cpu ~" in out and "smoke ~" in out


@pytest.mark.parametrize("name", STUDIES)
def test_every_scale_of_every_study_plans_valid_configs(name, tmp_path):
    """A dry run validates every point's config (a paper scale nobody can run here included)."""
    for scale in rp.load_study(name).scales:
        assert rp.reproduce(name, scale, tmp_path / scale, dry_run=True) == {}
        assert not (tmp_path / scale).exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", [s for s in STUDIES if s != "zhang-table1"])
def test_smoke_scale_runs_end_to_end(name, tmp_path):
    out = tmp_path / name
    results = rp.reproduce(name, "smoke", out, jobs=1)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps({k: v for k, v in results.items() if k != "out"}))
    assert set(saved) >= {"study", "scale", "version", "seconds", "checks", "notes"}
    assert saved["checks"] and all({"name", "value", "expected", "pass"} <= set(c) <= {"name", "value", "expected", "pass", "source", "numbers"}
                                   for c in saved["checks"])
    assert list((out / "figures").glob("*.png"))
    page = (out / "report.html").read_text()
    assert "<img" in page and html.escape(saved["checks"][0]["name"]) in page


def test_a_study_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "o"
    rp.reproduce("oscillation", "smoke", out)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    capsys.readouterr()
    assert main(["reproduce", "oscillation", "--scale", "smoke", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == stamp
    assert "checks pass" in capsys.readouterr().out


def test_finished_reads_the_done_runs_of_the_design_and_names_the_rest(tmp_path, capsys):
    out = tmp_path / "o"
    rp.reproduce("oscillation", "smoke", out)
    # seed 1 of step lr-step is still training (its status says so); a folder that is not a point of
    # the design lies beside the others
    status = out / "lr-step" / "seed-1" / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "state": "running"}))
    import shutil
    shutil.copytree(out / "lr-step" / "seed-0", out / "lr-step" / "stray")
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    capsys.readouterr()
    assert main(["reproduce", "oscillation", "--scale", "smoke", "--out", str(out), "--finished"]) == 0
    printed = capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == stamp   # nothing ran
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == ["lr-step/seed-1 (partial)"] and results["command"].endswith("--finished")
    settles = next(c["value"] for c in results["checks"] if c["name"].startswith("with a learning-rate step"))
    assert "seed-0" in settles and "seed-2" in settles and "seed-1" not in settles and "stray" not in settles
    assert "1 points not done, not in these results" in printed
    assert "lr-step/seed-1 (partial)" in (out / "report.html").read_text()
    docs = tmp_path / "docs"
    rp.publish(out, docs)
    assert "**Not yet run.** 1 points of the study's design are not in these results" in (docs / "reproductions.md").read_text()


def test_finished_leaves_out_a_run_made_with_other_settings_and_says_how_it_differs(tmp_path, capsys):
    out = tmp_path / "o"
    rp.reproduce("oscillation", "smoke", out)
    config = out / "lr-step" / "seed-2" / "config.json"   # as if made by an earlier design of the study
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "epochs": saved["epochs"] + 1}))
    assert main(["reproduce", "oscillation", "--scale", "smoke", "--out", str(out), "--dry-run"]) == 0
    assert f"lr-step/seed-2  (epochs = {saved['epochs'] + 1} (planned: {saved['epochs']}))" in capsys.readouterr().out
    assert main(["reproduce", "oscillation", "--scale", "smoke", "--out", str(out), "--finished"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == [f"lr-step/seed-2 (stale: epochs = {saved['epochs'] + 1} (planned: {saved['epochs']}))"]
    settles = next(c["value"] for c in results["checks"] if c["name"].startswith("with a learning-rate step"))
    assert "seed-0" in settles and "seed-1" in settles and "seed-2" not in settles
    # a run of the study refuses it (names it), and leaves it as it was
    with pytest.raises(RuntimeError, match="seed-2 was made with epochs"):
        rp.reproduce("oscillation", "smoke", out)
    assert json.loads(config.read_text())["epochs"] == saved["epochs"] + 1


def test_steps_runs_the_named_steps_alone_and_draws_from_what_is_done(tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(ConfigError, match="--steps: study oscillation has no step 'nope'; its steps are runs, lr-step"):
        rp.reproduce("oscillation", "smoke", out, steps_only=["nope"])
    results = rp.reproduce("oscillation", "smoke", out, steps_only=["lr-step"])
    assert (out / "lr-step").is_dir() and not (out / "runs").exists()   # the other step did not run
    assert results["missing"] and all(m.startswith("runs/") for m in results["missing"])
    assert results["command"].endswith("--steps lr-step")
    settles = next(c for c in results["checks"] if c["name"].startswith("with a learning-rate step"))
    assert "seed-0" in settles["value"]   # checks read the step that ran
    capsys.readouterr()
    assert main(["reproduce", "oscillation", "--scale", "smoke", "--out", str(out), "--steps", "runs"]) == 0
    assert (out / "runs").is_dir() and "points not done" not in capsys.readouterr().out


@pytest.mark.slow
def test_table1_dry_run_and_a_smoke_run_on_written_cifar_files(tmp_path, capsys):
    from test_data import write_cifar
    assert main(["reproduce", "zhang-table1", "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    out = capsys.readouterr().out
    assert out.count("new ") == 8 and "variant-inception" in out and not (tmp_path / "dry").exists()
    write_cifar(tmp_path / "cifar", n_per_batch=40)
    results = rp.reproduce("zhang-table1", "smoke", tmp_path / "t1", data_root=str(tmp_path / "cifar"))
    # one epoch on 200 images fits nothing; measured and shown, not judged at smoke scale
    assert [c["pass"] for c in results["checks"]] == [None, None, None]
    assert all(c["expected"].startswith("not judged at smoke scale") for c in results["checks"])
    # on 28 x 28 centre crops the networks have the paper's parameter counts (Table 1)
    assert "variant-alexnet: 1,387,786" in results["checks"][0]["value"]
    assert "variant-mlp-1x512: 1,209,866" in results["checks"][0]["value"]
    assert "variant-alexnet: train" in results["checks"][1]["value"]


def fake_fit(path: Path, corrupt: str, fit_epoch, test_acc: float, classes: int = 10):
    import numpy as np
    run = RunDir(path)
    run.create({"corrupt": corrupt, "batch_size": 10}, {}, protocol="fit")
    run.append_metrics({"epoch": 1, "train_acc": 1.0, "test_acc": test_acc, "train_loss": 0.1})
    run.write_status("done", fit_epoch=fit_epoch)
    run.write_examples({"train_labels_true": np.arange(classes), "n_train": np.int64(classes)})
    run.unlock()


def test_checks_on_hand_made_runs(tmp_path):
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "fits", "protocol": "fit"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    for p, epochs, acc in ((0.0, 10, 0.9), (0.5, 20, 0.5), (1.0, 30, 0.1), (1.0, None, 0.12)):
        fake_fit(tmp_path / "fits" / f"p{p}-{epochs}", f"labels={p}", epochs, acc)
    value, _, passed = fitp.check_all_fit(ctx, "fits")
    assert value.startswith("3 of 4") and passed is False
    value, _, passed = fitp.check_rises_with_p(ctx, "fits", "fit_epoch")
    # three runs in perfect order: the exact permutation p is 1/3! = 0.17, no evidence at alpha 0.01
    # (the t approximation called it p < 1e-300)
    assert "Spearman 1.000 over 3 runs (one-sided p = 0.17)" in value and "p=1: 30 (one run)" in value
    assert passed is False
    # 4 runs, two tied at p = 1: the exact p is 2/4! = 0.083 (the two orders of the tie reach the observed)
    value, _, passed = fitp.check_rises_with_p(ctx, "fits", "test_error", alpha=0.1)
    assert passed and "one-sided p = 0.083" in value and "p=1: 0.89 [0.88, 0.9] (range of 2, n = 2)" in value   # the two p = 1 runs' errors, 0.9 and 0.88
    value, expected, passed = fitp.check_chance(ctx, "fits", p=1.0, tolerance=0.02)
    assert "0.1100" in value and expected == "0.100 +- 0.02" and passed
    assert fitp.check_chance(ctx, "fits", p=1.0, tolerance=0.005)[2] is False


def test_a_trend_is_judged_over_runs_and_overlapping_intervals_are_said(tmp_path):
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "fits", "protocol": "fit"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    # p = 0 fits first; the seeds of p >= 0.5 cannot be told apart (means 21.3, 20.3, 21.3), and with
    # three seeds a level's 95% interval (t, 2 degrees of freedom) is wide enough to reach p = 0's too
    for p, epochs in ((0.0, (9, 10, 11)), (0.5, (12, 22, 30)), (0.75, (28, 13, 20)), (1.0, (21, 14, 29))):
        for seed, e in enumerate(epochs):
            fake_fit(tmp_path / "fits" / f"p{p}-{seed}", f"labels={p}", e, 0.5)
    value, expected, passed = fitp.check_rises_with_p(ctx, "fits", "fit_epoch", alpha=0.01)
    assert "over 12 runs" in value and "intervals overlap at p = 0-0.5, 0.5-0.75, 0.75-1" in value
    assert "Spearman 0.583" in value and "p=0: 10 [7.52, 12.5] (t 95%, n = 3)" in value and "one-sided p < 0.01" in expected
    assert passed is False   # one-sided p = 0.023 over the runs: not significant at 0.01
    assert fitp.check_rises_with_p(ctx, "fits", "fit_epoch", alpha=0.1)[2] is True


def fake_infoplane(path: Path, curves: dict, n: int = 1024, train_acc: float | list = 1.0, seed: int = 0):
    """An infoplane run whose binning records follow curves[layer] = [I(X;T) per capture], and whose
    train accuracy is `train_acc` (a list: one per epoch)."""
    run = RunDir(path)
    run.create({"corrupt": "labels=1.0", "seed": seed}, {}, protocol="infoplane")
    for epoch, acc in enumerate(train_acc if isinstance(train_acc, list) else [train_acc], 1):
        run.append_metrics({"epoch": epoch, "train_acc": acc, "test_acc": 0.1})
    with open(run.info_file, "w") as f:
        for layer, values in curves.items():
            for i, v in enumerate(values):
                for split in ("train", "test"):
                    f.write(json.dumps({"epoch": 20 * i, "layer": layer, "split": split, "n": n,
                                        "estimator": "binning-size", "ixt": v if split == "train" else 1.0,
                                        "ity": 1.0}) + "\n")
    run.unlock()


def test_compression_check_on_hand_made_curves(tmp_path):
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "planes", "protocol": "infoplane"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    ceiling = 10.0   # log2 1024
    curves = {0: [9.99] * 4, 5: [5, 9.5, 8.0, 7.0], 6: [4, 8, 6.9, 6.95], 7: [6, 9.2, 9.0, 8.5]}
    fake_infoplane(tmp_path / "planes" / "labels-random" / "seed-0", curves)
    value, expected, passed = ipp.check_compression(ctx, "planes", "labels-random")
    assert passed is None and "mean curve of 1 run" in value   # one run: reported, not judged
    # three runs whose noise shifts them +-0.3 (and a late bump in one): judged on their mean curve,
    # where layer 6 falls 2.5, layer 7 1.05 and the output 0.7: two of three layers fall >= 1 bit
    fake_infoplane(tmp_path / "planes" / "labels-random" / "seed-1",
                   {k: [v + 0.3 for v in c] for k, c in curves.items()})
    bumped = {k: [v - 0.3 for v in c] for k, c in curves.items()}
    bumped[5][1] += 0.6   # seed 2's own peak of layer 6 is 0.6 higher: its own fall 3.1, the mean's 2.7
    fake_infoplane(tmp_path / "planes" / "labels-random" / "seed-2", bumped)
    value, expected, passed = ipp.check_compression(ctx, "planes", "labels-random")
    assert passed and "mean curve of 3 runs" in value and "layer 6 9.70 (epoch 20) -> 7.00: falls 2.70 (runs 2.50-3.10)" in value
    assert "falls 1.05" in value and "output 9.20" in value and "N = 1024" in value and "rotelab threshold" in expected
    assert ipp.check_compression(ctx, "planes", "labels-random", at_least=1.1)[2] is False
    assert ipp.check_compression(ctx, "planes", "labels-random", split="test")[2] is False   # flat on test
    # a layer whose curve ends at the ceiling is saturated (from the epoch it stays there), never a
    # layer that "does not compress", even when it was below the ceiling at first
    fake_infoplane(tmp_path / "planes" / "labels-true" / "seed-0",
                   {0: [5] * 3, 5: [5, ceiling, 9.92], 6: [4, 9, 7], 7: [3, 6, 5.5]})
    value, _, passed = ipp.check_compression(ctx, "planes", "labels-true", min_runs=1)
    assert "layer 6 saturated (at the ceiling log2 N = 10.00 from epoch 20)" in value and passed is False
    value, expected, _ = ipp.report_ixt_fall(ctx, "planes")   # the last two hidden layers: 5 and 6
    assert "labels-true (binning-size, mean curve of 1 run): layer 6 saturated at the ceiling log2 N = 10.00 from epoch 20" in value
    assert "layer 7 falls 2.00 bits from its peak" in value and expected == "reported"
    assert "labels-random (binning-size, mean curve of 3 runs): layer 6 falls 2.70" in value
    value, _, passed = fitp.check_final_train_acc(ctx, "planes", "labels-random", at_least=0.99)
    assert passed and "1.0000" in value
    fake_infoplane(tmp_path / "planes" / "labels-random" / "seed-3", {0: [1, 2]}, train_acc=0.98)
    assert fitp.check_final_train_acc(ctx, "planes", "labels-random", at_least=0.99)[2] is False


def test_a_run_that_diverged_is_left_out_of_compression_and_named(tmp_path):
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "planes", "protocol": "infoplane"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    flat = {0: [9.9] * 4, 5: [5, 8, 8, 8], 6: [4, 7, 7, 7], 7: [3, 6, 6, 6]}
    for seed in range(3):
        fake_infoplane(tmp_path / "planes" / "labels-random" / f"seed-{seed}", flat, train_acc=[0.3, 1.0], seed=seed)
    assert ipp.check_compression(ctx, "planes", "labels-random")[2] is False   # nothing falls
    # a fourth run fits (0.998 at epoch 3), then its network dies (0.1 from epoch 4): its layers'
    # information drops to nothing, which would pull the mean curve down 2 bits a layer
    dead = {0: [9.9] * 4, 5: [5, 8, 8, 0], 6: [4, 7, 7, 0], 7: [3, 6, 6, 0]}
    fake_infoplane(tmp_path / "planes" / "labels-random" / "seed-3", dead, train_acc=[0.3, 0.9, 0.998, 0.1, 0.1], seed=3)
    gone = ipp.divergence(RunDir(tmp_path / "planes" / "labels-random" / "seed-3"))
    assert gone == {"seed": 3, "peak": 0.998, "peak_epoch": 3, "lost_at": 4, "final": 0.1}
    assert ipp.divergence(RunDir(tmp_path / "planes" / "labels-random" / "seed-0")) is None
    assert ipp.check_compression(ctx, "planes", "labels-random", min_runs=4)[2] is None   # 3 kept runs: reported
    value, _, passed = ipp.check_compression(ctx, "planes", "labels-random")
    assert passed is False and "mean curve of 3 runs" in value
    assert "the runs fit (train accuracy >= 0.99) at epoch 2, 2, 2" in value   # where the peaks can be read against it
    assert "seed 3 left out: train accuracy 0.998 at epoch 3, below half of it from epoch 4, 0.100 at the end (diverged)" in value
    assert "seed 3 left out" in ipp.report_ixt_fall(ctx, "planes")[0]
    # memorized is judged on what each run reached; the one that did not stay there is named
    value, expected, passed = fitp.check_final_train_acc(ctx, "planes", "labels-random", at_least=0.99, reached=True)
    assert passed and "4 of 4 runs reach 0.99" in value and "3 of 4 end there" in value
    assert "seed 3 reached 0.9980 and ended at 0.1000" in value and "at some epoch" in expected
    assert fitp.check_final_train_acc(ctx, "planes", "labels-random", at_least=0.99)[2] is False


def test_time_scales_are_read_per_n_from_each_steps_mean_curve(tmp_path):
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "small", "protocol": "infoplane"},
                                                           {"name": "large", "protocol": "infoplane"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    # captures every 20 epochs; N = 1024: peaks at epoch 20, 80% of each fall done at epoch 40;
    # N = 4096: the same layers peak later (epoch 40) and fall slower (80% done at epoch 80)
    fake_infoplane(tmp_path / "small" / "labels-random" / "seed-0", {5: [5, 9, 5, 5, 5], 6: [4, 8, 4, 4, 4]},
                   train_acc=[0.5, 1.0])
    fake_infoplane(tmp_path / "large" / "labels-random" / "seed-0", {5: [5, 8, 9, 7, 5], 6: [4, 6, 8, 6, 4]},
                   n=4096, train_acc=[0.5, 0.9, 0.995])
    value, expected, passed = ipp.report_time_scales(ctx, ["small", "large"], "labels-random", layers=2)
    assert expected == "reported" and passed is None
    assert ("N = 1024 (1 run): fit at epoch 2; the last 2 layers peak at epochs 20, 20 and 80% of their falls "
            "(4.00, 4.00 bits) is done by epochs 40, 40") in value
    assert "N = 4096 (1 run): fit at epoch 3; the last 2 layers peak at epochs 40, 40" in value
    assert "is done by epochs 80, 80" in value


def test_compression_reads_saturation_from_where_the_curve_ends():
    from rotelab.measures.information import compression
    at = compression([0, 20, 40, 60], [5, 9.95, 9.98, 9.99], ceiling=10)   # reaches the ceiling at epoch 20
    assert at["saturated"] and at["at_ceiling_from"] == 20 and at["fall"] == pytest.approx(0.0)
    left = compression([0, 20, 40], [5, 10, 8], ceiling=10)   # reaches it, then falls below: a fall
    assert not left["saturated"] and left["at_ceiling_from"] is None and left["fall"] == pytest.approx(2.0)


def test_compression_says_by_when_most_of_the_fall_is_done():
    from rotelab.measures.information import compression
    # peak 9 at epoch 20, final 4: a fall of 5 bits; 80% of it (down to 5.0) is done at epoch 60, not at 40 (5.5)
    c = compression([0, 20, 40, 60, 80, 100], [6, 9, 5.5, 5.0, 4.5, 4], ceiling=12)
    assert c["fall"] == pytest.approx(5.0) and c["most_by"] == 60
    assert compression([0, 20, 40, 60, 80, 100], [6, 9, 5.5, 5.0, 4.5, 4], ceiling=12, most=0.5)["most_by"] == 40
    assert compression([0, 20], [3, 5], ceiling=12)["most_by"] is None   # ends at its peak: no fall


def fake_forget(path: Path, train, val, stage1_end: int, lr2: float = 0.01, weight_decay: float = 0.0):
    run = RunDir(path)
    run.create({"corrupt": "labels=1.0", "val_corrupt": "labels=0.0", "epochs": stage1_end, "epochs2": len(train) - stage1_end,
                "lr2": lr2, "weight_decay": weight_decay}, {}, protocol="forget")
    for e, (tr, va) in enumerate(zip(train, val), start=1):
        run.append_metrics({"epoch": e, "stage": 1 if e <= stage1_end else 2, "lr": 0.1 * 0.1 if e <= stage1_end else lr2,
                            "train_acc": tr, "val_acc": va, "test_acc": 0.1})
    run.unlock()


def test_collapse_period_check_on_hand_made_runs(tmp_path):
    from rotelab.protocols import forget_study as fgp
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "bnwd", "protocol": "forget"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))

    def train_with_collapses(at, n=60):   # stage 1 to epoch 10, then collapses (1.0 -> 0.3) at the given epochs
        return [0.5] * 10 + [0.3 if e in at else 1.0 for e in range(11, n + 1)]
    fake_forget(tmp_path / "bnwd" / "wd-a", train_with_collapses({20, 40, 58}), [0.5] * 60, 10, weight_decay=5e-3)
    fake_forget(tmp_path / "bnwd" / "wd-b", train_with_collapses({15, 25, 35, 45}), [0.5] * 60, 10, weight_decay=1e-2)
    value, expected, passed = fgp.check_collapse_period(ctx, "bnwd")
    assert passed and "wd-a (lr x wd 5e-05): collapses at epochs 20, 40, 58, period 19 epochs" in value
    assert "wd-b (lr x wd 0.0001): collapses at epochs 15, 25, 35, 45, period 10 epochs" in value
    fake_forget(tmp_path / "bnwd" / "wd-c", train_with_collapses({30}), [0.5] * 60, 10, weight_decay=2e-2)
    assert fgp.check_collapse_period(ctx, "bnwd")[2] is False   # one collapse gives no period


def test_stage2_collapse_check_on_hand_made_runs(tmp_path):
    from rotelab.protocols import forget_study as forgetp

    def ctx_of(step):
        return rp.Context(rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": step, "protocol": "forget"}]}),
                          "cpu", tmp_path, [{"name": step, "protocol": "forget", "base": {}, "axes": {}}])
    # the motivating study's shape: both parts drop at once in stage 2, train recovers, val does not
    train = [1.0] * 20 + [1.0] * 10 + [0.6, 0.7, 0.85, 0.93, 0.95] + [0.96] * 5
    val = [1.0] * 20 + [1.0] * 10 + [0.5, 0.45, 0.42, 0.42, 0.42] + [0.42] * 5
    fake_forget(tmp_path / "bnwd" / "wd-5__seed-0", train, val, stage1_end=20)
    value, expected, passed = forgetp.check_stage2_collapse(ctx_of("bnwd"), "bnwd")
    assert passed is None and "1 of 1 runs" in value   # one run: reported, judged from three
    assert forgetp.check_stage2_collapse(ctx_of("bnwd"), "bnwd", min_runs=1)[2] is True
    assert "train collapses at epoch 31 (1.00 -> 0.60), train back to >= 0.9 at epoch 34, val 1.00 before and 0.42 then" in value
    for seed in (1, 2):
        fake_forget(tmp_path / "bnwd" / f"wd-5__seed-{seed}", train if seed == 1 else [1.0] * 40, val if seed == 1 else [1.0] * 40, 20)
    value, expected, passed = forgetp.check_stage2_collapse(ctx_of("bnwd"), "bnwd")
    assert passed is True and "wd-5: 2 of 3 runs (Wilson 95% 0.21-0.94)" in value and "no collapse" in value
    assert forgetp.check_stage2_collapse(ctx_of("bnwd"), "bnwd", at_least=0.9)[2] is False
    # the same curves with the learning rate changed at the boundary: a forced perturbation, not spontaneous
    fake_forget(tmp_path / "bnwd2" / "a", train, val, stage1_end=20, lr2=0.1)
    assert forgetp.check_stage2_collapse(ctx_of("bnwd2"), "bnwd2", min_runs=1)[2] is False
    # gradual forgetting of val, no collapse: not the motivating kind
    slow = [1.0 - 0.02 * max(0, e - 20) for e in range(40)]
    fake_forget(tmp_path / "bnwd3" / "a", [1.0] * 40, slow, stage1_end=20)
    value, _, passed = forgetp.check_stage2_collapse(ctx_of("bnwd3"), "bnwd3", min_runs=1)
    assert passed is False and "no collapse (val 1.00 -> 0.62 over stage 2)" in value
    # a collapse that val recovers from, then gradual forgetting: val is read when train is back, not at the end
    val4 = [1.0] * 30 + [0.7, 0.8, 0.9, 0.92, 0.92] + [0.9, 0.8, 0.7, 0.6, 0.5]
    fake_forget(tmp_path / "bnwd4" / "a", train, val4, stage1_end=20)
    value, _, passed = forgetp.check_stage2_collapse(ctx_of("bnwd4"), "bnwd4", min_runs=1)
    assert passed is False and "val 1.00 before and 0.92 then" in value


def test_information_terms_are_reported_with_the_closed_form(tmp_path):
    import math
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "ramp", "protocol": "noise"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    run = RunDir(tmp_path / "ramp" / "a")
    run.create({"source": "x"}, {}, protocol="noise")
    for e in range(1, 10):
        alpha = 1e-4 * 2 ** ((e - 1) // 3)
        run.append_metrics({"epoch": e, "alpha": alpha, "neg_half_log_alpha": -0.5 * math.log(alpha)})
    run.unlock()
    value, expected, passed = noisep.check_information_terms(ctx, "ramp")
    # the schedule's arithmetic: shown, never judged (a check that cannot fail is no check)
    assert passed is None and expected.startswith("reported") and "4.6052" in value and "0.3466" in value
    assert "as the closed form" in value


def fake_overlaps(path: Path, acc, gap, lr=None):
    run = RunDir(path)
    run.create({"corrupt": "labels=1.0"}, {}, protocol="fit")
    for e, (a, g) in enumerate(zip(acc, gap), start=1):
        run.append_metrics({"epoch": e, "train_acc": a, "train_intersection": a - g / 2, "train_union": a + g / 2,
                            "lr": lr[e - 1] if lr else 0.01})
    run.unlock()


def test_oscillation_gap_check_on_hand_made_runs(tmp_path):
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "runs", "protocol": "fit"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    acc = [0.1, 0.15, 0.25, 0.4, 0.55, 0.7, 0.79, 0.9, 1.0, 1.0, 1.0]
    fake_overlaps(tmp_path / "runs" / "a", acc, [0, 0.05, 0.1, 0.12, 0.15, 0.12, 0.11, 0.05, 0.02, 0.01, 0.0])
    value, _, passed = fitp.check_oscillation_gap(ctx, "runs")
    assert passed and "median gap 0.120 over 4 epochs" in value and "fit at epoch 9, largest gap after it 0.010" in value
    fake_overlaps(tmp_path / "runs" / "b", acc, [0, 0.05, 0.1, 0.12, 0.15, 0.12, 0.11, 0.05, 0.02, 0.05, 0.0])
    assert fitp.check_oscillation_gap(ctx, "runs")[2] is False          # run b flips after its fit
    assert fitp.check_oscillation_gap(ctx, "runs", after_fit_at_most=0.06)[2] is True
    assert fitp.check_oscillation_gap(ctx, "runs", at_least=0.13, after_fit_at_most=0.06)[2] is False


def test_gap_at_lr_step_check_on_hand_made_runs(tmp_path):
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "runs", "protocol": "fit"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    acc = [0.2 + 0.05 * e for e in range(16)]
    lr = [0.02] * 8 + [0.002] * 8   # the lr of epoch 9 on is stepped
    settles = [0.3, 0.3, 0.3, 0.28, 0.3, 0.32, 0.3, 0.29, 0.2, 0.1, 0.05, 0.04, 0.05, 0.06, 0.05, 0.05]
    fake_overlaps(tmp_path / "runs" / "a", acc, settles, lr)
    value, expected, passed = fitp.check_gap_falls_at_lr_step(ctx, "runs")
    assert passed and "lr steps at epoch 9; median gap 0.300 before, 0.050 after" in value
    fake_overlaps(tmp_path / "runs" / "b", acc, [0.3] * 9 + [0.2] * 7, lr)   # does not settle
    assert fitp.check_gap_falls_at_lr_step(ctx, "runs")[2] is False
    assert fitp.check_gap_falls_at_lr_step(ctx, "runs", factor=0.7)[2] is True
    fake_overlaps(tmp_path / "runs" / "c", acc, settles)   # constant lr: nothing to judge, fails
    assert "c: the lr never steps" in fitp.check_gap_falls_at_lr_step(ctx, "runs", factor=0.7)[0]


def test_publish_writes_the_docs_page_and_small_figures(tmp_path):
    rp.reproduce("oscillation", "smoke", tmp_path / "o")
    page = rp.publish(tmp_path / "o", tmp_path / "docs")
    text = page.read_text()
    assert "## oscillation" in text and "| examples flip while memorizing" in text
    figs = list((tmp_path / "docs" / "figures").glob("oscillation_*.png"))
    assert figs and all(f.stat().st_size < 300_000 for f in figs) and f"figures/{figs[0].name}" in text
    results = json.loads((tmp_path / "docs" / "results" / "oscillation.json").read_text())
    # the record: no checkpoints or TensorBoard files; rotelab.load and the study's checks read it as the runs
    records = tmp_path / "docs" / "records" / "oscillation"
    assert results["records"]["files"] > 0 and "**Record.** `records/oscillation`" in text
    assert not list(records.rglob("*.pt")) and not list(records.rglob("events.out.*"))
    import rotelab
    assert rotelab.load(records).final["test_acc"].tolist() == rotelab.load(tmp_path / "o").final["test_acc"].tolist()
    again = rp.reproduce("oscillation", "smoke", records)   # nothing trains: every run is done
    assert [c["value"] for c in again["checks"]] == [c["value"] for c in results["checks"]]
    assert list(records.rglob("examples.npz")) and "per-example bits" in text
    # a study whose record_examples is false publishes no per-example bits, and says so
    lean = rp.publish_records(tmp_path / "o", tmp_path / "lean", examples=False)
    assert lean["files"] > 0 and not list((tmp_path / "lean").rglob("examples.npz"))
    # a record republished (--finished on a copy of it, with runs added) keeps its packed metrics
    again = rp.publish_records(records, tmp_path / "again")
    assert again["files"] == results["records"]["files"]
    assert rotelab.load(tmp_path / "again").final["test_acc"].tolist() == rotelab.load(records).final["test_acc"].tolist()


@pytest.mark.slow
def test_plot_on_a_study_folder_does_what_report_does(tmp_path, capsys):
    rp.reproduce("oscillation", "smoke", tmp_path / "z")
    assert main(["plot", str(tmp_path / "z")]) == 0
    page = (tmp_path / "z" / "report.html").read_text()
    assert "fit: Zhang et al. Fig. 1a" in page and "<img" in page
    assert main(["plot", str(tmp_path / "z" / "runs")]) == 0   # a sweep folder: the same
    assert (tmp_path / "z" / "runs" / "report.html").is_file()


def fake_noisy_fit(path: Path, beta: float, p: float, seed: int, nats_per_example: float, acc_noisy: float,
                   n: int = 100, epochs: int = 4, drift: float = 0.0):
    """A finished learned-noise run: its information (nats per example) and noisy train accuracy at the
    end, `drift` nats per example higher at the earlier epochs (a run still falling)."""
    import math
    run = RunDir(path)
    run.create({"corrupt": f"labels={p}", "info_weight": beta, "seed": seed}, {}, protocol="fit")
    for e in range(1, epochs + 1):
        nats = nats_per_example + (drift if e < epochs else 0.0)
        run.append_metrics({"epoch": e, "train_acc": min(1.0, acc_noisy + 0.05), "test_acc": 0.5,
                            "train_acc_noisy": acc_noisy, "kl_init_bits": nats * n / math.log(2),
                            "train_examples": n, "classes": 10})
    run.write_status("done")
    run.unlock()


def test_learned_noise_checks_on_hand_made_runs(tmp_path):
    import math
    from rotelab.protocols import weight_information as wi
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "beta", "protocol": "fit"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))
    # at N 100 and 400: random labels fit up to beta 1 and give way above it (noisy accuracy 0.9, 0.9,
    # 0.8, then 0.1 at 10); at beta 1 they cost 3.5 nats per example more than true labels
    acc = {0.01: 0.9, 0.1: 0.9, 1.0: 0.8, 10.0: 0.1}
    info = {0.01: (20.0, 30.0), 0.1: (2.0, 5.5), 1.0: (0.5, 4.0), 10.0: (0.1, 0.1)}
    for n in (100, 400):
        for beta in acc:
            for seed, jitter in enumerate((-0.1, 0.0, 0.1)):
                fake_noisy_fit(tmp_path / "beta" / f"n{n}-b{beta}-p0-s{seed}", beta, 0.0, seed, info[beta][0] + jitter, 0.95, n)
                fake_noisy_fit(tmp_path / "beta" / f"n{n}-b{beta}-p1-s{seed}", beta, 1.0, seed, info[beta][1] + jitter, acc[beta], n)
    result = wi.check_information_bounds_the_fit(ctx, "beta")
    # Fano at 0.8 of 10 classes: ln 10 - h(0.8) - 0.2 ln 9 = 1.363 nats an example, below 3.9 held
    assert result.passed and result.numbers["least_ratio"] == pytest.approx(3.9 / wi.fano_nats(0.8, 10))
    assert wi.fano_nats(0.8, 10) == pytest.approx(math.log(10) + 0.8 * math.log(0.8) + 0.2 * math.log(0.2) - 0.2 * math.log(9))
    result = wi.check_transition_near_one(ctx, "beta")
    # halfway between chance and 0.9 is 0.5, crossed between beta 1 (0.8) and 10 (0.1) at t = 0.3 / 0.7
    assert result.passed and result.numbers["100"]["transition_beta"] == pytest.approx(10 ** (0.3 / 0.7))
    result = wi.check_nats_per_example(ctx, "beta")
    d = result.numbers["by_N"]["400"]
    assert result.passed and d["judged_beta"] == 1.0 and d["differences"]["1"]["mean"] == pytest.approx(3.5)
    assert d["differences"]["1"]["kind"] == "Welch t 95%" and d["differences"]["1"]["n"] == 3
    assert wi.check_runs_settled(ctx, "beta").passed
    result = wi.report_information_falls_with_beta(ctx, "beta")
    assert result.passed is None and result.numbers["N 100 p 1"]["nats"] == pytest.approx([30.0, 5.5, 4.0, 0.1])
    assert result.numbers["N 100 p 1"]["spearman"] > 0.9
    assert wi.fig_weight_information(ctx, "beta")[0].is_file()
    # a random-label net holding less than its fit needs, a cost far from A&S's figure, a run still
    # falling: each check fails
    fake_noisy_fit(tmp_path / "beta" / "n100-b0.1-p1-s9", 0.1, 1.0, 9, 0.5, 0.9, 100, drift=1.0)
    assert not wi.check_information_bounds_the_fit(ctx, "beta").passed
    assert not wi.check_runs_settled(ctx, "beta").passed
    for seed in range(3):
        fake_noisy_fit(tmp_path / "beta" / f"n400-b1.0-p1-s{seed + 3}", 1.0, 1.0, seed + 3, 60.0, 0.8, 400)
    assert not wi.check_nats_per_example(ctx, "beta").passed
    assert math.isclose(wi.fano_nats(1.0, 10), math.log(10)) and wi.fano_nats(0.1, 10) == 0.0


def test_fano_and_the_transition_by_hand():
    import math
    from rotelab.protocols.weight_information import fano_nats, transition_beta
    assert fano_nats(0.9, 2) == pytest.approx(math.log(2) + 0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    # at chance Fano's bound is 0 exactly: ln K = h(1/K) + (1 - 1/K) ln(K - 1)
    assert fano_nats(1 / 10 + 1e-12, 10) == pytest.approx(0.0, abs=1e-9)
    assert transition_beta([0.1, 1, 10], [0.9, 0.9, 0.1], 0.1) == pytest.approx(10 ** 0.5)
    assert transition_beta([0.1, 1, 10], [0.9, 0.8, 0.7], 0.1) == math.inf


def test_memorizing_ibs_n_series_has_its_own_n_at_every_scale():
    """The n-series step compares N with the planes' N: at no scale may the two be the same runs."""
    from rotelab.reproduce import load_study
    study = load_study("memorizing-ib")
    for scale in study.scales:
        steps = {s["name"]: s["base"] for s in study.steps(scale)}
        assert steps["n-series"].get("subset") != steps["planes"].get("subset"), scale


def test_the_removal_check_judges_the_largest_k_from_the_runs(tmp_path):
    """Feldman & Zhang's check on hand-made runs: the most memorized removed cost more at the largest K."""
    from types import SimpleNamespace
    from rotelab.protocols.fit_study import check_removal_costs_more
    from rotelab.store import RunDir
    accs = {"none": [0.90, 0.91, 0.90], "random:100": [0.89, 0.88, 0.89], "mem:100:x": [0.86, 0.85, 0.86]}
    runs = []
    for remove, values in accs.items():
        for i, acc in enumerate(values):
            run = RunDir(tmp_path / f"{remove.replace(':', '_')}-{i}")
            run.create({"remove": None if remove == "none" else remove, "seed": i}, {})
            run.write_status("done", final={"test_acc": acc})
            runs.append(run)
    ctx = SimpleNamespace(runs=lambda step: runs)
    value, expected, passed = check_removal_costs_more(ctx, "removal")
    assert passed is True and "K = 100: random 0.8867" in value and "most memorized 0.8567" in value
    accs["mem:100:x"] = [0.89, 0.88, 0.90]
    for run in runs[6:]:
        run.write_status("done", final={"test_acc": 0.89})
    assert check_removal_costs_more(ctx, "removal")[2] is False


def test_check_numbers_are_stored_as_json_numbers():
    import math
    from rotelab.measures.stats import Interval
    from rotelab.protocol import CheckResult
    from rotelab.reproduce import json_numbers
    numbers = {"a": np.float32(0.5), "b": np.arange(3), "c": Interval(1.0, 0.5, 1.5, 3, "t 95%"), "d": math.inf,
               2: (np.int64(4), float("nan"))}
    assert json_numbers(numbers) == {"a": 0.5, "b": [0, 1, 2], "d": None, "2": [4, None],
                                     "c": {"mean": 1.0, "lo": 0.5, "hi": 1.5, "n": 3, "kind": "t 95%"}}
    value, expected, passed = CheckResult("v", "e", True, numbers)   # unpacks as a words-only check
    assert (value, expected, passed) == ("v", "e", True)


def test_a_ranking_holds_only_at_every_length_and_in_every_draw():
    from rotelab.protocols.memorize_study import verdict
    above = {"difference": 0.02, "lo": 0.01, "hi": 0.03, "per_draw": [0.01, 0.02, 0.03]}
    one_draw_below = {**above, "per_draw": [-0.01, 0.03, 0.04]}
    below = {"difference": -0.02, "lo": -0.03, "hi": -0.01, "per_draw": [-0.01, -0.02, -0.03]}
    assert verdict({10: above, 20: above}) == "above"
    assert verdict({10: above, 20: one_draw_below}) == "mixed"
    assert verdict({10: above, 20: below}) == "mixed"
    assert verdict({10: below, 20: below}) == "below"
