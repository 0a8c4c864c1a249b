"""A researcher's own data and model, registering nothing in rotelab: npz, ImageFolder and saved
Hugging Face datasets, torchvision, timm and a builder from a test-local module, and a labels file in
CIFAR-10N's format scored like our own corruption."""

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

import rotelab
from rotelab.cli import main, parse_kwargs
from rotelab.config import ConfigError, FitConfig
from rotelab.store import RunDir

K, SIDE = 3, 8   # classes, image side


def images(n, seed):
    """Class-coloured 8x8 RGB images with noise: learnable, so a fit moves."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = rng.integers(0, 80, (n, SIDE, SIDE, 3))
    x[np.arange(n), :, :, y] += 150
    return x.astype(np.uint8), y


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The three file sources, written here, and a module with a builder on sys.path."""
    root = tmp_path_factory.mktemp("own")
    (xtr, ytr), (xte, yte) = images(48, 0), images(18, 1)
    np.savez(root / "data.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=np.array(["r", "g", "b"]))
    from PIL import Image
    for split, (x, y) in {"train": (xtr, ytr), "test": (xte, yte)}.items():
        for i, (img, c) in enumerate(zip(x, y)):
            folder = root / "folder" / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    import datasets
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["r", "g", "b"])})
    ds = datasets.DatasetDict({s: datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in x], "label": y.tolist()},
                                                              features=features)
                               for s, (x, y) in {"train": (xtr, ytr), "test": (xte, yte)}.items()})
    ds.save_to_disk(str(root / "hf"))
    (root / "my_models.py").write_text(textwrap.dedent("""
        import torch
        def tiny(*, input_shape, num_classes, hidden=16, dropout=0.0):
            n = 1
            for s in input_shape:
                n *= s
            if not 0 <= dropout < 1:
                raise ValueError(f"dropout has to be in [0, 1), got {dropout}")
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, hidden), torch.nn.ReLU(),
                                       torch.nn.Dropout(dropout), torch.nn.Linear(hidden, num_classes))
    """))
    sys.path.insert(0, str(root))
    yield root, (xtr, ytr, xte, yte)
    sys.path.remove(str(root))


def sources(root):
    return {"npz": f"npz:{root / 'data.npz'}", "imagefolder": f"imagefolder:{root / 'folder'}",
            "hf": f"hf:{root / 'hf'}"}


