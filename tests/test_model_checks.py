"""The contract every model keeps, run over every registered model (built-in or plugin) and a model
of each other kind (torchvision, timm, an import path), as scikit-learn's estimator checks run over
every estimator: it builds for the data it claims, trains a step, resumes equal to an uninterrupted
run, and either stacks (stacked equals separate) or is refused a stack in one line before anything is
written, decided from the model itself (does a training pass draw random numbers?), never from a
config field's name."""

import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import Crash, strip_times
from rotelab.config import ConfigError, FitConfig
from rotelab.models import MODELS, random_in_training
from rotelab.protocols.fit import build_loop, fit
from rotelab.runner import resume, start_stack
from rotelab.store import RunDir

# small sizes of the built-in models (their defaults are paper-sized); other models as they come
SMALL = {"mlp": {"widths": [16]}, "wrn": {"depth": 10, "widen": 1}}
MODELS_CHECKED = [*MODELS.names(), "torchvision:resnet18", "timm:test_resnet", "toy_models:with_dropout"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3-channel 8x8 images of 3 classes (npz), and a module holding a builder with dropout."""
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x_train=rng.integers(0, 255, (24, 3, 8, 8), dtype=np.uint8), y_train=np.arange(24) % 3,
             x_test=rng.integers(0, 255, (9, 3, 8, 8), dtype=np.uint8), y_test=np.arange(9) % 3)
    (root / "toy_models.py").write_text(textwrap.dedent("""
        import torch
        def with_dropout(*, input_shape, num_classes, p=0.5):
            n = input_shape[0] * input_shape[1] * input_shape[2]
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 16), torch.nn.ReLU(),
                                       torch.nn.Dropout(p), torch.nn.Linear(16, num_classes))
    """))
    sys.path.insert(0, str(root))
    yield f"npz:{root / 'd.npz'}"
    sys.path.remove(str(root))


def cfg_of(dataset, model, **kw):
    args = {k: v for k, v in SMALL.get(model, {}).items()}
    base = dict(dataset=dataset, model=model, epochs=3, batch_size=8, lr=0.01, progress=False, hist_every=0,
                checkpoint_every=0)
    return FitConfig(**{**base, **kw}, model_args=args)


@pytest.mark.parametrize("model", MODELS_CHECKED)
def test_builds_trains_and_resumes_equal(data, model, tmp_path):
    cfg = cfg_of(data, model)
    full = fit(cfg, tmp_path / "full")
    m = full.read_metrics()
    assert len(m) == 3 and all(np.isfinite(r["train_loss"]) for r in m)
    run = RunDir.check_new(tmp_path / "cut")
    loop = build_loop(cfg, run)
    loop.hooks.append(Crash(2))
    run.create(cfg.to_dict(), {})
    with pytest.raises(RuntimeError):
        loop.run()
    resumed = resume(tmp_path / "cut")
    assert strip_times(resumed.read_metrics()) == strip_times(m)


@pytest.mark.parametrize("model", MODELS_CHECKED)
def test_stacks_equal_to_separate_or_is_refused_in_one_line(data, model, tmp_path):
    # full batches: ResNet-18's batch norm over 1x1 maps of 8 images amplifies rounding so much that a
    # stacked and a separate run part by 0.1 in loss at epoch 2 (both ways round alike at full batch:
    # they agree to 1e-8), which says nothing about the stack
    cfgs = [cfg_of(data, model, seed=s, epochs=2, batch_size=24) for s in (0, 1)]
    probe = build_loop(cfgs[0], RunDir(tmp_path / "probe"))
    if random_in_training(probe.model, (3, 8, 8)):
        with pytest.raises(ConfigError) as e:
            start_stack(cfgs, [tmp_path / "a", tmp_path / "b"])
        assert e.value.field == "--vectorize-seeds" and "\n" not in str(e.value)
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
        return
    together = start_stack(cfgs, [tmp_path / "a", tmp_path / "b"])
    for c, run in zip(cfgs, together):
        alone = fit(c, tmp_path / f"alone{c.seed}").read_metrics()
        for x, y in zip(run.read_metrics(), alone):
            assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4, abs=1e-5)
            assert x["test_acc"] == pytest.approx(y["test_acc"], abs=1 / 9 + 1e-9)   # one example may round over


def test_random_in_training_is_found_from_the_model():
    lin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))   # batch statistics: no draws
    assert not random_in_training(lin, (4,))
    assert random_in_training(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)), (4,))
    assert not random_in_training(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.0)), (4,))


def test_the_built_in_models_arguments_are_their_builders_own():
    """spec.BUILT_IN_MODEL_ARGS (read without torch, to fill and compare saved configs) is what each
    builder declares."""
    import json
    from rotelab.models import model_arguments
    from rotelab.spec import BUILT_IN_MODEL_ARGS
    for name, args in BUILT_IN_MODEL_ARGS.items():
        assert json.loads(json.dumps(model_arguments(name))) == args, name
    assert set(BUILT_IN_MODEL_ARGS) == {n for n in MODELS.names() if ":" not in n and n in MODELS
                                        and MODELS[n].__module__ == "rotelab.models"}


def test_older_spellings_fold_into_the_models_arguments():
    cfg = FitConfig(model="mlp", widths=[64, 8], batch_norm=True)
    assert cfg.model_args == {"widths": [64, 8], "activation": "relu", "batch_norm": True, "dropout": 0.0}
    assert FitConfig(model="tishby").model_args == {"activation": "tanh", "batch_norm": False}
    wrn = FitConfig.from_dict({"model": "wrn", "depth": 10, "widen": 1, "wrn_batch_norm": False, "widths": [512]})
    assert wrn.model_args == {"depth": 10, "widen": 1, "batch_norm": False, "zero_init_residual": False}
    assert "widths" not in wrn.to_dict() and "depth" not in wrn.to_dict()
    assert FitConfig(model="mlp", widths=[8], model_args={"widths": [16]}).model_args["widths"] == [16]   # --model-args wins
    with pytest.raises(ConfigError, match="--widths.*--model-args"):
        FitConfig(model="torchvision:resnet18", widths=[64])


def test_an_older_config_of_another_kind_of_model_loads():
    """Configs saved before models owned their arguments hold every older field at its default: those
    are no choice of the user's and do not refuse a torchvision model."""
    old = {"model": "torchvision:resnet18", "widths": [512], "activation": None, "batch_norm": False, "depth": 16,
           "widen": 4, "wrn_batch_norm": True, "model_args": {}}
    assert FitConfig.from_dict(old).model_args == {}
