import gzip
import pickle

import numpy as np
import pytest
import torch

from conftest import VAR_U
from rotelab.config import ConfigError, FitConfig
from rotelab.data import balanced_subset, load_data
from rotelab.data.sources import DEBIAN_FASHION_MNIST, read_idx, twelve_bit_task


def write_idx(path, arr, gz=False):
    """An IDX file as the MNIST distribution has it: magic 0x0000080N, big-endian dims, uint8 data."""
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_mnist(root, folder="MNIST", n_train=50, n_test=20, gz=False):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for name, arr in arrays.items():
        write_idx(root / folder / "raw" / name, arr, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_official_idx_files(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    d = load_data(FitConfig(dataset="mnist", data_root=str(tmp_path)))
    assert d.train.x.shape == (50, 1, 28, 28) and d.test.x.shape == (20, 1, 28, 28)
    assert torch.equal(d.train.y, torch.as_tensor(arrays["train-labels-idx1-ubyte"]))
    # normalization is affine per channel: pixel order and ranks survive
    raw = arrays["train-images-idx3-ubyte"].reshape(50, -1).astype(float)
    got = d.train.x.reshape(50, -1).double().numpy()
    mean, std = raw.mean() / 255, (raw / 255).std(ddof=1)
    np.testing.assert_allclose(got, (raw / 255 - mean) / std, rtol=1e-4, atol=1e-4)
    assert abs(d.train.x.mean()) < 1e-5 and abs(d.train.x.std() - 1) < 1e-3


def test_read_idx_rejects_truncated_files(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 3, 3)))
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "x")


def write_cifar(root, n_per_batch=6, cifar100=False):
    rng = np.random.default_rng(1)
    if cifar100:
        base, files, key, k = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
    else:
        base, files, key, k = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10
    base.mkdir(parents=True)
    written = {}
    for name in files:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 key: list(rng.integers(0, k, n_per_batch)), "batch_label": name}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = batch
    return written, key


@pytest.mark.parametrize("cifar100", [False, True])
def test_cifar_loader_reads_official_pickles(tmp_path, cifar100):
    written, key = write_cifar(tmp_path, cifar100=cifar100)
    d = load_data(FitConfig(dataset="cifar100" if cifar100 else "cifar10", data_root=str(tmp_path)))
    n_train = 6 if cifar100 else 30
    assert d.train.x.shape == (n_train, 3, 32, 32) and d.test.x.shape == (6, 3, 32, 32)
    assert d.num_classes == (100 if cifar100 else 10)
    test_name = "test" if cifar100 else "test_batch"
    assert d.test.y.tolist() == [int(v) for v in written[test_name][key]]
    # channel-first layout: the first 1024 bytes of a row are the red plane
    row = written[test_name]["data"][0].astype(np.float32)
    x = d.test.x[0].numpy()
    red = x[0].ravel()
    assert np.corrcoef(red, row[:1024])[0, 1] > 0.999


def test_missing_data_root_names_the_flag_and_the_fix(tmp_path):
    for name in ("mnist", "cifar10", "cifar100"):
        with pytest.raises(ConfigError, match="--data-root.*--download"):
            load_data(FitConfig(dataset=name, data_root=str(tmp_path / "nothing")))


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="--dataset.*digits"):
        load_data(FitConfig(dataset="imagenet"))


def test_digits_split_and_normalization():
    d = load_data(FitConfig(dataset="digits"))
    assert d.train.x.shape[1:] == (1, 8, 8)
    assert len(d.train) + len(d.test) == 1797
    assert abs(len(d.test) / 1797 - 0.2) < 0.01
    counts = torch.bincount(d.test.y, minlength=10).float()
    assert counts.min() >= 34 and counts.max() <= 38   # stratified: ~36 per class
    assert abs(d.train.x.mean()) < 1e-5 and abs(d.train.x.std() - 1) < 1e-3


def test_subset_is_class_balanced_fixed_and_independent_of_seed():
    a = load_data(FitConfig(dataset="digits", subset=100, seed=0))
    b = load_data(FitConfig(dataset="digits", subset=100, seed=5))
    assert len(a.train) == 100
    assert torch.bincount(a.train.y, minlength=10).tolist() == [10] * 10
    assert torch.equal(a.train.x, b.train.x)


def test_balanced_subset_water_fills_small_classes():
    y = torch.tensor([0] * 3 + [1] * 50 + [2] * 50)
    idx = balanced_subset(y, 30, 3)
    assert torch.bincount(y[idx]).tolist() == [3, 14, 13] or torch.bincount(y[idx]).tolist() == [3, 13, 14]
    assert len(set(idx.tolist())) == 30
    with pytest.raises(ConfigError, match="--subset"):
        balanced_subset(y, 500, 3)