@pytest.mark.parametrize("kind", ["npz", "imagefolder", "hf"])
def test_every_source_reads_the_same_images_and_records_what_it_read(own, kind):
    from rotelab.data import load_data
    root, (xtr, ytr, xte, yte) = own
    data = load_data(FitConfig(dataset=sources(root)[kind], normalize="none"))
    # the same pixels in every source, channels first, scaled to [0, 1]
    want = torch.from_numpy(xtr.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    if kind == "imagefolder":   # ImageFolder's order: class by class, files by name
        idx = np.concatenate([np.flatnonzero(ytr == c) for c in range(K)])
        want, ytr = want[idx], ytr[idx]
    assert torch.equal(data.train.x, want) and data.train.y.tolist() == ytr.tolist()
    assert data.num_classes == K and len(data.test) == len(yte) and data.input_shape == (3, SIDE, SIDE)
    assert data.record["train"] == 48 and data.record["test"] == 18 and data.record["classes"] == K
    assert data.record["labels_sha256"] and data.record["source"] == kind


def test_a_run_on_each_source_with_each_kind_of_model(own, tmp_path):
    """fit on npz with torchvision, on an ImageFolder with timm, on a saved HF dataset with a builder of
    a test-local module; config.json records the data read."""
    root, _ = own
    src = sources(root)
    cases = [(src["npz"], "torchvision:resnet18", {}), (src["imagefolder"], "timm:test_resnet", {}),
             (src["hf"], "my_models:tiny", {"hidden": 12})]
    for i, (dataset, model, args) in enumerate(cases):
        run = rotelab.fit(dataset=dataset, model=model, model_args=args, epochs=2, batch_size=16, lr=0.05,
                          progress=False, hist_every=0, out=tmp_path / f"r{i}")
        assert run.status["state"] == "done" and len(run.metrics) == 2
        saved = json.loads((tmp_path / f"r{i}" / "config.json").read_text())
        assert saved["data"]["labels_sha256"] and saved["model"] == model and saved["model_args"] == args
    # the builder got the data's shape and classes and its own argument
    assert RunDir(tmp_path / "r2").read_environment()["parameters"] == 3 * SIDE * SIDE * 12 + 12 + 12 * K + K


@pytest.mark.parametrize("kind, mem_model, plane_model, layers", [
    ("npz", "my_models:tiny", "timm:test_resnet", "layer1,global_pool"),
    ("imagefolder", "timm:test_resnet", "torchvision:resnet18", "layer1,layer4,avgpool"),
    ("hf", "torchvision:resnet18", "my_models:tiny", "2,3"),
])
def test_memorize_and_infoplane_on_own_data_and_models(own, tmp_path, kind, mem_model, plane_model, layers):
    """Feldman & Zhang's estimates and an information plane on each source, each with another kind of
    model; infoplane captures the named modules (forward hooks), the output last."""
    root, _ = own
    dataset = sources(root)[kind]
    mem = rotelab.memorize(dataset=dataset, model=mem_model, epochs=2, models=4, stack=2, train_fraction=0.5,
                           signals=False, cscore_fractions=[], lr=0.05, batch_size=16, hist_every=0,
                           checkpoint_every=0, progress=False, out=tmp_path / "mem")
    est = json.loads((tmp_path / "mem" / "memorization.json").read_text())
    assert len(mem) == 4 and est["models"] == 4 and est["n_train"] == 48 and est["mem_undefined"] < 48
    plane = rotelab.infoplane(dataset=dataset, model=plane_model, layers=layers, estimators="binning", captures=2,
                              epochs=2, batch_size=16, lr=0.05, progress=False, hist_every=0, out=tmp_path / "ip")
    info = plane.info
    n_layers = len(layers.split(",")) + 1
    assert sorted(info.layer.unique()) == list(range(n_layers))   # the named modules, the output last
    assert (info.ixt >= 0).all() and (info.ixt <= np.log2(48) + 1e-9).all()


def test_an_image_folder_too_large_for_memory_is_one_line(own, tmp_path, monkeypatch):
    from rotelab.data import sources as src
    from rotelab.data import load_data
    root, _ = own
    monkeypatch.setattr(src, "available_memory", lambda: 10_000)
    with pytest.raises(ConfigError) as e:
        load_data(FitConfig(dataset=f"imagefolder:{root / 'folder'}", subset=12))   # a fresh key: not cached
    assert e.value.field == "--dataset" and "48 images of 8x8x3" in str(e.value) and "GiB" in str(e.value)


def test_layer_outputs_are_the_named_modules_outputs():
    """Forward hooks give what the modules compute: a known model read by hand."""
    from rotelab.protocols.infoplane import layer_outputs
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4)
    a, b, out = layer_outputs(net, x, "logits", "0,1")
    assert torch.allclose(a, net[0](x)) and torch.allclose(b, torch.tanh(net[0](x))) and torch.allclose(out, net(x))
    assert torch.allclose(layer_outputs(net, x, "softmax", "1")[-1].sum(1), torch.ones(5))


