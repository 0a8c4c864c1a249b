"""Log-normal weight noise, the information in the weights, the Fisher trace and the noise ramp."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import strip_times
from rotelab.cli import main
from rotelab.config import FitConfig
from rotelab.protocols.noise import NoiseConfig
from rotelab.measures.fisher import fisher_trace
from rotelab.models import build_model
from rotelab.models.noisy import (LogNormalNoise, add_weight_noise, fit_lognormal_prior, info_penalty, kl_lognormal,
                                  kl_loguniform, lognormal_posterior, noise_off, noisy_layers, weight_information)
from rotelab.protocols.fit import fit
from rotelab.protocols.noise import ramp


def test_eps_has_mean_one_and_log_variance_alpha():
    torch.manual_seed(0)
    for alpha in (1e-3, 0.1, 1.0):
        layer = LogNormalNoise(torch.nn.Linear(1000, 1000), alpha, "layer")
        with torch.no_grad():
            layer.layer.weight.fill_(1.0)
            eps = layer.sample_weight()
        assert eps.mean().item() == pytest.approx(1.0, abs=4 * math.sqrt(math.expm1(alpha) / 1e6))
        assert eps.log().var().item() == pytest.approx(alpha, rel=0.01)


@pytest.mark.parametrize("sampling", ["lrt", "weights"])
def test_tiny_alpha_reproduces_the_noise_free_network(sampling):
    for model_name, shape in (("mlp", (1, 8, 8)), ("alexnet-small", (3, 12, 12)), ("wrn", (3, 8, 8))):
        cfg = FitConfig(model=model_name, depth=10, widen=1, weight_noise="lognormal", noise_alpha=1e-14,
                        noise_sampling=sampling)
        net = build_model(cfg, shape, 5).eval()
        x = torch.randn(4, *shape)
        assert noisy_layers(net)
        with torch.no_grad():
            noisy = net(x)
            with noise_off(net):
                clean = net(x)
        assert torch.allclose(noisy, clean, atol=1e-5), model_name
        cfg.noise_alpha = 0.5
        net2 = build_model(cfg, shape, 5).eval()
        with torch.no_grad():
            assert not torch.allclose(net2(x), net2(x))   # fresh noise every pass


def test_lrt_matches_the_moments_of_exact_weight_draws():
    torch.manual_seed(1)
    lin = torch.nn.Linear(30, 4)
    exact = LogNormalNoise(lin, 0.3, "weight", sampling="weights")
    lrt = LogNormalNoise(lin, 0.3, "weight", sampling="lrt")
    x = torch.randn(1, 30)
    with torch.no_grad():
        a = torch.cat([exact(x) for _ in range(20000)])
        b = lrt(x.expand(20000, 30))
    assert torch.allclose(a.mean(0), b.mean(0), atol=0.05)
    assert torch.allclose(a.var(0), b.var(0), rtol=0.08)


def test_closed_form_kls_against_monte_carlo():
    torch.manual_seed(2)
    m = torch.randn(2000) * 0.1
    la = torch.full((1,), math.log(0.2))
    mu_q, var_q = lognormal_posterior(m, la)
    mu_p, var_p = -3.0, 1.5
    closed = kl_lognormal(mu_q, var_q, mu_p, var_p)
    s = mu_q + var_q.sqrt() * torch.randn(4000, 2000)               # draws of log|w| from the posterior
    log_q = -0.5 * ((s - mu_q) ** 2 / var_q + torch.log(2 * math.pi * var_q))
    log_p = -0.5 * ((s - mu_p) ** 2 / var_p + math.log(2 * math.pi * var_p))
    assert closed.item() == pytest.approx((log_q - log_p).mean(0).sum().item(), rel=0.01)
    # the fitted prior is the best Gaussian prior
    mu_f, var_f = fit_lognormal_prior(mu_q, var_q)
    best = kl_lognormal(mu_q, var_q, mu_f, var_f)
    for dm, dv in ((0.1, 1.0), (-0.1, 1.0), (0.0, 1.1), (0.0, 0.9)):
        assert best <= kl_lognormal(mu_q, var_q, mu_f + dm, var_f * dv)
    # log-uniform prior: differences of KL are differences of the posterior's entropy of log|w|
    a1, a2 = 0.05, 0.4
    n = 1000
    diff = kl_loguniform(torch.tensor([math.log(a1)]), n) - kl_loguniform(torch.tensor([math.log(a2)]), n)
    ent = lambda a: 0.5 * math.log(2 * math.pi * math.e * a)
    assert diff.item() == pytest.approx(n * (ent(a2) - ent(a1)))
    assert kl_loguniform(torch.tensor([0.0]), n, alpha_ref=1.0).item() == 0.0


def test_information_falls_monotonically_as_alpha_rises():
    net = add_weight_noise(torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Linear(30, 5)), 1e-4)
    previous = None
    for alpha in np.geomspace(1e-4, 10, 12):
        for _, m in noisy_layers(net):
            m.set_alpha(float(alpha))
        info = weight_information(net)
        if previous:
            for key in ("kl_loguniform_bits", "kl_lognormal_bits", "neg_half_log_alpha"):
                assert info[key] < previous[key], key
        previous = info
    info = weight_information(net)
    assert info["neg_half_log_alpha"] == pytest.approx(-0.5 * math.log(10))
    net1 = add_weight_noise(torch.nn.Linear(3, 3), 1e-4)
    assert weight_information(net1)["neg_half_log_alpha"] == pytest.approx(4.605, abs=1e-3)


def test_learned_alpha_grows_under_a_large_beta(tmp_path):
    def final_log_alpha(beta):
        cfg = FitConfig(dataset="digits", epochs=5, lr=0.05, progress=False, hist_every=0, weight_noise="lognormal",
                        noise_alpha=1e-3, learn_alpha=True, info_weight=beta, noise_granularity="unit")
        run = fit(cfg, tmp_path / f"b{beta}")
        m = run.read_metrics()
        return m[-1]["mean_log10_alpha/head"], m
    base, _ = final_log_alpha(0.0)
    grown, m = final_log_alpha(1.0)
    assert grown > base + 0.5 and grown > -3
    assert "kl_loguniform_bits/layers.0.0" in m[0] and "kl_lognormal_bits" in m[0]
    assert [r["kl_loguniform_bits"] for r in m] == sorted((r["kl_loguniform_bits"] for r in m), reverse=True)


def test_alpha_lr_is_the_learned_noise_levels_own_learning_rate(tmp_path):
    from rotelab.config import ConfigError
    from rotelab.engine import build_optimizer
    from rotelab.models import build_model
    cfg = FitConfig(dataset="digits", widths=[16], optimizer="adam", lr=1e-3, weight_noise="lognormal",
                    learn_alpha=True, alpha_lr=0.1, noise_granularity="unit")
    torch.manual_seed(0)   # Adam's first step is lr * g / (|g| + eps): a gradient near eps would move less
    model = build_model(cfg, (64,), 10)
    opt = build_optimizer(model, cfg)
    alphas = {id(p) for n, p in model.named_parameters() if n.endswith("log_alpha")}
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.1]
    assert {id(p) for p in opt.param_groups[1]["params"]} == alphas and alphas
    assert not alphas & {id(p) for p in opt.param_groups[0]["params"]}
    # Adam's first step moves every parameter by its group's lr: the log alphas 100 times the weights
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 64)), torch.arange(8)) + info_penalty(model)
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        moved = (p.detach() - before[n]).abs()
        want = 0.1 if n.endswith("log_alpha") else 1e-3
        assert torch.allclose(moved[moved > 0], torch.tensor(want), rtol=1e-3), n
    with pytest.raises(ConfigError, match="--alpha-lr"):
        FitConfig(dataset="digits", alpha_lr=0.1).validate()


def test_info_penalty_gradient_pushes_alpha_up():
    net = add_weight_noise(torch.nn.Linear(4, 2), 1e-2, learn=True)
    info_penalty(net).backward()
    assert (net.log_alpha.grad < 0).all()


def test_fisher_trace_of_a_linear_softmax_model():
    """tr F of the weights = E_x ||x||^2 (1 - sum_y p_y^2); of the bias = E_x (1 - sum_y p_y^2)."""
    torch.manual_seed(3)
    model = torch.nn.Linear(6, 4)
    x = torch.randn(6000, 6)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    g = 1 - (p ** 2).sum(1)
    expected = ((x ** 2).sum(1) * g).mean() + g.mean()
    got = fisher_trace(model, x, torch.Generator().manual_seed(0), chunk=1000)
    assert set(got) == {"(model)"}
    assert got["(model)"] == pytest.approx(expected.item(), rel=0.03)


def test_fisher_trace_logged_per_layer(tmp_path):
    cfg = FitConfig(dataset="digits", epochs=3, progress=False, hist_every=0, fisher_every=2, fisher_samples=50)
    m = fit(cfg, tmp_path / "f").read_metrics()
    assert [("fisher_trace" in r) for r in m] == [True, True, False]
    assert m[0]["fisher_trace"] == pytest.approx(m[0]["fisher_trace/layers.0.0"] + m[0]["fisher_trace/head"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    fit(FitConfig(dataset="digits", epochs=15, lr=0.1, progress=False, hist_every=0), root / "true")
    fit(FitConfig(dataset="digits", epochs=15, lr=0.1, progress=False, hist_every=0, corrupt="labels=1.0"),
        root / "rand")
    return root


def test_ramp_bookkeeping_and_frozen_weights(trained, tmp_path):
    cfg = NoiseConfig(alpha_start=1e-3, alpha_factor=4, every=2, steps=4, noise_samples=3, progress=False,
                      checkpoint_every=0)
    runs = ramp([trained / "true", trained / "rand"], cfg, tmp_path / "ramp")
    m = runs[0].read_metrics()
    assert [r["epoch"] for r in m] == list(range(0, 9))
    assert [r["alpha"] for r in m] == pytest.approx([0, 1e-3, 1e-3, 4e-3, 4e-3, 1.6e-2, 1.6e-2, 6.4e-2, 6.4e-2])
    assert m[0]["train_acc"] == pytest.approx(json.loads((trained / "true" / "status.json").read_text())["final"]["train_acc"])
    assert all("train_acc_std" in r and "test_acc_std" in r for r in m[1:])
    assert all(r["neg_half_log_alpha"] == pytest.approx(-0.5 * math.log(r["alpha"])) for r in m[1:])
    before = torch.load(trained / "true" / "checkpoints" / "last.pt")["model"]
    after = torch.load(runs[0].last_checkpoint)["model"]
    wrapped = lambda k: k.rsplit(".", 1)[0] + ".layer." + k.rsplit(".", 1)[1]   # head.weight -> head.layer.weight
    assert all(torch.equal(after[wrapped(k)], v) for k, v in before.items())
    summary = json.loads((tmp_path / "ramp" / "summary.json").read_text())
    assert {r["label_corruption"] for r in summary["runs"]} == {0.0, 1.0}
    # deterministic noise from the seed
    again = ramp([trained / "true"], cfg, tmp_path / "again")[0]
    assert strip_times(again.read_metrics()) == strip_times(m)


def test_ramp_with_trained_means_changes_weights_but_not_alpha(trained, tmp_path):
    cfg = NoiseConfig(alpha_start=1e-2, every=1, steps=3, noise_samples=1, train_means=True, lr=0.01, progress=False)
    run = ramp([trained / "true"], cfg, tmp_path / "tm")[0]
    before = torch.load(trained / "true" / "checkpoints" / "last.pt")["model"]["head.weight"]
    state = torch.load(run.last_checkpoint)["model"]
    assert not torch.equal(state["head.layer.weight"], before)
    assert [r["alpha"] for r in run.read_metrics()[1:]] == pytest.approx([1e-2, 2e-2, 4e-2])


def test_cli_noise_plot_resume_and_errors(trained, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["noise", str(trained / "true"), str(trained / "rand"), "--alpha-start", "1e-3", "--every", "1",
                 "--steps", "3", "--noise-samples", "1", "--no-progress", "--out", str(out)]) == 0
    assert main(["plot", str(out)]) == 0
    assert (out / "figures" / "noise_ramp.png").stat().st_size > 10_000
    assert main(["noise", "--resume", str(out)]) == 0
    # a kill before the second ramp started: --resume OUT starts it (the folder knows all its sources)
    import shutil
    finished = (out / "true" / "metrics.jsonl").read_bytes()
    shutil.rmtree(out / "rand")
    assert main(["noise", "--resume", str(out)]) == 0
    assert json.loads((out / "rand" / "status.json").read_text())["state"] == "done"
    assert (out / "true" / "metrics.jsonl").read_bytes() == finished
    capsys.readouterr()
    assert main(["noise", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    # a source run with a damaged checkpoint: named as a source (`runs`), never offered for deletion
    shutil.copytree(trained / "true", tmp_path / "damaged")
    (tmp_path / "damaged" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert main(["noise", str(tmp_path / "damaged"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rotelab: error: runs: ") and "unreadable" in err and err.count("\n") == 1
    assert "--overwrite" not in err and "delete" not in err and "--resume" not in err
    assert main(["noise", str(trained / "true"), "--alphas", "0.1,-1", "--out", str(tmp_path / "y")]) == 2
    assert "--alphas" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_breaking_step_by_hand():
    from rotelab.measures.examples import breaking_step
    c = np.array([[1, 1, 0, 1],
                  [1, 0, 0, 1],
                  [0, 1, 0, 1]], dtype=bool)   # rows: noise levels; columns: examples
    # ex0 breaks at level 2; ex1 at 1 (and is right again later: the first wrong level counts);
    # ex2 is wrong from the start (-1); ex3 never breaks (3 = the number of levels)
    assert breaking_step(c).tolist() == [2, 1, -1, 3]


def test_a_ramp_records_each_examples_fate_and_joins_its_training_run(trained, tmp_path):
    import rotelab
    from rotelab.analysis import summarize_examples
    from rotelab.protocols.noise import breaking_summary
    from rotelab.store import StoreError
    from rotelab.measures.examples import correctness, forgetting_events
    from rotelab.store import RunDir
    src = fit(FitConfig(dataset="digits", epochs=12, lr=0.1, progress=False, hist_every=0, corrupt="labels=0.5"),
              tmp_path / "half")
    cfg = NoiseConfig(alpha_start=1e-2, alpha_factor=4, every=1, steps=5, noise_samples=3, progress=False)
    run = ramp([src.path], cfg, tmp_path / "ramp")[0]
    fate = rotelab.load(run.path).table("noise_fate")
    with pytest.raises(StoreError, match=r"is a fit run, which has no table 'noise_fate' \(its protocol's tables: none\)"):
        rotelab.load(src.path).table("noise_fate")   # the table belongs to the ramp's protocol
    ex, m = run.read_examples(), run.read_metrics()
    bits = correctness(ex, "train")
    assert len(fate) == int(ex["n_train"]) and list(ex["epochs"]) == [1, 2, 3, 4, 5]
    alpha = {r["epoch"]: r["alpha"] for r in m}
    for i in range(0, len(fate), 37):   # against a direct reading of the bits
        col = bits[:, i]
        want = float("nan") if not col[0] else (alpha[int(ex["epochs"][np.argmin(col)])] if not col.all() else np.inf)
        got = fate.breaking_alpha[i]
        assert (np.isnan(want) and np.isnan(got)) or got == want, i
    # majority of 3 passes, per example: the recorded accuracy is that of the majority bits
    assert abs(bits[0].mean() - m[1]["train_acc"]) < 0.1
    assert np.array_equal(fate.forgetting_events, forgetting_events(correctness(src.read_examples(), "train")))
    assert fate.corrupted.tolist() == src.read_examples()["train_corrupted"].tolist()
    s = breaking_summary(fate)
    assert s["clean"]["examples"] + s["corrupted"]["examples"] == int(fate.breaking_alpha.notna().sum())
    assert 0 <= s["mann_whitney_p"] <= 1
    # the effect size by counting pairs; the within-group correlations from scipy on each group alone
    from scipy.stats import spearmanr
    right = fate[fate.breaking_alpha.notna()]
    a_bad = right[right.corrupted.astype(bool)].breaking_alpha.to_numpy()
    a_ok = right[~right.corrupted.astype(bool)].breaking_alpha.to_numpy()
    pairs = (a_bad[:, None] < a_ok[None, :]).mean() + 0.5 * (a_bad[:, None] == a_ok[None, :]).mean()
    assert s["prob_corrupted_first"] == pytest.approx(pairs)
    for name, g in (("clean", right[~right.corrupted.astype(bool)]), ("corrupted", right[right.corrupted.astype(bool)])):
        if "spearman_forgetting_events" in s[name]:
            assert s[name]["spearman_forgetting_events"] == pytest.approx(
                spearmanr(g.breaking_alpha, g.forgetting_events).statistic)
    assert summarize_examples(RunDir(run.path))["noise_fate"] == s


def test_half_alpha_interpolates_in_log_alpha_between_levels():
    from rotelab.protocols.noise import half_alpha
    rows = [{"epoch": 0, "alpha": None, "train_acc": 1.0}]
    for e, (a, acc) in enumerate([(0.1, 0.9), (0.1, 0.9), (0.2, 0.6), (0.2, 0.4), (0.4, 0.3), (0.4, 0.3)], start=1):
        rows.append({"epoch": e, "alpha": a, "train_acc": acc})   # two epochs per level, averaged
    assert half_alpha(rows, 0.5) == pytest.approx(0.2)              # level 0.2 averages exactly 0.5
    assert half_alpha(rows, 0.45) == pytest.approx(0.2 * 2 ** 0.25)  # a quarter of the way to 0.4 in log alpha
    assert half_alpha(rows, 0.95) == pytest.approx(0.1)             # below half already at the first level
    assert half_alpha(rows, 0.2) is None                            # never crosses


def test_random_breaks_first_is_judged_between_grid_levels(tmp_path):
    import rotelab.reproduce as rp
    from rotelab.protocols.noise_study import check_random_breaks_first
    from rotelab.store import RunDir
    study = rp.Study("t", tmp_path / "t.toml", {"steps": [{"name": "ramp", "protocol": "noise"}]})
    ctx = rp.Context(study, "cpu", tmp_path, study.steps("cpu"))

    def ramp(name, p, accs, factor=2 ** 0.25):
        src = RunDir(tmp_path / "src" / name)
        src.create({"corrupt": f"labels={p}"}, {}, protocol="fit")
        src.unlock()
        run = RunDir(tmp_path / "ramp" / name)
        run.create({"source": str(src.path)}, {}, protocol="noise")
        run.append_metrics({"epoch": 0, "alpha": None, "train_acc": 1.0, "test_acc": 0.5})
        for e, acc in enumerate(accs, start=1):
            run.append_metrics({"epoch": e, "alpha": 0.1 * factor ** (e - 1), "train_acc": acc, "test_acc": 0.5})
        run.unlock()
    # every net falls below half on the same grid level, but the random-label ones cross earlier
    ramp("rand-0", 1.0, [0.9, 0.52, 0.2, 0.1])
    ramp("rand-1", 1.0, [0.9, 0.58, 0.3, 0.1])
    ramp("true-0", 0.0, [0.9, 0.9, 0.45, 0.1])
    value, expected, passed = check_random_breaks_first(ctx, "ramp", max_factor=1.1893)
    assert passed and "random labels 0.141, 0.141 (1 distinct)" in value and "factor <= 1.189" in expected
    ramp("true-1", 0.0, [0.9, 0.51, 0.2, 0.1])   # a true-label net that crosses before rand-1
    assert check_random_breaks_first(ctx, "ramp", max_factor=1.1893)[2] is False
    assert check_random_breaks_first(ctx, "ramp", max_factor=1.1)[2] is False   # the grid is too coarse


def test_kl_to_the_initializations_law_by_hand():
    """At wrap time the prior is fitted to the posterior itself: sum KL = N/2 ln(s_p^2 / alpha0) with
    s_p^2 = alpha0 + the variance of ln|m| (the (alpha + dev^2) / 2 s_p^2 terms sum to N/2); a layer
    whose every weight sits at the prior (alpha = s_p^2, mean at mu_p) holds 0 nats."""
    from rotelab.models.noisy import kl_init
    torch.manual_seed(0)
    net = add_weight_noise(torch.nn.Linear(50, 20), 0.01, granularity="weight", learn=True, max_alpha=math.inf)
    logm = net.layer.weight.detach().abs().double().log()
    var_p = 0.01 + logm.var(unbiased=False).item()
    assert net.prior_var.item() == pytest.approx(var_p, rel=1e-5)
    assert kl_init(net).item() == pytest.approx(1000 / 2 * math.log(var_p / 0.01), rel=1e-4)
    assert "prior_var" not in net.state_dict()   # found again from the seed on resume, not saved
    with torch.no_grad():
        net.log_alpha.fill_(math.log(net.prior_var.item()))
        net.layer.weight.copy_(torch.exp(net.prior_mu + net.prior_var / 2).expand_as(net.layer.weight))
    assert kl_init(net).item() == pytest.approx(0.0, abs=1e-3)
    # the penalty pulls alpha toward s_p^2 from either side (d KL / d ln alpha = (alpha / s_p^2 - 1) / 2
    # where the posterior's mean sits at mu_p), and a learned alpha is not capped there
    for start, sign in ((1e-3, 1), (20.0, -1)):
        net = add_weight_noise(torch.nn.Linear(50, 20), start, granularity="weight", learn=True, max_alpha=math.inf)
        with torch.no_grad():
            net.prior_var.fill_(1.0)
            net.layer.weight.fill_(math.exp(net.prior_mu.item() + start / 2))
        info_penalty(net, prior="init").backward()
        assert torch.allclose(net.log_alpha.grad, torch.tensor((start - 1.0) / 2), rtol=1e-4)
        assert (torch.sign(-net.log_alpha.grad) == sign).all()   # descent raises a small alpha, lowers a large one
        assert net.alpha.max().item() == pytest.approx(start, rel=1e-5)


def test_learned_noise_under_the_proper_prior_records_the_fit_under_noise(tmp_path):
    cfg = FitConfig(dataset="digits", widths=[16], epochs=3, optimizer="adam", lr=1e-3, progress=False, hist_every=0,
                    weight_noise="lognormal", learn_alpha=True, alpha_lr=0.03, noise_alpha=0.01,
                    noise_granularity="weight", info_weight=1.0, info_prior="init", subset=200)
    m = fit(cfg, tmp_path / "r").read_metrics()
    assert all(x["train_examples"] == 200 and x["classes"] == 10 for x in m)
    assert all(0 <= x["train_acc_noisy"] <= 1 and x["kl_init_bits"] > 0 for x in m)
    assert [x["kl_init_bits"] for x in m] == sorted((x["kl_init_bits"] for x in m), reverse=True)
    with pytest.raises(Exception, match="--info-prior"):
        FitConfig(dataset="digits", info_prior="init").validate()


def test_a_ramp_finds_its_trained_run_in_a_moved_record(tmp_path):
    """A study's record read elsewhere: the ramp's recorded source path is gone, the same step folder
    and name beside the ramp's own step folder is the run (a missing one stays missing)."""
    from rotelab.protocols.noise import source_of
    from rotelab.store import RunDir
    RunDir(tmp_path / "study" / "fits" / "a").create({"corrupt": "labels=1.0"}, {}, protocol="fit")
    ramp = tmp_path / "study" / "ramp" / "a"
    assert source_of(ramp, "/elsewhere/fits/a") == tmp_path / "study" / "fits" / "a"
    assert source_of(ramp, tmp_path / "study" / "fits" / "a") == tmp_path / "study" / "fits" / "a"
    assert source_of(ramp, "/elsewhere/fits/b") == Path("/elsewhere/fits/b")
