"""Runs trained together as one batched model equal separate runs."""

import math

import numpy as np
import torch
import pytest

from rotelab.cli import main
from rotelab.config import ConfigError, FitConfig
from rotelab.protocols.fit import fit
from rotelab.store import RunDir
from rotelab.runner import start_stack


def close(a, b):
    """Metrics equal up to float rounding: losses to 1e-5 (or 1e-6 of a large value, such as the
    information in the weights in bits), accuracies to one example in 500."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k, v in x.items():
            if k.startswith("seconds") or v is None:
                assert y[k] is None or k.startswith("seconds")
                continue
            tol = 2e-3 if "acc" in k or "intersection" in k or "union" in k else 1e-5
            # KL under a log-normal prior sums log|w|: weights near 0 amplify rounding (more with a fast
            # learned alpha), hence 5e-4
            rel = 5e-4 if "kl_lognormal" in k else 1e-6
            assert y[k] == pytest.approx(v, rel=rel, abs=tol), k


@pytest.mark.parametrize("kw", [dict(corrupt="labels=0.5", optimizer="sgd", example_margins=True),
                                dict(corrupt="random-pixels=0.5", optimizer="adam", lr=0.003, schedule="cosine"),
                                dict(corrupt="random-pixels=0.5", corrupt_test=True, activation="tanh"),
                                dict(corrupt="labels=0.5", eval_every=2, example_margins=True)])
def test_together_equals_separate(tmp_path, kw):
    base = dict(dataset="digits", widths=[48], epochs=5, lr=0.1, progress=False, hist_every=0)
    base.update(kw)
    cfgs = [FitConfig(**base, seed=s) for s in range(3)]
    together = start_stack(cfgs, [tmp_path / f"v{s}" for s in range(3)])
    for c, run in zip(cfgs, together):
        alone = fit(c, tmp_path / f"s{c.seed}")
        close(run.read_metrics(), alone.read_metrics())
        a, b = run.read_examples(), alone.read_examples()
        assert a.keys() == b.keys()
        assert np.array_equal(a["train_labels_used"], b["train_labels_used"])
        assert sorted(p.name for p in run.path.iterdir()) == sorted(p.name for p in alone.path.iterdir())
        assert run.read_status()["state"] == "done"


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_stacked_forward_equals_each_runs_model(tmp_path, activation):
    """The stack's logits (tanh from a sigmoid, inputs shared or stacked) against each run's own
    model (torch.tanh), in float64 where float32 rounding cannot hide a wrong formula."""
    from rotelab.protocols.fit import build_loop
    from rotelab.store import RunDir
    from rotelab.vectorized import MLPStack
    cfgs = [FitConfig(dataset="digits", widths=[16, 8, 4], activation=activation, seed=s, progress=False,
                      hist_every=0, corrupt=c) for s, c in ((0, "labels=0.5"), (1, "random-pixels=1.0"))]
    loops = [build_loop(c, RunDir(tmp_path / f"r{c.seed}")) for c in cfgs]
    for l in loops:   # large weights: saturated tanh units and dead ReLUs are exercised too
        with torch.no_grad():
            for p in l.model.parameters():
                p.mul_(3)
        l.model.double()
        for split in l.splits.values():
            split.x = split.x.double()
        l.set_fit(l.fit_on)
    stack = MLPStack(loops)
    for name in ("train", "test"):
        got = stack.forward(stack.x[name], stack.shared[name])   # (K, classes, N); tanh: sigmoids folded
        kept = stack.forward(stack.x[name], stack.shared[name], keep=[])   # the training pass's form
        for j, l in enumerate(loops):
            want = l.model(l.splits[name].x).T
            assert torch.allclose(got[j], want, rtol=1e-12, atol=1e-12)
            assert torch.allclose(kept[j], want, rtol=1e-12, atol=1e-12)
    z = torch.linspace(-12, 12, 200_001)   # and the float32 formula against torch.tanh
    assert (2 * torch.sigmoid(2 * z) - 1 - torch.tanh(z)).abs().max() <= 2.5e-7


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stacked_step_equals_autograd_step_of_each_run(tmp_path, activation, optimizer):
    """The stack's written-out backward pass and one-tensor optimizer step against each run's own
    model, autograd and optimizer on the same batch."""
    import torch
    import torch.nn.functional as F
    from rotelab.protocols.fit import build_loop
    from rotelab.store import RunDir
    from rotelab.vectorized import MLPStack
    cfgs = [FitConfig(dataset="digits", widths=[16, 8], activation=activation, optimizer=optimizer, lr=0.05,
                      weight_decay=1e-3, epochs=3, progress=False, hist_every=0, seed=s,
                      corrupt=f"labels={p}") for s, p in ((0, 0.0), (1, 0.5), (2, 1.0))]
    loops = [build_loop(c, RunDir(tmp_path / f"r{c.seed}")) for c in cfgs]
    stack = MLPStack(loops)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):   # several steps, so optimizer state (momentum, moments) is exercised too
        idx = torch.stack([torch.randperm(len(l.fit_y), generator=g)[:40] for l in loops])
        yb = torch.stack([l.fit_y[i] for l, i in zip(loops, idx)])
        ce, _ = stack.train_step(stack._batch("train", idx), yb)
        for l, i, ce_run in zip(loops, idx, ce):
            logits = l.model(l.fit_x[i])
            loss = F.cross_entropy(logits, l.fit_y[i], reduction="none")
            assert torch.allclose(ce_run, loss.detach(), atol=1e-5)
            l.opt.zero_grad()
            loss.mean().backward()
            l.opt.step()
    for j, l in enumerate(loops):   # the runs' own models were stepped by their own optimizers
        for p_stack, p_run in zip(stack.params, stack.run_params[j]):
            assert torch.allclose(p_stack[j], p_run, atol=1e-5)


def test_hooks_read_each_epochs_weights_from_a_stacked_run(tmp_path):
    """Weights are copied back from the stack only when a run's model is read: a hook that reads it
    every other epoch sees that epoch's weights, as in the run trained alone."""
    from rotelab.engine import Hook
    from rotelab.protocols.fit import build_loop
    seen = {}

    class ReadWeights(Hook):
        def on_epoch_end(self, loop, result):
            if result.epoch % 2 == 0:
                seen.setdefault(loop.spec.seed, []).append(loop.model.state_dict()["head.weight"].clone())

    def with_reader(cfg, run):
        loop = build_loop(cfg, run)
        loop.hooks.append(ReadWeights())
        return loop

    cfgs = [FitConfig(dataset="digits", widths=[16], epochs=6, lr=0.1, seed=s, progress=False, hist_every=0)
            for s in range(2)]
    start_stack(cfgs, [tmp_path / f"v{c.seed}" for c in cfgs], build_loop=with_reader)
    together, seen = seen, {}
    for c in cfgs:
        run = RunDir.check_new(tmp_path / f"a{c.seed}")
        loop = with_reader(c, run)
        run.create(c.to_dict(), {})
        loop.run()
    for seed in (0, 1):
        assert len(together[seed]) == 3
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(together[seed], seen[seed]))
        assert not torch.equal(together[seed][0], together[seed][1])


