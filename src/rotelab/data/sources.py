"""Dataset sources: each returns the standard train/test split as in-memory tensors.

Images come as float32 (N, C, H, W) in [0, 1], vectors as float32 (N, D); labels as int64.
Normalization, subsets and corruption happen in `rotelab.data.load_data`.
"""

from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Source:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    normalize: bool = True  # standardize per channel with train statistics


SOURCES = Registry("dataset", "--dataset")   # name -> source(cfg) -> Source


def _tensors(x_train, y_train, x_test, y_test, num_classes, normalize=True) -> Source:
    f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
    i = lambda a: torch.as_tensor(np.asarray(a).astype(np.int64).ravel())
    return Source(f(x_train), i(y_train), f(x_test), i(y_test), num_classes, normalize)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, class-stratified train/test indices (independent of the run seed)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# -- embedded data sets (no download) ----------------------------------------------------------

@SOURCES.register("digits")
def digits(cfg) -> Source:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes); a fixed stratified split."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.images[:, None].astype(np.float32) / 16.0
    tr, te = stratified_split(d.target, cfg.test_fraction)
    return _tensors(x[tr], d.target[tr], x[te], d.target[te], 10)


def cache_dir() -> Path:
    """Where generated data sets are kept between processes: $ROTELAB_CACHE, else the user cache."""
    import os
    if os.environ.get("ROTELAB_CACHE"):
        return Path(os.environ["ROTELAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rotelab"


@functools.lru_cache(maxsize=2)
def _mnist1d() -> dict:
    """The standard MNIST-1D arrays (the package's default generator arguments). Generating them,
    and importing the generator, takes seconds, so they are kept on disk (keyed by the package
    version) for every later process, e.g. a sweep's workers."""
    import os
    from importlib.metadata import PackageNotFoundError, version
    try:
        path = cache_dir() / f"mnist1d-{version('mnist1d')}.npz"
    except PackageNotFoundError:
        raise ConfigError("--dataset", "mnist1d needs the mnist1d package: pip install mnist1d") from None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError):
        pass
    from mnist1d.data import get_dataset_args, make_dataset
    d = make_dataset(get_dataset_args())
    arrays = {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}
    try:   # atomic: concurrent processes may generate it at the same time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only cache only costs the time to generate
    return arrays


@SOURCES.register("mnist1d")
def mnist1d(cfg) -> Source:
    """MNIST-1D (Greydanus 2020): 4,000 + 1,000 one-dimensional signals of length 40, generated locally."""
    d = _mnist1d()
    return _tensors(d["x"], d["y"], d["x_test"], d["y_test"], 10)


def twelve_bit_task(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit task of the same shape as Shwartz-Ziv & Tishby's var_u.mat.

    Every 12-bit pattern once (4096 x 12); the 12 bits sit on the vertices of an icosahedron and the
    label thresholds a rotation-invariant function of the active vertices (the length of their
    summed unit vectors plus a small fixed random term that breaks ties), near p(y=1) = 1/2. The
    labels differ from the original file's; use --data-file for those.
    """
    g = (1 + 5 ** 0.5) / 2
    v = np.array([[0, s1, s2 * g] for s1 in (-1, 1) for s2 in (-1, 1)], dtype=float)
    verts = np.concatenate([v, np.roll(v, 1, axis=1), np.roll(v, 2, axis=1)])
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    bits = ((np.arange(4096)[:, None] >> np.arange(11, -1, -1)) & 1).astype(np.uint8)
    score = np.linalg.norm(bits @ verts, axis=1) + 1e-3 * np.random.default_rng(seed).standard_normal(4096)
    y = (score > np.median(score)).astype(np.int64)
    return bits, y


@SOURCES.register("tishby")
def tishby(cfg) -> Source:
    """The 12-bit task: var_u.mat from --data-file, or a generated task of the same shape. Inputs are raw bits."""
    if cfg.data_file:
        path = Path(cfg.data_file)
        if not path.is_file():
            raise ConfigError("--data-file", f"no such file {str(path)!r}; give the path to var_u.mat, or omit it for the generated 12-bit task")
        from scipy.io import loadmat
        try:
            m = loadmat(str(path))
            x, y = np.asarray(m["F"]), np.asarray(m["y"]).ravel()
        except Exception as e:
            raise ConfigError("--data-file", f"{path} is not a var_u.mat file with arrays F and y ({e})") from None
    else:
        x, y = twelve_bit_task()
    tr, te = stratified_split(y, cfg.test_fraction)
    return _tensors(x[tr], y[tr], x[te], y[te], 2, normalize=False)


# -- torchvision data sets --------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {arr.size} values")
    return arr.reshape(shape)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _mnist_like(cfg, folder: str, tv_class: str, extra_dirs=()) -> Source:
    root = Path(cfg.data_root)
    dirs = [root / folder / "raw", root / folder, root, *extra_dirs]
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(dirs, s) for s in stems]
    if None in paths and cfg.download:
        import torchvision
        getattr(torchvision.datasets, tv_class)(str(root), train=True, download=True)
        getattr(torchvision.datasets, tv_class)(str(root), train=False, download=True)
        paths = [_find_idx(dirs, s) for s in stems]
    if None in paths:
        missing = stems[paths.index(None)]
        raise ConfigError("--data-root", f"no {missing}[.gz] under {root / folder / 'raw'}; pass --download to fetch "
                                         f"{folder} with torchvision, or point --data-root at a folder that has it")
    try:
        xtr, ytr, xte, yte = (read_idx(p) for p in paths if p is not None)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError("--data-root", f"cannot read {folder} ({e}); delete the damaged file and pass --download") from None
    scale = lambda a: a[:, None].astype(np.float32) / np.float32(255)
    return _tensors(scale(xtr), ytr, scale(xte), yte, 10)


@SOURCES.register("mnist")
def mnist(cfg) -> Source:
    return _mnist_like(cfg, "MNIST", "MNIST")


@SOURCES.register("fashion-mnist")
def fashion_mnist(cfg) -> Source:
    """Fashion-MNIST from --data-root (torchvision layout), else from Debian's dataset-fashion-mnist."""
    return _mnist_like(cfg, "FashionMNIST", "FashionMNIST", extra_dirs=[DEBIAN_FASHION_MNIST])


def _cifar(cfg, folder: str, tv_class: str, train_files, test_files, label_key: str, num_classes: int) -> Source:
    root = Path(cfg.data_root)
    base = root / folder
    files = [base / f for f in (*train_files, *test_files)]
    if not all(f.is_file() for f in files) and cfg.download:
        import torchvision
        getattr(torchvision.datasets, tv_class)(str(root), train=True, download=True)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConfigError("--data-root", f"no {missing[0]}; pass --download to fetch {tv_class} with torchvision, "
                                         f"or point --data-root at the folder that holds {folder}/")

    def load(names):
        xs, ys = [], []
        for n in names:
            try:
                with open(base / n, "rb") as f:
                    d = pickle.load(f, encoding="latin1")
                xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[label_key]))
            except Exception as e:
                raise ConfigError("--data-root", f"cannot read {base / n} ({e}); delete it and pass --download") from None
        return np.concatenate(xs).astype(np.float32) / np.float32(255), np.concatenate(ys)

    (xtr, ytr), (xte, yte) = load(train_files), load(test_files)
    return _tensors(xtr, ytr, xte, yte, num_classes)


@SOURCES.register("cifar10")
def cifar10(cfg) -> Source:
    return _cifar(cfg, "cifar-10-batches-py", "CIFAR10", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10)


@SOURCES.register("cifar100")
def cifar100(cfg) -> Source:
    return _cifar(cfg, "cifar-100-python", "CIFAR100", ["train"], ["test"], "fine_labels", 100)
