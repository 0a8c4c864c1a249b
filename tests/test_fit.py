"""End-to-end behaviour of `fit` on small real data (scikit-learn digits)."""

import json

import numpy as np
import pytest
import torch

from conftest import Crash, strip_times
from rotelab.engine import Hook
from rotelab.measures.examples import unpack
from rotelab.runner import resume
from rotelab.protocols.fit import build_loop, fit
from rotelab.store import RunDir


def test_mlp_memorizes_random_labels_and_stops_when_fit(tmp_path, small_cfg):
    cfg = small_cfg(corrupt="labels=1.0", epochs=300, until_train_acc=1.0)
    run = fit(cfg, tmp_path / "rand")
    m = run.read_metrics()
    status = run.read_status()
    assert status["state"] == "done"
    assert m[-1]["train_acc"] == 1.0
    assert status["fit_epoch"] == m[-1]["epoch"] == len(m) < 300
    assert all(r["train_acc"] < 1.0 for r in m[:-1])
    assert m[-1]["test_acc"] < 0.25          # chance is 0.1
    assert m[-1]["train_acc_corrupted"] == 1.0  # the corrupted labels themselves are memorized


def test_mlp_generalizes_on_true_labels(tmp_path, small_cfg):
    run = fit(small_cfg(epochs=15), tmp_path / "true")
    last = run.read_metrics()[-1]
    assert last["test_acc"] > 0.9
    assert last["train_acc_corrupted"] is None and last["train_acc_clean"] == last["train_acc"]


def test_metrics_split_clean_and_corrupted_examples(tmp_path, small_cfg):
    run = fit(small_cfg(corrupt="labels=0.5", epochs=3, example_margins=True), tmp_path / "half")
    ex = run.read_examples()
    m = run.read_metrics()
    n = int(ex["n_train"])
    corrupted = ex["train_corrupted"]
    assert np.array_equal(corrupted, ex["train_labels_used"] != ex["train_labels_true"])
    for row, rec in zip(ex["train_correct"], m):
        c = unpack(row, n)
        assert rec["train_acc"] == pytest.approx(c.mean(), abs=1e-6)
        assert rec["train_acc_clean"] == pytest.approx(c[~corrupted].mean(), abs=1e-6)
        assert rec["train_acc_corrupted"] == pytest.approx(c[corrupted].mean(), abs=1e-6)
    assert ex["train_margin"].dtype == np.float16 and ex["train_margin"].shape == (3, n)
    # a positive margin means correct (float16 rounding aside)
    c = unpack(ex["train_correct"][-1], n)
    assert np.all(c[ex["train_margin"][-1] > 0.01]) and not np.any(c[ex["train_margin"][-1] < -0.01])


def test_intersection_and_union_bracket_the_accuracies(tmp_path, small_cfg):
    run = fit(small_cfg(corrupt="labels=1.0", epochs=8, lr=0.05), tmp_path / "osc")
    m = run.read_metrics()
    ex = run.read_examples()
    assert "train_intersection" not in m[0]
    for split in ("train", "test"):
        n = int(ex[f"n_{split}"])
        bits = unpack(ex[f"{split}_correct"], n)
        for prev, cur, rec in zip(m[:-1], m[1:], range(1, len(m))):
            inter, union = cur[f"{split}_intersection"], cur[f"{split}_union"]
            assert inter <= min(prev[f"{split}_acc"], cur[f"{split}_acc"]) + 1e-9
            assert max(prev[f"{split}_acc"], cur[f"{split}_acc"]) <= union + 1e-9
            assert inter == pytest.approx((bits[rec - 1] & bits[rec]).mean())
    # oscillation is real while memorizing: some examples flip each epoch
    assert any(r["train_union"] - r["train_intersection"] > 0.05 for r in m[1:])


def test_presentation_record_comes_from_the_training_passes(tmp_path, small_cfg):
    run = fit(small_cfg(epochs=3, example_record="presentation"), tmp_path / "pres")
    ex = run.read_examples()
    m = run.read_metrics()
    assert str(ex["source"]) == "presentation"
    for row, rec in zip(ex["train_correct"], m):
        assert unpack(row, int(ex["n_train"])).mean() == pytest.approx(rec["train_acc_presented"], abs=1e-6)


