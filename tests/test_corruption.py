import numpy as np
import pytest
import torch

from rotelab.config import ConfigError, FitConfig, parse_corruption
from rotelab.data import corruption, load_data


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
def test_uniform_label_noise_changes_p_times_1_minus_1_over_k(p):
    n, k = 200_000, 10
    y = torch.randint(k, (n,), generator=gen(1))
    new, mask = corruption.corrupt_labels(y, p, k, gen(2), "uniform")
    expected = p * (1 - 1 / k)
    sd = np.sqrt(expected * (1 - expected) / n) + 1e-12
    assert abs(mask.float().mean().item() - expected) <= 5 * sd
    assert torch.equal(mask, new != y)
    assert new.min() >= 0 and new.max() < k


def test_other_label_noise_always_changes_the_picked_labels():
    n, k, p = 100_000, 10, 0.3
    y = torch.randint(k, (n,), generator=gen(1))
    new, mask = corruption.corrupt_labels(y, p, k, gen(2), "other")
    assert abs(mask.float().mean().item() - p) < 5 * np.sqrt(p * (1 - p) / n)
    # the new labels of changed examples are uniform over the other classes
    offsets = ((new - y) % k)[mask]
    counts = torch.bincount(offsets, minlength=k)
    assert counts[0] == 0
    assert (counts[1:].float() / counts.sum()).sub(1 / (k - 1)).abs().max() < 0.01


def test_full_label_noise_is_independent_of_the_true_label():
    n, k = 100_000, 4
    y = torch.randint(k, (n,), generator=gen(3))
    new, _ = corruption.corrupt_labels(y, 1.0, k, gen(4), "uniform")
    joint = torch.zeros(k, k)
    joint.index_put_((y, new), torch.ones(n), accumulate=True)
    joint /= n
    assert (joint - joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)).abs().max() < 0.005


