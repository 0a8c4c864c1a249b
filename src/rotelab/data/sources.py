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
    record: dict | None = None   # what a file source read (path, bytes, a hash): config.json's "data"


SOURCES = Registry("dataset", "--dataset", plugins="rotelab.datasets")   # name -> source(cfg) -> Source


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


# -- a researcher's own data: npz:PATH, imagefolder:PATH, hf:NAME_OR_PATH --------------------------

def file_digest(paths, names=None) -> str:
    """sha256 (16 hex digits) of files' bytes, read in blocks; with names, of each name and file."""
    import hashlib
    h = hashlib.sha256()
    for i, path in enumerate(paths):
        if names is not None:
            h.update(names[i].encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def labels_digest(*labels) -> str:
    import hashlib
    h = hashlib.sha256()
    for y in labels:
        h.update(np.ascontiguousarray(np.asarray(y, dtype=np.int64)).tobytes() + b"|")
    return h.hexdigest()[:16]


def images_or_vectors(x: np.ndarray, where: str, option: str = "--dataset") -> np.ndarray:
    """Inputs as the pipeline takes them: images (N, C, H, W) from (N, C, H, W), (N, H, W, C) or (N, H, W),
    uint8 scaled to [0, 1]; vectors (N, D); float32."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ConfigError(option, f"{where} holds {x.dtype} inputs; give numbers (uint8 images or float arrays)")
    scale = np.float32(255) if x.dtype == np.uint8 else np.float32(1)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)   # channels last -> channels first
    elif x.ndim not in (2, 4):
        raise ConfigError(option, f"{where} has inputs of shape {x.shape}; give images (N, C, H, W), (N, H, W, C), "
                                  "(N, H, W) or vectors (N, D)")
    return np.ascontiguousarray(x.astype(np.float32) / scale)


def class_labels(y, where: str, option: str = "--dataset") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating)
                                                                       and np.all(np.mod(y, 1) == 0)):
        raise ConfigError(option, f"{where} needs one whole-number class per example (shape (N,)), got {y.dtype} "
                                  f"of shape {y.shape}")
    if len(y) and y.min() < 0:
        raise ConfigError(option, f"{where} has a negative class {int(y.min())}; classes are 0..K-1")
    return y.astype(np.int64)


def arrays_source(x_train, y_train, x_test, y_test, classes, where: str, record: dict) -> Source:
    """A Source from arrays a user gave (npz, a Hugging Face dataset, a plugin): checked, with its record."""
    xtr, xte = images_or_vectors(x_train, f"{where} x_train"), images_or_vectors(x_test, f"{where} x_test")
    ytr, yte = class_labels(y_train, f"{where} y_train"), class_labels(y_test, f"{where} y_test")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ConfigError("--dataset", f"{where}: {len(xtr)} train inputs but {len(ytr)} labels, "
                                       f"{len(xte)} test inputs but {len(yte)} labels")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ConfigError("--dataset", f"{where}: train inputs {xtr.shape[1:]} and test inputs {xte.shape[1:]} differ")
    k = len(classes) if classes is not None else int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    if max(ytr.max(initial=0), yte.max(initial=0)) >= k:
        raise ConfigError("--dataset", f"{where}: a label is {int(max(ytr.max(), yte.max()))} but there are {k} classes")
    record = {**record, "train": len(ytr), "test": len(yte), "input_shape": list(xtr.shape[1:]), "classes": k,
              "labels_sha256": labels_digest(ytr, yte)}
    if classes is not None:
        record["class_names"] = [str(c) for c in classes]
    return Source(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte), k, True, record)


def _existing(path: str, scheme: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError("--dataset", f"{scheme}:{path}: no such {what}")
    return p


@SOURCES.scheme("npz", "arrays x_train, y_train, x_test, y_test (optional classes) in one .npz file")
def npz_source(path: str):
    def source(cfg) -> Source:
        p = _existing(path, "npz", "file")
        try:
            with np.load(p, allow_pickle=False) as f:
                missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
                if missing:
                    raise ConfigError("--dataset", f"npz:{path} has no array {missing[0]} (it has {', '.join(f.files)}); "
                                                   "save x_train, y_train, x_test, y_test (and optionally classes)")
                arrays = {k: f[k] for k in f.files}
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError("--dataset", f"npz:{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
        record = {"source": "npz", "path": str(p.resolve()), "bytes": p.stat().st_size, "file_sha256": file_digest([p])}
        return arrays_source(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                             arrays.get("classes"), f"npz:{path}", record)
    source.__doc__ = f"arrays from {path}"
    return source


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), or None where it cannot say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _image_files(folder: Path, classes: list[str] | None):
    """(class names, files, labels) of an ImageFolder split: one subfolder per class, in sorted order."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ConfigError("--dataset", f"{folder} has a class folder {unknown[0]!r} that train/ does not have")
    files, labels = [], []
    for k, c in enumerate(classes):
        if not (folder / c).is_dir():
            continue
        for f in sorted((folder / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(k)
    return classes, files, labels


def decode_images(files: list[Path], where: str) -> np.ndarray:
    """Every image decoded once into one uint8 array (N, H, W, C): the in-memory copy the runs train
    from (no per-sample Python after this). One error names a size that differs, or the memory it
    would take where that is more than the machine has."""
    from PIL import Image
    with Image.open(files[0]) as first:
        size = first.size
        mode = "RGB" if first.mode not in ("L", "I;16", "I", "1") else "L"
    channels = 3 if mode == "RGB" else 1
    need = len(files) * size[0] * size[1] * channels * (1 + 4)   # uint8 while decoding, then float32
    free = available_memory()
    if free is not None and need > free:
        raise ConfigError("--dataset", f"{where}: {len(files)} images of {size[0]}x{size[1]}x{channels} take "
                                       f"{need / 2**30:.1f} GiB in memory, more than the {free / 2**30:.1f} GiB "
                                       "available; use smaller images or fewer of them")
    out = np.empty((len(files), size[1], size[0], channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                if im.size != size:
                    raise ConfigError("--dataset", f"{where}: {f.name} is {im.size[0]}x{im.size[1]} but {files[0].name} "
                                                   f"is {size[0]}x{size[1]}; resize the images to one size")
                a = np.asarray(im.convert(mode))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError("--dataset", f"{where}: cannot read {f} ({type(e).__name__}: {e})") from None
        out[i] = a.reshape(size[1], size[0], channels)
    return out


@SOURCES.scheme("imagefolder", "torchvision's ImageFolder layout PATH/train/CLASS/*.png and PATH/test/CLASS/*.png, decoded once into memory")
def imagefolder_source(path: str):
    def source(cfg) -> Source:
        root = _existing(path, "imagefolder", "folder")
        missing = [s for s in ("train", "test") if not (root / s).is_dir()]
        if missing:
            raise ConfigError("--dataset", f"imagefolder:{path} has no {missing[0]}/ folder; lay it out as "
                                           "PATH/train/CLASS/*.png and PATH/test/CLASS/*.png")
        classes, train_files, ytr = _image_files(root / "train", None)
        _, test_files, yte = _image_files(root / "test", classes)
        if not train_files or not test_files:
            empty = "train" if not train_files else "test"
            raise ConfigError("--dataset", f"imagefolder:{path}/{empty} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        xtr = decode_images(train_files, f"imagefolder:{path}")
        xte = decode_images(test_files, f"imagefolder:{path}")
        if xtr.shape[1:] != xte.shape[1:]:
            raise ConfigError("--dataset", f"imagefolder:{path}: train images are {xtr.shape[1:3]} and test images "
                                           f"{xte.shape[1:3]}; resize them to one size")
        files = train_files + test_files
        record = {"source": "imagefolder", "path": str(root.resolve()),
                  "bytes": sum(f.stat().st_size for f in files),
                  "file_sha256": file_digest(files, [str(f.relative_to(root)) for f in files])}
        return arrays_source(xtr.transpose(0, 3, 1, 2), ytr, xte.transpose(0, 3, 1, 2), yte, classes,
                             f"imagefolder:{path}", record)
    source.__doc__ = f"images under {path}"
    return source


@SOURCES.scheme("hf", "a Hugging Face dataset: a folder saved with save_to_disk, or a name load_dataset finds (--hf-image-key, --hf-label-key)")
def hf_source(name: str):
    def source(cfg) -> Source:
        try:
            import datasets
        except ImportError:
            raise ConfigError("--dataset", "hf:NAME needs Hugging Face datasets: pip install 'rotelab[hf]'") from None
        path = Path(name).expanduser()
        try:
            ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(name)
        except Exception as e:
            raise ConfigError("--dataset", f"hf:{name}: cannot load it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                           "give a folder saved with save_to_disk, or a dataset name you have cached") from None
        if not isinstance(ds, datasets.DatasetDict):
            ds = datasets.DatasetDict({"train": ds})
        columns = ds["train"].column_names if "train" in ds else []
        image_key = getattr(cfg, "hf_image_key", None) or next((c for c in ("image", "img", "pixel_values", "x")
                                                               if c in columns), None)
        label_key = getattr(cfg, "hf_label_key", None) or next((c for c in ("label", "labels", "fine_label", "y")
                                                               if c in columns), None)
        if "train" not in ds:
            raise ConfigError("--dataset", f"hf:{name} has no train split (it has {', '.join(ds)})")
        for key, flag_ in ((image_key, "--hf-image-key"), (label_key, "--hf-label-key")):
            if key is None or key not in columns:
                raise ConfigError(flag_, f"hf:{name} has columns {', '.join(columns)}; name the "
                                         f"{'input' if flag_ == '--hf-image-key' else 'label'} column with {flag_}")

        def arrays(split):
            d = split.with_format("numpy")
            try:
                x = np.stack(list(d[image_key])) if not isinstance(d[image_key], np.ndarray) else d[image_key]
            except ValueError:
                raise ConfigError("--dataset", f"hf:{name}: the {image_key} column holds inputs of different shapes; "
                                               "resize them to one shape") from None
            return x, np.asarray(d[label_key])

        xtr, ytr = arrays(ds["train"])
        if "test" in ds:
            xte, yte = arrays(ds["test"])
        else:   # a dataset with one split: a fixed stratified part of it is the test set
            tr, te = stratified_split(ytr, cfg.test_fraction)
            xtr, ytr, xte, yte = xtr[tr], ytr[tr], xtr[te], ytr[te]
        feature = ds["train"].features.get(label_key)
        classes = list(feature.names) if hasattr(feature, "names") else None
        record = {"source": "hf", "name": name, "splits": sorted(ds), "image_key": image_key, "label_key": label_key}
        if path.is_dir():
            record["path"] = str(path.resolve())
        fingerprints = {s: getattr(ds[s], "_fingerprint", None) for s in ds}
        record["fingerprints"] = fingerprints
        return arrays_source(xtr, ytr, xte, yte, classes, f"hf:{name}", record)
    source.__doc__ = f"the Hugging Face dataset {name}"
    return source
