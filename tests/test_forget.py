"""The forget protocol's bookkeeping on digits."""

import json

import numpy as np
import pytest
import torch

from conftest import Crash, strip_times
from rotelab.cli import main
from rotelab.protocols.forget import ForgetConfig
from rotelab.engine import Hook
from rotelab.runner import resume
from rotelab.protocols.forget import build, forget, stage2_from
from rotelab.store import RunDir


def cfg_of(**kw):
    base = dict(dataset="digits", corrupt="labels=1.0", val_corrupt="none", val_size=200, epochs=8,
                epochs2=5, lr=0.1, progress=False, hist_every=0, until_train_acc=None,
                checkpoint_every=0)
    base.update(kw)
    return ForgetConfig(**base)


class Spy(Hook):
    """Records how many examples each epoch trained on and the lr it used."""

    def __init__(self):
        self.sizes = []

    def on_epoch_end(self, loop, result):
        self.sizes.append(len(loop.fit_y))


def run_with_spy(cfg, path):
    """A forget run trained with a Spy ahead of every hook: (run, loop, spy)."""
    run = RunDir.check_new(path)
    loop, switch = build(cfg, run)
    spy = Spy()
    loop.hooks.insert(0, spy)
    run.create(cfg.to_dict(), {}, protocol="forget")
    loop.run()
    return run, loop, spy


def test_stages_epochs_and_what_each_stage_trains_on(tmp_path):
    run, loop, spy = run_with_spy(cfg_of(), tmp_path / "r")
    m = run.read_metrics()
    assert [r["epoch"] for r in m] == list(range(1, 14))
    assert [r["stage"] for r in m] == [1] * 8 + [2] * 5
    n_train, n_val = len(loop.splits["train"]), len(loop.splits["val"])
    assert n_val == 200
    # the spy runs before the switch: the boundary epoch still trained on both parts
    assert spy.sizes == [n_train + n_val] * 8 + [n_train] * 5
    assert {"train_acc", "val_acc", "test_acc", "val_acc_corrupted"} <= set(m[0])
    assert (run.checkpoints / "stage1.pt").is_file()
    ex = run.read_examples()
    assert ex["val_correct"].shape[0] == 13 and int(ex["n_val"]) == 200
    assert not ex["val_corrupted"].any() and ex["train_corrupted"].mean() > 0.8


def test_stage2_on_train_and_val_keeps_training_on_both(tmp_path):
    run, loop, spy = run_with_spy(cfg_of(epochs=3, epochs2=2, stage2_on="train+val"), tmp_path / "r")
    n = len(loop.splits["train"]) + len(loop.splits["val"])
    assert spy.sizes == [n] * 5
    assert [r["stage"] for r in run.read_metrics()] == [1, 1, 1, 2, 2]


def test_norms_of_the_scale_invariant_weights(tmp_path):
    run = forget(cfg_of(model="mlp", widths=[16], batch_norm=True, epochs=2, epochs2=1, norms=True), tmp_path / "r")
    m = run.read_metrics()[-1]
    si = (m["weight_norm/layers.0.0.weight"] ** 2) ** 0.5
    assert m["si_weight_norm"] == pytest.approx(si)
    assert m["si_eff_lr"] == pytest.approx(m["lr"] / si ** 2)
    assert m["weight_norm"] > m["si_weight_norm"]   # the classifier counts in the one, not the other
    plain = forget(cfg_of(model="mlp", widths=[16], epochs=1, epochs2=1, norms=True), tmp_path / "p")
    assert "si_weight_norm" not in plain.read_metrics()[-1]


def test_stage1_ends_when_both_parts_are_fit(tmp_path):
    run = forget(cfg_of(epochs=300, epochs2=3, until_train_acc=1.0), tmp_path / "r")
    m = run.read_metrics()
    s1 = [r for r in m if r["stage"] == 1]
    assert s1[-1]["train_acc"] == 1.0 and s1[-1]["val_acc"] == 1.0
    assert all(r["train_acc"] < 1.0 or r["val_acc"] < 1.0 for r in s1[:-1])
    assert len(m) == len(s1) + 3
    status = run.read_status()
    assert status["fit_epoch"] == status["summary"]["stage1_end"] == len(s1)


def test_stage2_goes_on_with_the_schedule_or_restarts_it(tmp_path):
    go_on = forget(cfg_of(schedule="exp", lr_gamma=0.8), tmp_path / "a").read_metrics()
    assert [r["lr"] for r in go_on] == pytest.approx([0.1 * 0.8 ** i for i in range(13)])
    reset = forget(cfg_of(schedule="exp", lr_gamma=0.8, lr2=0.05, schedule2="constant"), tmp_path / "b").read_metrics()
    assert [r["lr"] for r in reset[8:]] == pytest.approx([0.05] * 5)
    assert strip_times(reset[:8]) == strip_times(go_on[:8])


