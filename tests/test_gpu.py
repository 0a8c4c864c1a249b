"""What a GPU user relies on, tested on the CPU: Ray gives points their GPU, precision, compile and
determinism options are applied and recorded, and AlexNet's local response norm has a deterministic
formulation with the same values."""

import sys
import types

import pytest
import torch

from rotelab.config import ConfigError, FitConfig
from rotelab.plan import PlannedRun, gpu_share, run_ray


@pytest.mark.parametrize("requested, devices, cluster, want", [
    (None, {"auto"}, 4.0, 1.0),     # a GPU cluster: each point gets a GPU, so auto finds it
    (None, {"auto"}, 0.0, 0.0),     # a CPU cluster: none
    (None, {"cpu"}, 4.0, 0.0),      # told to use the CPU
    (None, {"cuda:0"}, 2.0, 1.0),
    (0.25, {"auto"}, 1.0, 0.25),    # a share given is kept
    (0.0, {"auto"}, 4.0, 0.0),
])
def test_gpu_share(requested, devices, cluster, want):
    assert gpu_share(requested, devices, cluster) == want


@pytest.mark.parametrize("requested, cluster, flag", [(0.0, 4.0, "--gpus-per-point"), (None, 0.0, "--device")])
def test_cuda_without_a_gpu_share_is_one_line(requested, cluster, flag):
    with pytest.raises(ConfigError) as e:
        gpu_share(requested, {"cuda"}, cluster)
    assert e.value.field == flag and "\n" not in str(e.value)


def test_ray_tasks_ask_for_the_share_the_cluster_resource_view_gives(monkeypatch):
    """run_ray against a stand-in for Ray whose cluster reports GPUs: the task asks for one each."""
    asked = {}

    class Remote:
        def __init__(self, fn):
            self.fn = fn

        def remote(self, *args):
            return ("result", args)

    fake = types.SimpleNamespace(
        is_initialized=lambda: True,
        cluster_resources=lambda: {"CPU": 16.0, "GPU": 2.0},
        remote=lambda **kw: (asked.update(kw), Remote)[1],
        get=lambda refs: [[{"path": "p", "state": "done"}] for _ in refs])
    monkeypatch.setitem(sys.modules, "ray", fake)
    unit = [PlannedRun("fit", "p", FitConfig(device="auto"))]
    assert run_ray([unit], None, 1, None) == [{"path": "p", "state": "done"}]
    assert asked == {"num_cpus": 1, "num_gpus": 1.0}
    with pytest.raises(ConfigError, match="--gpus-per-point"):
        run_ray([[PlannedRun("fit", "p", FitConfig(device="cuda"))]], None, 1, 0.0)


def run_of(tmp_path, name, **kw):
    from rotelab.protocols.fit import fit
    base = dict(dataset="digits", widths=[16], epochs=2, lr=0.1, progress=False, hist_every=0, checkpoint_every=0)
    return fit(FitConfig(**{**base, **kw}), tmp_path / name)


def test_bf16_autocast_trains_on_the_cpu_and_is_recorded(tmp_path):
    fp32, bf16 = run_of(tmp_path, "fp32"), run_of(tmp_path, "bf16", precision="bf16")
    a, b = fp32.read_metrics()[-1], bf16.read_metrics()[-1]
    assert a["train_loss"] != b["train_loss"]                      # bf16 arithmetic was used ...
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)   # ... and trains the same net
    assert bf16.read_environment()["precision"] == "bf16" and fp32.read_environment()["precision"] == "fp32"
    ex = bf16.read_examples()
    assert ex["train_correct"].dtype == torch.tensor(0, dtype=torch.uint8).numpy().dtype   # records as ever


def test_tf32_and_determinism_flags_are_set_per_run_and_recorded(tmp_path):
    from rotelab.engine import Loop, TrainSpec
    run = run_of(tmp_path, "det", precision="tf32", deterministic=True)
    env = run.read_environment()
    assert env["precision"] == "tf32" and env["deterministic"] is True and env["compile"] is False
    assert torch.backends.cuda.matmul.allow_tf32 and torch.are_deterministic_algorithms_enabled()
    run_of(tmp_path, "plain")   # the next run in the process sets them back
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert not torch.are_deterministic_algorithms_enabled()
    assert TrainSpec.of(FitConfig()).precision == "fp32"
    assert Loop   # the flags are the loop's: a noise ramp's spec without them runs fp32


def test_compile_trains_and_checkpoints_keep_their_keys(tmp_path):
    run = run_of(tmp_path, "compiled", compile=True, epochs=1)
    assert run.read_status()["state"] == "done" and run.read_environment()["compile"] is True
    keys = set(run.load_checkpoint()["model"])
    assert keys == set(run_of(tmp_path, "eager", epochs=1).load_checkpoint()["model"])


def test_stacks_refuse_bf16_and_compile(tmp_path):
    from rotelab.runner import start_stack
    for kw in (dict(precision="bf16"), dict(compile=True)):
        cfgs = [FitConfig(dataset="digits", widths=[8], epochs=1, seed=s, progress=False, **kw) for s in (0, 1)]
        with pytest.raises(ConfigError, match="--vectorize-seeds"):
            start_stack(cfgs, [tmp_path / "a", tmp_path / "b"])
        assert not (tmp_path / "a").exists()


def test_alexnets_local_response_norm_equals_torchs():
    from rotelab.models.convnets import LocalResponseNorm
    x = torch.randn(3, 64, 5, 5, dtype=torch.float64) * 3
    for size in (9, 4):
        ours = LocalResponseNorm(size, alpha=0.001, beta=0.75, k=1.0)(x)
        assert torch.allclose(ours, torch.nn.LocalResponseNorm(size, alpha=0.001, beta=0.75, k=1.0)(x), rtol=1e-12)


def test_replay_names_a_device_that_differs(tmp_path):
    import json
    from rotelab.replay import replay
    run = run_of(tmp_path, "r")
    cfg = json.loads(run.config_file.read_text())
    cfg["environment"]["device"] = "cuda:0"
    run.config_file.write_text(json.dumps(cfg))
    assert replay(run.path, 1)["unlike"][0] == "device cuda:0 then, cpu now"


@pytest.mark.slow
def test_the_gpu_acceptance_check_runs_every_step_on_the_cpu(monkeypatch, tmp_path):
    """bench/gpu_check.py is prepared here, so that its one run on a GPU answers: every step at tiny
    sizes on the CPU, none failing, the determinism checks equal (the CPU is deterministic)."""
    import importlib.util
    from pathlib import Path
    monkeypatch.chdir(tmp_path)
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    figures = check.main(["--device", "cpu", "--quick", "--no-suite"])
    assert figures["failed"] == []
    assert all(v == {"same_seed_equal": True, "resumed_equal": True}
               for k, v in figures["determinism"].items() if k not in ("ok", "seconds"))
    skipped = check.main(["--device", "cuda"]) if not torch.cuda.is_available() else {"skipped": "-"}
    assert "skipped" in skipped
