"""The infoplane protocol on small real data."""

import json
import math

import numpy as np
import pytest

from conftest import VAR_U, Crash
from rotelab.cli import main
from rotelab.config import ConfigError, parse_seeds
from rotelab.protocols.infoplane import InfoPlaneConfig
from rotelab.measures.information import entropy_of_ids
from rotelab.runner import resume
from rotelab.protocols.infoplane import build_loop, capture_epochs, infoplane
from rotelab.store import RunDir


def cfg_of(**kw):
    base = dict(dataset="tishby", model="tishby", optimizer="adam", lr=4e-3, batch_size=256, epochs=30,
                captures=10, progress=False, hist_every=0, checkpoint_every=0)
    base.update(kw)
    return InfoPlaneConfig(**base)


def info(run):
    return [json.loads(l) for l in (run.path / "info.jsonl").read_text().splitlines()]


def test_capture_epochs():
    e = capture_epochs(8000, 200)
    assert {0, 1, 8000} <= e and 150 <= len(e) <= 202
    assert capture_epochs(5, 200) == {0, 1, 2, 3, 4, 5}


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("a-b", "1,1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_tishby_run_writes_bounded_information_per_layer_and_epoch(tmp_path):
    runs = infoplane(cfg_of(seeds="0-1"), tmp_path / "ib")
    assert [r.path.name for r in runs] == ["seed-0", "seed-1"]
    rows = info(runs[0])
    epochs = sorted({r["epoch"] for r in rows})
    assert epochs == sorted(capture_epochs(30, 10))
    assert {r["layer"] for r in rows} == set(range(6))            # 5 hidden layers and the output
    assert {r["seed"] for r in info(runs[1])} == {1}
    y = np.concatenate([np.load(runs[0].examples_file)["train_labels_used"], np.load(runs[0].examples_file)["test_labels_used"]])
    h_y = entropy_of_ids(y)
    for r in rows:
        assert -1e-9 <= r["ity"] <= h_y + 1e-9 and -1e-9 <= r["ixt"] <= 12 + 1e-9
    first = [r for r in rows if r["epoch"] == 0 and r["layer"] == 0][0]
    assert first["ixt"] > 11.5            # the first tanh layer keeps nearly every one of 4096 inputs apart
    # the metrics of a fit run come with it
    assert runs[0].read_metrics()[-1]["train_acc"] > 0.6


def test_every_estimator_runs_in_the_protocol(tmp_path):
    cfg = cfg_of(dataset="digits", model="mlp", widths=[16, 8], activation="tanh", lr=0.01, epochs=3, captures=3,
                 eval_size=200, estimators="binning,kde,ksg", save_activations=True)
    run = infoplane(cfg, tmp_path / "d")[0]
    rows = info(run)
    assert {r["estimator"] for r in rows} == {"binning", "kde-upper", "kde-lower", "ksg"}
    for e in {r["epoch"] for r in rows}:
        for layer in range(3):
            up = [r for r in rows if r["epoch"] == e and r["layer"] == layer and r["estimator"] == "kde-upper"][0]
            lo = [r for r in rows if r["epoch"] == e and r["layer"] == layer and r["estimator"] == "kde-lower"][0]
            assert lo["ixt"] <= up["ixt"] + 1e-9
            assert up["ixt"] <= math.log2(200) + 1e-9
    acts = np.load(run.path / "activations" / "epoch_00003.npz")
    assert acts["layer0"].shape == (200, 16) and acts["layer0"].dtype == np.float16
    assert acts["layer2"].shape == (200, 10)
    sized = infoplane(cfg_of(dataset="digits", model="mlp", widths=[16], epochs=2, captures=2, eval_size=100,
                             bin_size=0.5), tmp_path / "s")[0]
    assert {r["estimator"] for r in info(sized)} == {"binning-size"}


def test_resume_gives_the_same_information(tmp_path):
    cfg = cfg_of(epochs=20)
    full = infoplane(cfg, tmp_path / "full")[0]
    run = RunDir(tmp_path / "cut" / "seed-0")
    loop = build_loop(cfg, run)
    loop.hooks.append(Crash(12))
    run.create(cfg.to_dict(), {}, protocol="infoplane")
    with pytest.raises(RuntimeError):
        loop.run()
    with open(run.path / "info.jsonl", "a") as f:     # lines written after the checkpoint are dropped
        f.write(json.dumps({"epoch": 13, "layer": 0, "estimator": "binning", "ixt": -1, "ity": -1}) + "\n")
        f.write('{"epoch": 14, "lay')                   # and a line cut by the kill is ignored
    resumed = resume(run.path)
    assert info(resumed) == info(full)


@pytest.mark.slow
def test_cli_infoplane_plot_and_errors(tmp_path, capsys):
    out = tmp_path / "ib"
    args = ["infoplane", "--dataset", "tishby", "--model", "tishby", "--optimizer", "adam", "--lr", "0.004",
            "--epochs", "5", "--captures", "3", "--seeds", "0-1", "--no-progress", "--hist-every", "0"]
    if VAR_U.is_file():
        args += ["--data-file", str(VAR_U)]
    assert main(args + ["--out", str(out)]) == 0
    rand = tmp_path / "ib-rand"
    assert main(args + ["--corrupt", "labels=1.0", "--out", str(rand)]) == 0
    assert main(["plot", str(out), str(rand)]) == 0
    for name in ("infoplane-binning.png", "ixt-binning.png"):
        assert (out / "figures" / name).stat().st_size > 10_000
    assert main(["infoplane", "--resume", str(out)]) == 0
    import shutil
    shutil.rmtree(out / "seed-1")                     # as if killed before the second seed started
    assert main(["infoplane", "--resume", str(out)]) == 0
    assert RunDir(out / "seed-1").read_status()["state"] == "done"
    capsys.readouterr()
    for bad, field in ((["--estimators", "mine"], "--estimators"), (["--model", "wrn"], "--model"),
                       (["--seeds", "x"], "--seeds")):
        assert main(args + bad + ["--out", str(tmp_path / "bad")]) == 2
        assert capsys.readouterr().err.startswith("rotelab: error: " + field)
    assert not (tmp_path / "bad").exists()


def test_gradient_mean_and_std_over_batches():
    from types import SimpleNamespace

    import torch

    from rotelab.models.mlp import MLP
    from rotelab.protocols.infoplane import GradientSNR
    model = MLP((3,), [2], 2)
    hook = GradientSNR({1})
    loop = SimpleNamespace(epoch=0, model=model)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(5):
        gs = [rng.standard_normal(tuple(w.shape)) for w in (model.layers[0][0].weight, model.head.weight)]
        model.layers[0][0].weight.grad = torch.tensor(gs[0], dtype=torch.float32)
        model.head.weight.grad = torch.tensor(gs[1], dtype=torch.float32)
        seen.append([g.astype(np.float32).astype(np.float64) for g in gs])
        hook.on_backward(loop, torch.zeros(()))
    result = SimpleNamespace(metrics={})
    hook.on_epoch_end(loop, result)
    for i in range(2):
        g = np.stack([s[i] for s in seen])
        assert result.metrics[f"grad_mean/layer{i}"] == pytest.approx(np.linalg.norm(g.mean(0)), rel=1e-9)
        assert result.metrics[f"grad_std/layer{i}"] == pytest.approx(np.linalg.norm(g.std(0)), rel=1e-6)
    loop.epoch = 1   # epoch 2 is not captured: nothing is accumulated
    hook.on_backward(loop, torch.zeros(()))
    assert hook.sums is None


def test_grad_snr_in_a_run_and_its_figure(tmp_path):
    runs = infoplane(cfg_of(epochs=8, captures=3, grad_snr=True), tmp_path / "g")
    m = runs[0].read_metrics()
    captured = {r["epoch"] for r in m if "grad_mean/layer0" in r}
    assert captured == capture_epochs(8, 3) - {0}
    assert all(r["grad_std/layer5"] > 0 for r in m if r["epoch"] in captured)
    assert main(["plot", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "figures" / "grad_snr.png").stat().st_size > 10_000


def test_random_labels_on_the_12bit_task_randomize_all_4096_patterns(tmp_path):
    from rotelab.protocols.infoplane import InfoPlaneConfig, infoplane
    from rotelab.store import RunDir
    cfg = InfoPlaneConfig(dataset="tishby", model="tishby", epochs=1, corrupt="labels=1.0", captures=2,
                          progress=False, hist_every=0)
    run = infoplane(cfg, tmp_path / "r")[0]
    assert run.read_config()["corrupt_test"] is True
    ex = RunDir(run.path).read_examples()
    # the test part's labels were redrawn too (about 1 - 1/2 of 820 differ from the true ones)
    assert 0.3 < (ex["test_labels_used"] != ex["test_labels_true"]).mean() < 0.7


def test_bin_edges_are_float32_as_the_original():
    import numpy as np
    from rotelab.protocols.infoplane import InfoPlaneConfig
    edges = InfoPlaneConfig().edges
    e32 = np.linspace(-1, 1, 30).astype(np.float32)
    assert np.array_equal(edges, e32.astype(np.float64))
    # an activation exactly on a float32 edge that lies below the float64 edge: float64 edges would
    # put it in the bin below, the original's float32 edges (and ours) in the bin above
    on_edge = e32[1:2]
    assert float(on_edge[0]) < np.linspace(-1, 1, 30)[1]
    assert np.digitize(on_edge.astype(np.float64), edges) == np.digitize(on_edge, e32) == 2
    assert np.digitize(on_edge.astype(np.float64), np.linspace(-1, 1, 30)) == 1


def test_seeds_trained_together_equal_seeds_trained_apart(tmp_path):
    from rotelab.protocols.infoplane import InfoPlaneConfig, infoplane
    from rotelab.store import RunDir
    base = dict(dataset="tishby", model="tishby", epochs=6, captures=3, optimizer="adam", lr=4e-3, batch_size=512,
                seeds="0-2", estimators="binning,kde", eval_size=300, progress=False, hist_every=0)
    together = infoplane(InfoPlaneConfig(**base, vectorize=True), tmp_path / "v")
    apart = infoplane(InfoPlaneConfig(**base), tmp_path / "a")
    for a, b in zip(together, apart):
        ra, rb = RunDir(a.path).read_info(), RunDir(b.path).read_info()
        assert [(r["epoch"], r["layer"], r["estimator"]) for r in ra] == [(r["epoch"], r["layer"], r["estimator"]) for r in rb]
        assert max(abs(x["ixt"] - y["ixt"]) + abs(x["ity"] - y["ity"]) for x, y in zip(ra, rb)) < 1e-3
        assert RunDir(a.path).read_protocol() == "infoplane" and RunDir(a.path).read_status()["state"] == "done"


def test_group_titles_are_words_and_never_collide(tmp_path):
    from rotelab.plots import describe_run, group_titles
    assert describe_run({"model": "tishby", "corrupt": "labels=1.0"}) == "random labels, tanh, hidden 10-7-5-4-3"
    assert describe_run({"model": "mlp", "widths": [64, 8], "activation": "tanh", "corrupt": "labels=0.0"}) \
        == "true labels, tanh, hidden 64-8"
    assert describe_run({"model": "wrn", "corrupt": "labels=0.25"}) == "labels 0.25 random, relu"
    for name, cfg in (("a", {"corrupt": "labels=0.0", "bin_size": 0.5}), ("b", {"corrupt": "labels=0.0"}),
                      ("c", {"corrupt": "labels=1.0"})):
        run = RunDir(tmp_path / name)
        run.create({"model": "mlp", "widths": [8], **cfg}, {}, protocol="infoplane")
        run.unlock()
    titles = group_titles([tmp_path / n for n in "abc"])
    assert titles == {"a": "true labels, relu, hidden 8 (a)", "b": "true labels, relu, hidden 8 (b)",
                      "c": "random labels, relu, hidden 8"}


def test_a_published_record_reads_as_the_runs(tmp_path):
    """A record packs info.jsonl as info.jsonl.gz: the readers behind a republished study's figures
    find the same rows in it (on the generated 12-bit task: a clone has no var_u.mat beside it)."""
    from rotelab.reproduce import publish_records
    from rotelab.store import read_info
    infoplane(cfg_of(epochs=3, captures=3, seeds="0-1"), tmp_path / "runs" / "p")
    publish_records(tmp_path / "runs", tmp_path / "docs" / "records" / "s")
    packed = tmp_path / "docs" / "records" / "s" / "p"
    assert list(packed.rglob("info.jsonl.gz")) and not list(packed.rglob("info.jsonl"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "group"} for r in rows]   # noqa: E731
    assert strip(read_info([packed])) == strip(read_info([tmp_path / "runs" / "p"])) != []
    from rotelab.report import run_figures   # and a run's own figures draw from its packed metrics
    assert run_figures(packed / "seed-0", strict=True)