def test_reset_keeps_the_momentum_buffers(tmp_path):
    cfg = cfg_of(reset_lr=True)
    run = RunDir.check_new(tmp_path / "r")
    loop, switch = build(cfg, run)
    run.create(cfg.to_dict(), {}, protocol="forget")
    for _ in range(3):
        loop.run_epoch()
    before = [s["momentum_buffer"].clone() for s in loop.opt.state.values()]
    switch.apply(loop, loop.epoch)
    after = [s["momentum_buffer"] for s in loop.opt.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert loop.opt.param_groups[0]["lr"] == 0.1 and loop.sched.last_epoch == 0


@pytest.mark.parametrize("crash_at", [5, 8, 11])   # in stage 1, at the boundary, in stage 2
@pytest.mark.parametrize("kw", [{}, dict(reset_lr=True, optimizer2="adam", lr2=0.001)])
def test_resume_equals_uninterrupted(tmp_path, crash_at, kw):
    cfg = cfg_of(**kw)
    full = forget(cfg, tmp_path / "full")
    run = RunDir.check_new(tmp_path / "cut")
    loop, _ = build(cfg, run)
    loop.hooks.append(Crash(crash_at))
    run.create(cfg.to_dict(), {}, protocol="forget")
    with pytest.raises(RuntimeError):
        loop.run()
    resumed = resume(tmp_path / "cut")
    assert strip_times(resumed.read_metrics()) == strip_times(full.read_metrics())
    a, b = full.read_examples(), resumed.read_examples()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.read_status()["summary"] == full.read_status()["summary"]


def test_stage2_from_a_stage1_checkpoint_equals_the_original_stage2(tmp_path):
    full = forget(cfg_of(save_epochs=[6]), tmp_path / "full")
    again = stage2_from(full.checkpoints / "stage1.pt", tmp_path / "again", {})
    assert strip_times(again.read_metrics()) == strip_times(full.read_metrics())
    cfg = json.loads(again.config_file.read_text())
    assert cfg["stage2_from"].endswith("stage1.pt")
    # an earlier stage-1 checkpoint with other stage-2 options: stage 2 starts at epoch 7
    other = stage2_from(full.checkpoints / "epoch_0006.pt", tmp_path / "other", {"lr2": 0.01, "epochs2": 3})
    m = other.read_metrics()
    assert [r["epoch"] for r in m] == list(range(1, 10))
    assert [r["stage"] for r in m] == [1] * 6 + [2] * 3
    assert strip_times(m[:6]) == strip_times(full.read_metrics()[:6])
    assert [r["lr"] for r in m[6:]] == [0.01] * 3
    assert other.read_examples()["train_correct"].shape[0] == 9


def test_stage2_from_refuses_stage1_options_and_stage2_checkpoints(tmp_path, capsys):
    full = forget(cfg_of(epochs=3, epochs2=2), tmp_path / "full")
    capsys.readouterr()
    ckpt = str(full.checkpoints / "stage1.pt")
    assert main(["forget", "--stage2-from", ckpt, "--lr", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["forget", "--stage2-from", str(full.last_checkpoint), "--out", str(tmp_path / "y")]) == 2
    assert "stage-2 checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_forget_plot_and_examples(tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["forget", "--dataset", "digits", "--val-size", "200", "--train-corrupt", "labels=1.0",
                 "--val-corrupt", "labels=0.0", "--epochs1", "6", "--epochs2", "4", "--until-fit", "1.0",
                 "--lr", "0.1", "--no-progress", "--hist-every", "0", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["protocol"] == "forget" and cfg["corrupt"] == "labels=1.0" and cfg["epochs"] == 6
    assert main(["plot", str(out)]) == 0
    assert (out / "figures" / "forget.png").is_file()
    other = tmp_path / "g"
    assert main(["fit", "--dataset", "digits", "--epochs", "3", "--no-progress", "--hist-every", "0",
                 "--out", str(other)]) == 0
    assert main(["examples", str(out), str(other), "--figure", str(tmp_path / "osc.png")]) == 0
    summary = json.loads((out / "examples_summary.json").read_text())
    assert set(summary) == {"source", "train", "val", "test"}
    train = summary["train"]
    assert train["examples"] == train["clean"]["examples"] + train["corrupted"]["examples"]
    assert train["corrupted"]["examples"] > 0.8 * train["examples"]
    assert (tmp_path / "osc.png").stat().st_size > 10_000
    assert (out / "figures" / "examples.png").is_file()
    # --resume works from either command
    assert main(["forget", "--resume", str(out)]) == 0


def test_the_figure_title_says_what_stage_2_was_or_that_there_was_none():
    from rotelab.plots import forget_title
    cfg = {**ForgetConfig(corrupt="labels=0.0", val_corrupt="labels=1.0", lr2=0.01).to_dict()}
    assert forget_title(cfg).endswith("; stage 2 at lr 0.01, train only")
    assert forget_title({**cfg, "lr2": None, "stage2_on": "train+val"}).endswith("; stage 2 at stage 1's last lr, train + val")
    assert forget_title({**cfg, "epochs2": 0}).endswith("; no stage 2") and "stage 2 at" not in forget_title({**cfg, "epochs2": 0})