def test_runs_that_finish_early_leave_the_stack(tmp_path):
    base = dict(dataset="digits", widths=[256], epochs=300, lr=0.1, progress=False, hist_every=0, until_train_acc=1.0)
    cfgs = [FitConfig(**base, corrupt="labels=0.0", seed=0), FitConfig(**base, corrupt="labels=1.0", seed=0)]
    true, rand = start_stack(cfgs, [tmp_path / "true", tmp_path / "rand"])
    t_fit, r_fit = true.read_status()["fit_epoch"], rand.read_status()["fit_epoch"]
    assert t_fit < r_fit
    assert len(true.read_metrics()) == t_fit and len(rand.read_metrics()) == r_fit
    assert rand.read_metrics()[-1]["train_acc"] == 1.0
    # over a short horizon the batched run follows the separate one; over hundreds of chaotic
    # memorization steps float rounding of batched products can move the fit epoch by a few
    alone = fit(cfgs[0], tmp_path / "alone")
    assert alone.read_status()["fit_epoch"] == t_fit
    close(true.read_metrics(), alone.read_metrics())


def test_unsupported_combinations_are_refused(tmp_path):
    base = dict(dataset="digits", epochs=2, progress=False)
    with pytest.raises(ConfigError, match="differ in lr"):
        start_stack([FitConfig(**base, lr=0.1), FitConfig(**base, lr=0.2)], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError, match="--augment"):
        start_stack([FitConfig(**base, augment=True)] * 2, [tmp_path / "c", tmp_path / "d"])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("model,epochs", [("alexnet-small", 2), ("inception-small", 1)])