@pytest.mark.slow
def test_mnist1d_shapes_and_disk_cache(tmp_path, monkeypatch):
    import rotelab.data as data_module
    from rotelab.data import sources
    monkeypatch.setenv("ROTELAB_CACHE", str(tmp_path))
    sources._mnist1d.cache_clear()
    data_module._prepared.cache_clear()   # nothing kept in memory: as a new process
    d = load_data(FitConfig(dataset="mnist1d"))
    assert d.train.x.shape == (4000, 40) and d.test.x.shape == (1000, 40)
    assert d.num_classes == 10
    (cached,) = tmp_path.glob("mnist1d-*.npz")
    # the generated arrays are the package's own
    from mnist1d.data import get_dataset_args, make_dataset
    fresh = make_dataset(get_dataset_args())
    assert np.array_equal(np.asarray(fresh["y_test"]), sources._mnist1d()["y_test"])
    # a later process reads the file instead of generating (a marked file comes back marked)
    arrays = dict(np.load(cached))
    arrays["y_test"][:5] = 9
    np.savez(cached, **arrays)
    sources._mnist1d.cache_clear()
    data_module._prepared.cache_clear()
    assert load_data(FitConfig(dataset="mnist1d")).test.y[:5].tolist() == [9] * 5
    sources._mnist1d.cache_clear()


def test_generated_twelve_bit_task_has_the_shape_of_var_u():
    x, y = twelve_bit_task()
    assert x.shape == (4096, 12) and y.shape == (4096,)
    assert len({tuple(r) for r in x}) == 4096
    assert abs(y.mean() - 0.5) < 0.02
    d = load_data(FitConfig(dataset="tishby"))
    assert d.train.x.shape[1] == 12 and set(d.train.x.unique().tolist()) == {0.0, 1.0}  # raw bits


@pytest.mark.skipif(not VAR_U.is_file(), reason="var_u.mat not beside the project")
def test_var_u_mat_is_read_from_a_path():
    d = load_data(FitConfig(dataset="tishby", data_file=str(VAR_U)))
    assert len(d.train) + len(d.test) == 4096
    assert int(d.train.y.sum() + d.test.y.sum()) == 2118


def test_missing_var_u_file():
    with pytest.raises(ConfigError, match="--data-file"):
        load_data(FitConfig(dataset="tishby", data_file="no/such/var_u.mat"))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    d = load_data(FitConfig(dataset="fashion-mnist", data_root=str(tmp_path)))
    assert d.train.x.shape == (60000, 1, 28, 28) and d.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.train.y).tolist() == [6000] * 10


def test_center_crop_keeps_the_central_pixels_and_refuses_flat_data():
    from rotelab.data import center_crop
    from rotelab.errors import ConfigError
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).reshape(2, 3, 6, 5)
    c = center_crop(x, 3)
    assert c.shape == (2, 3, 3, 3) and torch.equal(c, x[:, :, 1:4, 1:4])
    with pytest.raises(ConfigError, match="--center-crop"):
        center_crop(x, 7)
    with pytest.raises(ConfigError, match="--center-crop"):
        center_crop(torch.zeros(4, 64), 2)


def test_runs_share_one_device_copy_of_their_inputs():
    """The prepared inputs move to a device once per process (not once a run): two seeds' label
    corruptions keep their own labels and share the inputs' one copy ('meta' stands in for an
    accelerator: moving there makes a new tensor, as moving to CUDA does)."""
    from rotelab.data import load_data
    a = load_data(FitConfig(dataset="digits", corrupt="labels=0.5", seed=0)).to("meta")
    b = load_data(FitConfig(dataset="digits", corrupt="labels=0.5", seed=1)).to("meta")
    assert a.train.x.device.type == "meta"
    assert a.train.x is b.train.x and a.test.x is b.test.x
    assert a.train.y is not b.train.y   # each run's own labels
    c = load_data(FitConfig(dataset="digits", corrupt="random-pixels=0.5", seed=0)).to("meta")
    assert c.train.x is not a.train.x and c.test.x is a.test.x   # its own corrupted inputs, the shared test set


def test_remove_leaves_k_examples_out_of_training(tmp_path):
    """--remove random:K holds out K examples drawn from the seed; mem:K:PATH the K of highest mem in a
    memorize folder's estimates (NaN last), which stay evaluated."""
    from rotelab.data import load_data
    a = load_data(FitConfig(dataset="digits", remove="random:100", seed=0))
    b = load_data(FitConfig(dataset="digits", remove="random:100", seed=1))
    assert len(a.train_subset) == len(a.train) - 100 and len(a.train) == 1438
    assert not torch.equal(a.train_subset, b.train_subset)
    assert torch.equal(a.train_subset, load_data(FitConfig(dataset="digits", remove="random:100", seed=0)).train_subset)
    mem = np.full(1438, 0.1)
    mem[[5, 700, 1000]] = [0.9, 0.95, 0.8]
    mem[3] = np.nan
    np.savez(tmp_path / "memorization.npz", mem=mem)
    c = load_data(FitConfig(dataset="digits", remove=f"mem:3:{tmp_path}"))
    assert sorted(set(range(1438)) - set(c.train_subset.tolist())) == [5, 700, 1000]
    for bad in ("mem:3", "random:0", "top:3:x", f"mem:2000:{tmp_path}"):
        with pytest.raises(ConfigError, match="--remove"):
            load_data(FitConfig(dataset="digits", remove=bad).validate())


def test_where_the_estimates_lie_is_bookkeeping():
    from rotelab.plan import config_differences
    cfg = FitConfig(dataset="digits", remove="mem:100:/here/atlas")
    saved = {**cfg.to_dict(), "remove": "mem:100:/elsewhere/atlas"}
    assert config_differences(cfg, saved) == []
    assert config_differences(cfg, {**saved, "remove": "mem:200:/here/atlas"}) != []
