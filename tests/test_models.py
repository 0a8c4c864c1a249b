import pytest
import torch

from rotelab.config import ConfigError, FitConfig
from rotelab.models import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_fits_every_image_shape(name, shape):
    net = build_model(FitConfig(model=name, depth=10, widen=1), shape, 7)
    out = net(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name", ["alexnet-small", "inception-small", "wrn"])
def test_conv_models_refuse_vectors_with_a_clear_error(name):
    with pytest.raises(ConfigError, match="--model.*mlp"):
        build_model(FitConfig(model=name), (40,), 10)


def test_init_is_deterministic_from_the_seed():
    a = build_model(FitConfig(seed=1), (1, 8, 8), 10)
    b = build_model(FitConfig(seed=1), (1, 8, 8), 10)
    c = build_model(FitConfig(seed=2), (1, 8, 8), 10)
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])


def test_mlp_widths_and_tishby_shape():
    net = build_model(FitConfig(model="mlp", widths=[20, 30]), (12,), 2)
    assert [l[0].out_features for l in net.layers] == [20, 30]
    t = build_model(FitConfig(model="tishby"), (12,), 2)
    dims = [l[0].in_features for l in t.layers] + [t.head.in_features, t.head.out_features]
    assert dims == [12, 10, 7, 5, 4, 3, 2]
    assert isinstance(t.layers[0][1], torch.nn.Tanh)


def test_zhang_parameter_counts():
    # Zhang et al. (Table 1): small AlexNet 1,387,786 parameters on 28x28x3 crops
    alex = build_model(FitConfig(model="alexnet-small"), (3, 28, 28), 10)
    assert sum(p.numel() for p in alex.parameters()) == 1_387_786


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(ConfigError, match="--depth"):
        build_model(FitConfig(model="wrn", depth=15), (3, 32, 32), 10)


def test_unknown_model():
    with pytest.raises(ConfigError, match="--model.*mlp"):
        build_model(FitConfig(model="resnet9000"), (3, 32, 32), 10)


@pytest.mark.parametrize("kw", [dict(model="wrn", depth=10, widen=1), dict(model="mlp", widths=[16, 16], batch_norm=True)])
def test_scale_invariant_weights_leave_the_output_unchanged(kw):
    # known answer: batch norm (in training mode) normalizes what those weights produce, so scaling
    # them all by 3 changes nothing; scaling the classifier does change the output
    net = build_model(FitConfig(**kw), (1, 8, 8), 5).train()
    x = torch.randn(16, 1, 8, 8)
    names = net.scale_invariant()
    assert names and "head.weight" not in names
    before = net(x).detach()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].mul_(3.0)
    torch.testing.assert_close(net(x).detach(), before, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        params["head.weight"].mul_(3.0)
    assert not torch.allclose(net(x).detach(), before, atol=1e-3)


def test_wrn_without_batch_norm_is_the_same_net_less_its_norms():
    with_bn = build_model(FitConfig(model="wrn", depth=10, widen=1), (1, 8, 8), 5)
    plain = build_model(FitConfig(model="wrn", depth=10, widen=1, wrn_batch_norm=False), (1, 8, 8), 5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain.scale_invariant() == []
    convs = lambda net: [m.weight.shape for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs(plain) == convs(with_bn)
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    plain(torch.randn(2, 1, 8, 8)).sum().backward()


def test_channels_last_changes_the_layout_not_the_function():
    a = build_model(FitConfig(model="wrn", depth=10, widen=1, seed=3), (1, 8, 8), 5).eval()
    b = build_model(FitConfig(model="wrn", depth=10, widen=1, seed=3, channels_last=True), (1, 8, 8), 5).eval()
    assert b.features[1].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not a.features[1].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_wrn_zero_init_residual_starts_every_block_as_its_shortcut():
    import torch
    from rotelab.models.wrn import Block
    cfg = FitConfig(model="wrn", depth=16, widen=2, wrn_batch_norm=False, model_args={"zero_init_residual": True})
    net = build_model(cfg, (1, 8, 8), 5)
    for block in (m for m in net.modules() if isinstance(m, Block)):
        assert block.conv2.weight.abs().sum() == 0 and block.conv1.weight.abs().sum() > 0   # only the last conv
        if block.shortcut is None:
            x = torch.randn(3, block.conv1.in_channels, 8, 8)
            assert torch.equal(block(x), x)          # the residual branch adds exactly nothing
    plain = build_model(FitConfig(model="wrn", depth=16, widen=2, wrn_batch_norm=False), (1, 8, 8), 5)
    assert all(m.conv2.weight.abs().sum() > 0 for m in plain.modules() if isinstance(m, Block))   # off by default
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    net(x).sum().backward()
    assert all(m.conv2.weight.grad.abs().sum() > 0 for m in net.modules() if isinstance(m, Block))   # and it learns