def test_label_noise_is_reproducible_from_the_seed():
    y = torch.randint(10, (1000,), generator=gen(0))
    a, _ = corruption.corrupt_labels(y, 0.5, 10, gen(7))
    b, _ = corruption.corrupt_labels(y, 0.5, 10, gen(7))
    c, _ = corruption.corrupt_labels(y, 0.5, 10, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def images(n=64, c=3, h=5, w=6):
    return torch.randn(n, c, h, w, generator=gen(5))


def test_shuffled_pixels_use_one_permutation_for_all_images_and_move_channels_together():
    x = images()
    out, mask = corruption.shuffle_pixels(x, 1.0, gen(1))
    assert out.shape == x.shape and mask.all()
    flat_in, flat_out = x.reshape(64, 3, -1), out.reshape(64, 3, -1)
    # recover the permutation from the first image's first channel; it explains every image and channel
    perm = torch.tensor([int((flat_in[0, 0] == v).nonzero()[0]) for v in flat_out[0, 0]])
    assert torch.equal(flat_out, flat_in[:, :, perm])
    assert not torch.equal(perm, torch.arange(len(perm)))


def test_shuffled_pixels_with_p_leave_the_rest_alone():
    x = images(n=2000, c=1, h=3, w=3)
    out, mask = corruption.shuffle_pixels(x, 0.25, gen(1))
    assert torch.equal(out[~mask], x[~mask])
    assert abs(mask.float().mean().item() - 0.25) < 0.05


def test_random_pixels_permute_each_image_independently():
    x = images()
    out, mask = corruption.random_pixels(x, 1.0, gen(2))
    a, b = x.reshape(64, 3, -1), out.reshape(64, 3, -1)
    # each image keeps its values (a permutation per image, channels together)
    assert torch.equal(a[:, 0].sort(dim=1).values, b[:, 0].sort(dim=1).values)
    perms = [tuple(int((a[i, 0] == v).nonzero()[0]) for v in b[i, 0]) for i in range(64)]
    for i in range(64):
        assert torch.equal(b[i], a[i][:, list(perms[i])])
    assert len(set(perms)) == 64


def test_gaussian_inputs_match_the_data_mean_and_std_per_channel():
    x = torch.randn(4000, 3, 4, 4, generator=gen(1)) * torch.tensor([1.0, 2.0, 0.5])[None, :, None, None] \
        + torch.tensor([0.0, -1.0, 3.0])[None, :, None, None]
    out, mask = corruption.gaussian_inputs(x, 1.0, gen(2))
    m_in, s_in = corruption.channel_stats(x)
    m_out, s_out = corruption.channel_stats(out)
    assert out.shape == x.shape
    assert torch.allclose(m_in, m_out, atol=0.03) and torch.allclose(s_in, s_out, rtol=0.02)
    assert not torch.isclose(out, x).any(dim=(1, 2, 3)).all()


def test_vectors_are_treated_as_one_channel():
    x = torch.randn(50, 12, generator=gen(1))
    out, _ = corruption.random_pixels(x, 1.0, gen(2))
    assert out.shape == x.shape
    assert torch.equal(x.sort(dim=1).values, out.sort(dim=1).values)


@pytest.mark.parametrize("spec,expected", [("labels=0.5", ("labels", 0.5)), ("none", ("none", 0.0)),
                                           ("random-pixels", ("random-pixels", 1.0)), ("gaussian=0", ("gaussian", 0.0))])
def test_parse_corruption(spec, expected):
    assert parse_corruption(spec) == expected


@pytest.mark.parametrize("spec", ["labels=1.5", "labels=-0.1", "labels", "blur=0.5", "labels=abc"])
def test_bad_corruption_names_the_flag(spec):
    with pytest.raises(ConfigError, match="--corrupt"):
        parse_corruption(spec)


def test_load_data_records_corruption_and_keeps_test_clean_unless_asked():
    cfg = FitConfig(dataset="digits", corrupt="labels=0.6", seed=3)
    d = load_data(cfg)
    assert torch.equal(d.train.corrupted, d.train.y != d.train.y_true)
    assert 0.4 < d.train.corrupted.float().mean() < 0.65
    assert torch.equal(d.test.y, d.test.y_true) and not d.test.corrupted.any()
    again = load_data(cfg)
    assert torch.equal(again.train.y, d.train.y)
    d2 = load_data(FitConfig(dataset="digits", corrupt="labels=0.6", seed=3, corrupt_test=True))
    assert d2.test.corrupted.any()
    assert torch.equal(d2.train.y, d.train.y)  # the test stream does not disturb the train stream


def test_shuffled_pixels_on_test_reuse_the_train_permutation():
    from rotelab.seeding import generator
    d = load_data(FitConfig(dataset="digits", corrupt="shuffled-pixels", corrupt_test=True))
    clean = load_data(FitConfig(dataset="digits"))
    perm = corruption.pixel_permutation(clean.train.x, generator(0, "pixel-permutation"))
    flat = lambda t: t.reshape(len(t), -1)
    assert torch.equal(flat(d.train.x), flat(clean.train.x)[:, perm])
    assert torch.equal(flat(d.test.x), flat(clean.test.x)[:, perm])
    assert d.train.corrupted.all() and d.test.corrupted.all()
    # every training image permuted: the test images are by default too (Zhang et al.: the task is the
    # permuted one); a partly shuffled training set leaves the test set clean
    default = load_data(FitConfig(dataset="digits", corrupt="shuffled-pixels"))
    assert torch.equal(flat(default.test.x), flat(clean.test.x)[:, perm]) and default.test.corrupted.all()
    half = load_data(FitConfig(dataset="digits", corrupt="shuffled-pixels=0.5"))
    assert torch.equal(half.test.x, clean.test.x) and not half.test.corrupted.any()


def test_pair_noise_is_class_conditional():
    """Pair flipping: every picked label of class c becomes c + 1 mod K, and only picked ones change."""
    import torch
    from rotelab.data.corruption import corrupt_labels
    y = torch.arange(10).repeat(100)
    out, changed = corrupt_labels(y, 0.3, 10, torch.Generator().manual_seed(0), mode="pair")
    assert torch.equal(out[changed], (y[changed] + 1) % 10) and torch.equal(out[~changed], y[~changed])
    assert 0.25 < changed.float().mean().item() < 0.35