@pytest.mark.parametrize("source", ["presentation", "evaluation"])
def test_margins_and_bits_come_from_the_same_pass(tmp_path, small_cfg, source):
    run = fit(small_cfg(epochs=4, corrupt="labels=0.5", example_record=source, example_margins=True),
              tmp_path / source)
    ex = run.read_examples()
    for split in ("train", "test"):
        bits = unpack(ex[f"{split}_correct"], int(ex[f"n_{split}"]))
        margin = ex[f"{split}_margin"].astype(np.float32)
        decided = np.abs(margin) > 1e-2          # float16 rounding (and exact ties) aside
        assert decided.mean() > 0.9
        assert np.array_equal(bits[decided], margin[decided] > 0), split


def test_no_example_record(tmp_path, small_cfg):
    run = fit(small_cfg(epochs=2, example_record="none"), tmp_path / "none")
    assert not run.examples_file.exists()
    assert "train_intersection" not in run.read_metrics()[-1]


def crashed_run(cfg, path, at: int):
    """A run of cfg in `path` killed at the end of epoch `at` (after every hook of that epoch ran);
    returns the run and its loop."""
    run = RunDir.check_new(path)
    loop = build_loop(cfg, run)
    loop.hooks.append(Crash(at))
    run.create(cfg.to_dict(), {})
    with pytest.raises(RuntimeError):
        loop.run()
    return run, loop


@pytest.mark.parametrize("kw", [dict(corrupt="labels=0.5"), dict(corrupt="random-pixels=0.5", augment=True,
                                                                   optimizer="adam", lr=0.003, schedule="cosine")])
def test_resume_equals_an_uninterrupted_run(tmp_path, small_cfg, kw):
    cfg = small_cfg(epochs=6, example_margins=True, **kw)
    full = fit(cfg, tmp_path / "full")

    run, _ = crashed_run(cfg, tmp_path / "cut", 3)   # after checkpoint and status of epoch 3
    assert run.read_status()["state"] != "done"
    # simulate a kill that came after metrics/examples of epoch 4 but before its checkpoint
    run.append_metrics({"epoch": 4, "train_acc": -1})
    resumed = resume(tmp_path / "cut")
    assert strip_times(resumed.read_metrics()) == strip_times(full.read_metrics())
    a, b = full.read_examples(), resumed.read_examples()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    sa = torch.load(full.last_checkpoint)["model"]
    sb = torch.load(resumed.last_checkpoint)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert resumed.read_status()["state"] == "done"
    # TensorBoard after the kill and the resume: each epoch once, with the values of the metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(resumed.tb), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in tb.Scalars("acc/train")] == list(range(1, 7))
    assert [e.value for e in tb.Scalars("acc/train")] == pytest.approx([r["train_acc"] for r in full.read_metrics()])
    # ... and read file by file: no file holds an epoch twice or one past what metrics.jsonl keeps
    steps = [s for f in event_steps(resumed.tb) for s in f]
    assert sorted(steps) == list(range(1, 7))


def test_eval_every_evaluates_at_its_multiples_and_the_last_epoch_and_resumes(tmp_path, small_cfg):
    cfg = small_cfg(epochs=7, eval_every=3, example_margins=True, corrupt="labels=0.3")
    run = fit(cfg, tmp_path / "every3")
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows if "train_acc" in r] == [3, 6, 7]
    assert all("train_acc_presented" in r for r in rows)   # the training pass is logged every epoch
    ex = run.read_examples()
    assert list(ex["epochs"]) == [3, 6, 7] and len(ex["train_correct"]) == len(ex["train_prob"]) == 3
    # evaluation draws nothing and changes nothing: the evaluated epochs equal an every-epoch run's
    every = {r["epoch"]: r for r in strip_times(fit(small_cfg(**{**cfg.to_dict(), "eval_every": 1}),
                                                     tmp_path / "every1").read_metrics())}
    for r in strip_times(rows):   # (intersection and union: of consecutive evaluated epochs)
        same = {k: v for k, v in r.items() if not k.endswith(("_intersection", "_union"))}
        assert {k: v for k, v in every[r["epoch"]].items() if k in same} == same
    assert run.read_status()["final"]["train_acc"] == every[7]["train_acc"]
    # killed after an epoch without evaluation: the resume equals the uninterrupted run
    crashed, _ = crashed_run(cfg, tmp_path / "cut", 4)
    resumed = resume(tmp_path / "cut")
    assert strip_times(resumed.read_metrics()) == strip_times(rows)
    b = resumed.read_examples()
    assert all(np.array_equal(ex[k], b[k]) for k in ex)