def test_cifar10n_labels_file_is_scored_as_the_corruption(own, tmp_path):
    """A .pt dict in CIFAR-10N's format: the file's labels are trained on, the dataset's are the truth,
    the mask is where they differ, and the memorization signals are scored against it."""
    root, (_, ytr, _, _) = own
    rng = np.random.default_rng(5)
    worse = ytr.copy()
    flip = rng.choice(len(ytr), 12, replace=False)
    worse[flip] = (worse[flip] + 1) % K
    torch.save({"clean_label": ytr, "aggre_label": ytr, "worse_label": worse, "random_label1": ytr}, root / "human.pt")
    run = rotelab.fit(dataset=sources(root)["npz"], labels_file=str(root / "human.pt"), labels_key="worse_label",
                      model_args={"widths": [32]}, epochs=2, progress=False, hist_every=0, out=tmp_path / "n")
    ex = RunDir(tmp_path / "n").read_examples()
    assert np.array_equal(ex["train_corrupted"].astype(bool), worse != ytr)
    assert np.array_equal(ex["train_labels_used"], worse) and np.array_equal(ex["train_labels_true"], ytr)
    cfg = json.loads((tmp_path / "n" / "config.json").read_text())
    assert cfg["data"]["labels_file"]["key"] == "worse_label" and cfg["data"]["labels_differ"] == 12
    mem = rotelab.memorize(dataset=sources(root)["npz"], labels_file=str(root / "human.pt"), labels_key="worse_label",
                           model="my_models:tiny", epochs=2, models=2, stack=1, folds=2, train_fraction=0.5,
                           lr=0.05, batch_size=16, hist_every=0, checkpoint_every=0, progress=False,
                           out=tmp_path / "mem")
    summary = json.loads((tmp_path / "mem" / "memorization.json").read_text())
    import pandas as pd
    table = pd.read_csv(tmp_path / "mem" / "per_example.csv")
    assert np.array_equal(table["corrupted"].to_numpy().astype(bool), worse != ytr)
    assert {r["signal"] for r in summary["signals"]} >= {"mem", "cleanlab (low quality)"} and len(mem) > 2


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_plain_labels_files(own, tmp_path, suffix):
    from rotelab.data import load_data
    root, (_, ytr, _, _) = own
    y = (ytr + (np.arange(len(ytr)) % 4 == 0)) % K
    path = tmp_path / f"labels{suffix}"
    np.save(path, y) if suffix == ".npy" else np.savetxt(path, y, fmt="%d")
    data = load_data(FitConfig(dataset=sources(root)["npz"], labels_file=str(path)))
    assert data.train.y.tolist() == y.tolist() and data.train.corrupted.tolist() == (y != ytr).tolist()


