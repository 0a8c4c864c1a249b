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