def test_vectorized_convnets_equal_separate_runs(tmp_path, model, epochs):
    """Any model stacks through torch.func (batch norm with per-run statistics included): the runs
    equal separate runs up to float rounding (over more epochs a training run amplifies rounding)."""
    from rotelab.vectorized import FuncStack, stack_for
    cfgs = [FitConfig(dataset="digits", model=model, subset=200, epochs=epochs, lr=0.01, seed=s, corrupt=c,
                      progress=False, hist_every=0) for s, c in ((0, "labels=0.0"), (1, "labels=1.0"))]
    together = start_stack(cfgs, [tmp_path / f"v{i}" for i in range(2)])
    for i, c in enumerate(cfgs):
        close(together[i].read_metrics(), fit(c, tmp_path / f"a{i}").read_metrics())
        sa = torch.load(together[i].last_checkpoint)["model"]
        sb = torch.load(tmp_path / f"a{i}" / "checkpoints" / "last.pt")["model"]
        assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-4) for k in sa)   # batch-norm statistics too
    from rotelab.protocols.fit import build_loop
    from rotelab.store import RunDir
    loops = [build_loop(c, RunDir(tmp_path / f"x{i}")) for i, c in enumerate(cfgs)]
    assert isinstance(stack_for(loops), FuncStack)


def test_sweep_vectorizes_seeds(tmp_path, capsys):
    f = tmp_path / "g.toml"
    f.write_text(f"""
protocol = "fit"
out = "{tmp_path / 'g'}"
[base]
dataset = "digits"
widths = [32]
epochs = 3
hist_every = 0
[axes]
corrupt = ["labels=0.0", "labels=1.0"]
seed = [0, 1]
""")
    assert main(["sweep", str(f), "--vectorize-seeds", "--jobs", "1"]) == 0
    assert "4 run" in capsys.readouterr().out
    alone = fit(FitConfig(dataset="digits", widths=[32], epochs=3, hist_every=0, progress=False,
                          corrupt="labels=1.0", seed=1), tmp_path / "alone")
    from rotelab.store import RunDir
    close(RunDir(tmp_path / "g" / "corrupt-labels=1.0__seed-1").read_metrics(), alone.read_metrics())


def test_sweep_splits_a_stack_among_its_workers(tmp_path):
    """One stack per worker: a grid that is one group is split evenly for --jobs 2; groups are not
    split when there are enough of them; every point lands in exactly one task."""
    from rotelab.plan import units
    from rotelab.sweep import point_plans, sweep_points

    def tasks(axes, workers):
        protocol, points = sweep_points({"protocol": "fit", "out": str(tmp_path / "g"), "axes": axes,
                                         "base": {"dataset": "digits", "epochs": 1}})
        out = units(point_plans(protocol, points), vectorize=True, workers=workers)
        assert sorted(r.path for u in out for r in u) == sorted(p.path for p in points)
        return [("group", len(u)) if len(u) > 1 else ("point", 1) for u in out]

    seeds = {"corrupt": ["labels=0.0", "labels=1.0"], "seed": [0, 1, 2]}
    assert tasks(seeds, 1) == [("group", 6)]
    assert tasks(seeds, 2) == [("group", 3), ("group", 3)]
    assert tasks({**seeds, "lr": [0.1, 0.2]}, 2) == [("group", 6), ("group", 6)]
    assert tasks({"seed": [0, 1, 2]}, 4) == [("point", 1)] * 3
    # per-batch measurements and batch norm need each run's own batches: such points go alone
    assert tasks({"seed": [0, 1], "norms": [True]}, 1) == [("point", 1)] * 2
    assert sorted(tasks({"seed": [0, 1], "batch_norm": [True, False]}, 1)) == [("group", 2), ("point", 1), ("point", 1)]