def test_resume_cuts_every_per_epoch_row_of_examples_back(tmp_path, small_cfg):
    """examples.npz written after the checkpoint (a kill between them): its margins and probabilities
    are cut back to the checkpoint with its bits."""
    cfg = small_cfg(epochs=5, example_margins=True, checkpoint_every=3600, save_epochs=[2])
    full = fit(cfg, tmp_path / "full")
    run, _ = crashed_run(cfg, tmp_path / "cut", 4)
    run.write_examples({**full.read_examples()})   # rows of all 5 epochs on disk, checkpoint at epoch 2
    resumed = resume(tmp_path / "cut")
    a, b = full.read_examples(), resumed.read_examples()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def event_steps(folder) -> list[list[int]]:
    """The scalar steps of every event file, each file read on its own (as tbparse or a pandas export
    reads them), in file order."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    return [[e.step for e in map(Event.FromString, RawEventFileLoader(str(f)).Load()) if e.summary.value and
             e.summary.value[0].HasField("simple_value")] for f in sorted(folder.glob("events.out.tfevents.*"))]


def test_resume_of_a_finished_run_changes_nothing(tmp_path, small_cfg):
    run = fit(small_cfg(epochs=2), tmp_path / "r")
    before = run.metrics_file.read_bytes()
    resume(tmp_path / "r")
    assert run.metrics_file.read_bytes() == before


def test_run_directory_contents(tmp_path, small_cfg):
    run = fit(small_cfg(epochs=4, hist_every=2, save_epochs=[2]), tmp_path / "r")
    cfg = json.loads(run.config_file.read_text())
    assert cfg["dataset"] == "digits" and cfg["epochs"] == 4
    assert cfg["environment"]["torch"] == torch.__version__
    assert (run.checkpoints / "epoch_0002.pt").is_file() and run.last_checkpoint.is_file()
    required = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
                "train_acc_clean", "train_acc_corrupted"}
    assert required <= set(run.read_metrics()[0])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run.tb), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"acc/train", "acc/test", "loss/train", "intersection/train", "union/test", "lr"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("acc/train")] == [1, 2, 3, 4]
    assert [e.value for e in acc.Scalars("acc/test")] == pytest.approx([r["test_acc"] for r in run.read_metrics()])
    hist_steps = {e.step for e in acc.Histograms("weights/head.weight")}
    assert hist_steps == {1, 2, 4}


def test_checkpoints_follow_the_interval_and_resume_still_matches(tmp_path, small_cfg):
    cfg = small_cfg(epochs=6, checkpoint_every=1e9, save_epochs=[2], corrupt="labels=0.5")
    full = fit(cfg, tmp_path / "full")
    run = RunDir.check_new(tmp_path / "cut")
    loop = build_loop(cfg, run)
    saved = []

    class Watch(Hook):
        def on_epoch_end(self, loop, result):
            saved.append(loop.persist)

    loop.hooks += [Watch(), Crash(4)]
    loop.hooks[[type(h).__name__ for h in loop.hooks].index("MetricsWriter")].flush_secs = 0   # every line on disk
    run.create(cfg.to_dict(), {})
    with pytest.raises(RuntimeError):
        loop.run()
    assert saved == [False, True, False, False]       # only the chosen epoch so far
    assert torch.load(run.last_checkpoint)["epoch"] == 2
    assert run.read_examples()["epochs"].tolist() == [1, 2]
    assert len(run.read_metrics()) == 4               # appended every epoch, cut back on resume
    resumed = resume(tmp_path / "cut")
    assert strip_times(resumed.read_metrics()) == strip_times(full.read_metrics())
    assert full.read_examples()["epochs"].tolist() == list(range(1, 7))


def test_metrics_reach_the_disk_within_a_second_between_checkpoints(tmp_path, small_cfg):
    """metrics.jsonl is flushed at least every second, not only with the checkpoint: a reader
    following a run sees its lines while it runs."""
    import time
    from rotelab.hook import REPORT
    cfg = small_cfg(epochs=3, checkpoint_every=3600.0)
    run = RunDir.check_new(tmp_path / "r")
    loop = build_loop(cfg, run)
    seen = []

    class Follow(Hook):
        phase = REPORT   # after the metrics writer

        def on_epoch_end(self, loop, result):
            seen.append(len(run.metrics_file.read_text().splitlines()))
            if result.epoch == 1:
                time.sleep(1.05)

    loop.hooks.append(Follow())
    loop.hooks.sort(key=lambda h: h.phase)
    run.create(cfg.to_dict(), {})
    loop.run()
    assert seen[1] == 2 and seen[2] == 3   # on disk without a checkpoint (none until the end)


def test_resume_from_before_the_first_checkpoint_shows_each_epoch_once(tmp_path, small_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = small_cfg(epochs=5, checkpoint_every=3600.0)   # no checkpoint until the end
    run, loop = crashed_run(cfg, tmp_path / "cut", 3)
    loop.hooks[[type(h).__name__ for h in loop.hooks].index("TensorBoardWriter")].writer.close()   # on disk
    run.unlock()
    assert not run.last_checkpoint.is_file() and event_steps(run.tb) == [[1, 2, 3]]
    resumed = resume(tmp_path / "cut")
    tb = EventAccumulator(str(resumed.tb), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in tb.Scalars("acc/train")] == list(range(1, 6))
    assert [s for f in event_steps(resumed.tb) for s in f] == list(range(1, 6))   # the old file holds none


def test_resume_after_the_last_checkpoint_but_before_the_final_status(tmp_path, small_cfg):
    run = fit(small_cfg(epochs=3), tmp_path / "r")
    final = run.read_status()["final"]
    run.write_status("running")   # killed between the final checkpoint and the final status
    resume(tmp_path / "r")
    assert run.read_status()["state"] == "done" and run.read_status()["final"] == final


def test_a_run_whose_output_is_not_a_terminal_prints_progress_lines(tmp_path, small_cfg, capsys, monkeypatch):
    from rotelab.hooks import ProgressBar
    monkeypatch.setattr(ProgressBar, "LINE_SECS", 0.0)
    fit(small_cfg(epochs=3, progress=True), tmp_path / "r")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("r: epoch 3/3, train acc ") and "min left" in lines[-1]


def test_batch_scalars_log_every_batch_and_survive_a_resume(tmp_path, small_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from rotelab.data import load_data
    from rotelab.models import build_model
    cfg = small_cfg(epochs=4, batch_scalars=True, batch_norm=True, weight_decay=1e-3, schedule="step", lr_step=2,
                    lr_gamma=0.5)
    full = fit(cfg, tmp_path / "full")
    n = len(load_data(cfg).train)
    per_epoch = -(-n // cfg.batch_size)
    tb = EventAccumulator(str(full.tb / "batch"), size_guidance={"scalars": 0}).Reload()
    values = {tag: [e.value for e in tb.Scalars(tag)] for tag in tb.Tags()["scalars"]}
    assert [e.step for e in tb.Scalars("batch/lr")] == list(range(1, 4 * per_epoch + 1))
    assert values["batch/lr"] == pytest.approx([0.1] * 2 * per_epoch + [0.05] * 2 * per_epoch)
    # the first batch sees the initial weights; each epoch's batches average to its presented loss
    model = build_model(cfg, load_data(cfg).input_shape, 10)
    initial = torch.stack([p.detach().norm() for n_, p in model.named_parameters() if p.dim() > 1]).norm()
    assert values["batch/weight_norm"][0] == pytest.approx(float(initial), rel=1e-5)
    sizes = np.array([cfg.batch_size] * (per_epoch - 1) + [n - cfg.batch_size * (per_epoch - 1)])
    losses = 10 ** np.array(values["batch/log10_loss"]).reshape(4, per_epoch)
    assert (losses * sizes).sum(1) / n == pytest.approx([r["train_loss_presented"] for r in full.read_metrics()], rel=1e-4)
    assert [r["batches"] for r in full.read_metrics()] == [per_epoch * e for e in range(1, 5)]

    crashed_run(cfg, tmp_path / "cut", 2)
    resumed = resume(tmp_path / "cut")
    steps = [s for f in event_steps(resumed.tb / "batch") for s in f]
    assert sorted(steps) == list(range(1, 4 * per_epoch + 1))   # each batch once, in one event
    tb2 = EventAccumulator(str(resumed.tb / "batch"), size_guidance={"scalars": 0}).Reload()
    assert [e.value for e in tb2.Scalars("batch/log10_loss")] == pytest.approx(values["batch/log10_loss"], abs=1e-6)


def test_mlp_batch_norm_comes_before_each_activation():
    from rotelab.config import FitConfig
    from rotelab.models import build_model
    model = build_model(FitConfig(widths=[8, 4], batch_norm=True), (1, 8, 8), 10)
    assert [type(m).__name__ for m in model.layers[1]] == ["Linear", "BatchNorm1d", "ReLU"]
    plain = build_model(FitConfig(widths=[8, 4]), (1, 8, 8), 10)
    assert [type(m).__name__ for m in plain.layers[1]] == ["Linear", "ReLU"]