@pytest.mark.parametrize("fields, flag, said", [
    (dict(labels_file="L", corrupt="labels=0.2"), "--corrupt", "brings its own label noise"),
    (dict(labels_file="{root}/human2.pt"), "--labels-key", "aggre_label, worse_label"),
    (dict(labels_file="{root}/human2.pt", labels_key="nope"), "--labels-key", "has no 'nope'"),
    (dict(labels_file="{root}/short.npy"), "--labels-file", "has 5 labels but the training set has 48"),
    (dict(dataset="npz:{root}/missing.npz"), "--dataset", "no such file"),
    (dict(dataset="imagefolder:{root}"), "--dataset", "has no train/ folder"),
    (dict(model="torchvision:resnet18", model_args={"nope": 1}), "--model-args", "refuses nope=1"),
    (dict(model="torchvision:no_such_net"), "--model", "torchvision has no model"),
    (dict(model="my_models:tiny", model_args={"dropout": -0.5}), "--model-args", "refuses dropout=-0.5"),
    (dict(model="my_models:nothing"), "--model", "has no 'nothing'"),
    (dict(model="no_such_module:f"), "--model", "cannot import"),
    (dict(model="torchvision:resnet18", widths=[64]), "--widths", "give its own arguments with --model-args"),
])
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(own, tmp_path, fields, flag, said):
    root, _ = own
    torch.save({"aggre_label": np.zeros(48, dtype=int), "worse_label": np.zeros(48, dtype=int)}, root / "human2.pt")
    np.save(root / "short.npy", np.zeros(5, dtype=int))
    fields = {k: (v.format(root=root) if isinstance(v, str) else v) for k, v in fields.items()}
    fields = {"dataset": sources(root)["npz"], "epochs": 1, "progress": False, **fields}
    with pytest.raises(ConfigError) as e:
        rotelab.fit(out=tmp_path / "bad", **fields)
    assert e.value.field == flag and said in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_model_args_read_literals_and_bad_values_are_one_line(tmp_path, capsys):
    assert parse_kwargs("widths=[64,64],activation=tanh,dropout=0.1,name='a,b'") == \
        {"widths": [64, 64], "activation": "tanh", "dropout": 0.1, "name": "a,b"}
    base = ["fit", "--dataset", "digits", "--epochs", "1", "--no-progress", "--hist-every", "0"]
    assert main([*base, "--model-args", "widths=[16,8]", "--out", str(tmp_path / "ok")]) == 0
    assert RunDir(tmp_path / "ok").read_environment()["parameters"] == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    capsys.readouterr()
    assert main([*base, "--model-args", "dropout=-0.5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model-args" in err and "dropout=-0.5" in err
    assert not (tmp_path / "bad").exists()


def test_a_model_with_dropout_is_refused_a_stack_at_plan_time(tmp_path, capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_text('protocol = "fit"\n[base]\ndataset = "digits"\nepochs = 1\nprogress = false\nhist_every = 0\n'
                     'model_args = {widths = [16], dropout = 0.5}\n[axes]\nseed = [0, 1]\n')
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--vectorize-seeds"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vectorize-seeds" in err and "dropout" in err
    assert not list((tmp_path / "out").rglob("config.json"))
    # without dropout the same points stack
    sweep.write_text(sweep.read_text().replace(", dropout = 0.5", ""))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--vectorize-seeds"]) == 0


def test_plugins_register_through_entry_points(tmp_path, monkeypatch, capsys):
    """A third-party package's entry points (groups rotelab.models, rotelab.datasets), found by
    importlib.metadata from an installed distribution's metadata."""
    from rotelab.data.sources import SOURCES
    from rotelab.models import MODELS
    pkg = tmp_path / "site"
    (pkg / "rotelab_toy-1.0.dist-info").mkdir(parents=True)
    (pkg / "rotelab_toy-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: rotelab-toy\nVersion: 1.0\n")
    (pkg / "rotelab_toy-1.0.dist-info" / "entry_points.txt").write_text(
        "[rotelab.models]\ntoy-linear = rotelab_toy:linear\n[rotelab.datasets]\ntoy-blobs = rotelab_toy:blobs\n")
    (pkg / "rotelab_toy.py").write_text(textwrap.dedent('''
        import numpy as np, torch
        def linear(*, input_shape, num_classes, bias=True):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes, bias=bias))
        def blobs(cfg):
            """two Gaussian blobs"""
            rng = np.random.default_rng(0)
            y = np.arange(40) % 2
            x = rng.normal(size=(40, 5)) + 3 * y[:, None]
            return {"x_train": x[:30], "y_train": y[:30], "x_test": x[30:], "y_test": y[30:]}
    '''))
    monkeypatch.syspath_prepend(str(pkg))
    for reg in (MODELS, SOURCES):
        monkeypatch.setattr(reg, "_plugins_loaded", False)
    try:
        assert main(["models"]) == 0 and "toy-linear      bias=True" in capsys.readouterr().out
        assert main(["datasets"]) == 0 and "toy-blobs       two Gaussian blobs" in capsys.readouterr().out
        run = rotelab.fit(dataset="toy-blobs", model="toy-linear", epochs=3, lr=0.1, progress=False, hist_every=0,
                          out=tmp_path / "p")
        assert run.status["state"] == "done" and RunDir(tmp_path / "p").read_environment()["parameters"] == 5 * 2 + 2
    finally:
        for reg, name in ((MODELS, "toy-linear"), (SOURCES, "toy-blobs")):
            reg.pop(name, None)


def test_a_run_whose_data_file_changed_is_stale(own, tmp_path, capsys):
    """config.json keeps a hash of what a file source read: a sweep's point whose file changed since is
    stale (named, left as it is), not skipped as done."""
    root, (xtr, ytr, xte, yte) = own
    data = tmp_path / "d.npz"
    np.savez(data, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    labels = tmp_path / "l.npy"
    np.save(labels, ytr)
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'protocol = "fit"\n[base]\ndataset = "npz:{data}"\nlabels_file = "{labels}"\nepochs = 1\n'
                     'progress = false\nhist_every = 0\nmodel_args = {widths = [8]}\n[axes]\nseed = [0]\n')
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("done")
    y2 = ytr.copy()
    y2[0] = (y2[0] + 1) % K
    np.save(labels, y2)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("stale") and "labels_file" in line and "changed" in line
    np.save(labels, ytr)
    np.savez(data, x_train=xtr[::-1], y_train=ytr[::-1], x_test=xte, y_test=yte)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "data = npz:" in capsys.readouterr().out


def test_without_the_extras_timm_and_hf_say_what_to_install(monkeypatch):
    from rotelab.data import load_data
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'rotelab\[timm\]'"):
        FitConfig(model="timm:resnet18").validate()
    with pytest.raises(ConfigError, match=r"pip install 'rotelab\[hf\]'"):
        load_data(FitConfig(dataset="hf:some/name"))