def test_runs_that_need_their_own_batches_are_not_stacked():
    from rotelab.vectorized import check_vectorizable
    cfgs = [FitConfig(dataset="digits", seed=s, batch_scalars=True) for s in (0, 1)]
    with pytest.raises(ConfigError, match="--batch-scalars"):
        check_vectorizable(cfgs)


@pytest.mark.parametrize("kw", [dict(noise_sampling="lrt", learn_alpha=True, info_weight=0.5, noise_alpha=0.05),
                                dict(noise_sampling="lrt", learn_alpha=True, info_weight=0.5, noise_alpha=0.05,
                                     optimizer="adam", lr=1e-3, alpha_lr=0.05, schedule="exp"),
                                dict(noise_sampling="weights", noise_granularity="unit", noise_alpha=0.1),
                                dict(model="alexnet-small", subset=200, epochs=1, lr=0.01, noise_alpha=0.05)])
def test_vectorized_weight_noise_equals_separate_runs(tmp_path, kw):
    """Noisy layers draw each run's own noise from the stream a run alone draws it from, and a learned
    noise level with its information penalty follows the run alone (torch.func stack)."""
    base = dict(dataset="digits", widths=[32], epochs=3, lr=0.05, progress=False, hist_every=0,
                weight_noise="lognormal")
    cfgs = [FitConfig(**{**base, **kw}, seed=s, corrupt=c) for s, c in ((0, "labels=0.0"), (1, "labels=1.0"))]
    together = start_stack(cfgs, [tmp_path / f"v{i}" for i in range(2)])
    for i, c in enumerate(cfgs):
        alone = fit(c, tmp_path / f"a{i}")
        close(together[i].read_metrics(), alone.read_metrics())
        sa = torch.load(together[i].last_checkpoint)["model"]
        sb = torch.load(alone.last_checkpoint)["model"]
        assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-4) for k in sa)
        alphas = [k for k in sa if k.endswith("log_alpha")]   # learned where asked, else fixed: stacked too
        initial = math.log(c.noise_alpha)
        assert alphas and all(bool((sa[k] == initial).all()) != c.learn_alpha for k in alphas)


def test_func_stack_takes_each_runs_optimizer_state(tmp_path):
    """A stack built from runs that have trained (a rebuild after runs leave) starts from their
    optimizer states; a fixed noise level has none and stays without."""
    from rotelab.protocols.fit import build_loop
    from rotelab.vectorized import FuncStack
    cfgs = [FitConfig(dataset="digits", widths=[8], weight_noise="lognormal", optimizer="adam", lr=0.01, seed=s,
                      progress=False, hist_every=0) for s in range(2)]
    loops = [build_loop(c, RunDir(tmp_path / f"r{c.seed}")) for c in cfgs]
    for l in loops:
        l.run_epoch()
    stack = FuncStack(loops)
    for n, p in stack.params.items():
        if n.endswith("log_alpha"):
            assert not p.requires_grad and p not in stack.opt.state
            continue
        for j, l in enumerate(loops):
            own = l.opt.state[stack.run_params[j][n]]
            assert torch.equal(stack.opt.state[p]["exp_avg"][j], own["exp_avg"])
            assert torch.equal(stack.opt.state[p]["step"], own["step"])


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_class_argmax_is_max_indices_with_ties_and_nan(classes):
    from rotelab.vectorized import class_argmax
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-2, 3, (4, classes, 500), generator=g).float()   # many ties
    nan = torch.rand(logits.shape, generator=g) < 0.05
    logits[nan] = float("nan")
    assert torch.equal(class_argmax(logits), logits.max(dim=1).indices)
    assert torch.equal(class_argmax(logits[:, :, :0]), logits[:, :, :0].max(dim=1).indices)
