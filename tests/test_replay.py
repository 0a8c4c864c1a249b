"""rotelab replay: a run's first epochs trained again give its metrics bit for bit; a changed number
is found and named."""

import json

import pytest

from rotelab.cli import main
from rotelab.errors import ConfigError
from rotelab.protocols.fit import fit
from rotelab.replay import replay


def test_a_run_replays_bit_for_bit_and_a_changed_value_is_named(tmp_path, small_cfg, capsys):
    run = fit(small_cfg(epochs=4, corrupt="labels=0.5"), tmp_path / "run")
    r = replay(run.path, epochs=3)
    assert r["epochs"] == 3 and r["differences"] == [] and r["compared"] > 30
    assert main(["replay", str(run.path), "--epochs", "2"]) == 0
    assert "identical" in capsys.readouterr().out
    lines = run.metrics_file.read_text().splitlines()   # one number off in the last bit of epoch 2
    row = json.loads(lines[1])
    row["test_acc"] = row["test_acc"] + 2 ** -40
    lines[1] = json.dumps(row)
    run.metrics_file.write_text("\n".join(lines) + "\n")
    r = replay(run.path, epochs=3)
    assert [(e, k) for e, k, _, _ in r["differences"]] == [(2, "test_acc")]
    assert main(["replay", str(run.path)]) == 1
    assert "1 of" in capsys.readouterr().out


def test_a_replay_names_the_conditions_that_round_differently(tmp_path, small_cfg, capsys):
    import torch
    run = fit(small_cfg(epochs=2), tmp_path / "run")
    env = run.read_environment()
    assert env["threads"] == torch.get_num_threads() and env["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    config = json.loads(run.config_file.read_text())   # as if trained on 8 threads, with one number off
    config["environment"]["threads"] = 8
    run.config_file.write_text(json.dumps(config))
    lines = run.metrics_file.read_text().splitlines()
    row = json.loads(lines[0])
    row["test_acc"] += 2 ** -40
    run.metrics_file.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    assert replay(run.path, epochs=1)["unlike"] == [f"threads 8 then, {torch.get_num_threads()} now"]
    assert main(["replay", str(run.path), "--epochs", "1"]) == 1
    assert "trained with threads 8 then" in capsys.readouterr().out
    del config["environment"]["threads"]   # a run from before it was recorded
    run.config_file.write_text(json.dumps(config))
    r = replay(run.path, epochs=1)
    assert r["unlike"] == [] and not r["conditions_known"]
    assert main(["replay", str(run.path), "--epochs", "1"]) == 1
    assert "does not record its CPU kernels and threads" in capsys.readouterr().out


def test_a_run_stopped_early_replays_the_epochs_it_has(tmp_path, small_cfg):
    run = fit(small_cfg(epochs=2), tmp_path / "run")
    assert replay(run.path, epochs=5)["epochs"] == 2


def test_a_noise_ramp_is_not_replayed(tmp_path, small_cfg):
    from rotelab.protocols.noise import NoiseConfig, ramp
    src = fit(small_cfg(epochs=2), tmp_path / "src")
    ramps = ramp([src.path], NoiseConfig(steps=1, every=1, noise_samples=1, progress=False), tmp_path / "ramp")
    with pytest.raises(ConfigError, match="replay trains runs again"):
        replay(ramps[0].path)
