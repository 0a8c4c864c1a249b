"""Data: a source (sources.py), then normalization, a fixed subset and a corruption (corruption.py)."""

from __future__ import annotations

import functools
import types
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..spec import parse_corruption, parse_fold
from ..seeding import derive_seed, generator
from . import corruption
from .sources import SOURCES, Source


_device_copies: dict[int, tuple] = {}   # id(host tensor) -> (a weak reference to it, {device: copy})


def on_device(t: torch.Tensor, device) -> torch.Tensor:
    """t on `device`, one copy per host tensor and device for as long as the host tensor lives: the runs
    of a stack (and a memorize folder's models) read the same prepared inputs, which then lie on the
    accelerator once instead of once a run (16 runs of Fashion-MNIST: 3.5 GB). Nothing writes into
    these tensors (corruptions and subsets make new ones)."""
    device = torch.device(device)
    if t.device == device:
        return t
    entry = _device_copies.get(id(t))
    if entry is None or entry[0]() is not t:
        entry = (weakref.ref(t), {})
        _device_copies[id(t)] = entry
        weakref.finalize(t, _device_copies.pop, id(t), None)
    if device not in entry[1]:
        entry[1][device] = t.to(device)
    return entry[1][device]


@dataclass
class Split:
    x: torch.Tensor          # inputs as used (possibly corrupted)
    y: torch.Tensor          # labels as used (possibly corrupted)
    y_true: torch.Tensor     # original labels
    corrupted: torch.Tensor  # bool: this example's input or label was changed

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(*(on_device(t, device) for t in (self.x, self.y, self.y_true, self.corrupted)))


@dataclass
class Data:
    name: str
    train: Split
    test: Split
    num_classes: int
    val: Split | None = None  # a held-out part of the training set (the forget protocol's)
    train_subset: torch.Tensor | None = None   # indices of the training examples trained on (--train-fraction)
    record: dict | None = None   # what a file source or labels file read (config.json's "data")

    @property
    def splits(self) -> dict[str, Split]:
        """The named splits, in the order metrics list them."""
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        out["test"] = self.test
        return out

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device) -> "Data":
        val = self.val.to(device) if self.val is not None else None
        subset = on_device(self.train_subset, device) if self.train_subset is not None else None
        return Data(self.name, self.train.to(device), self.test.to(device), self.num_classes, val, subset, self.record)


def balanced_subset(y: torch.Tensor, n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Indices of a fixed subset of n examples with (as nearly as possible) equal counts per class."""
    if n > len(y):
        raise ConfigError("--subset", f"asks for {n} examples but the training set has {len(y)}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    by_class = [order[y[order] == c] for c in range(num_classes)]
    counts = [0] * num_classes
    left = n
    while left:  # water-filling: small classes give their share to the others
        open_ = [c for c in range(num_classes) if counts[c] < len(by_class[c])]
        share = max(left // len(open_), 1)
        for c in open_:
            take = min(share, len(by_class[c]) - counts[c], left)
            counts[c] += take
            left -= take
            if not left:
                break
    return torch.cat([by_class[c][:k] for c, k in enumerate(counts)]).sort().values


def fold_of(y: torch.Tensor, folds: int, num_classes: int, seed: int) -> torch.Tensor:
    """Each example's fold (0..folds-1): within each class, a random order dealt out in turn, so
    every fold holds each class's examples as evenly as possible."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    fold = torch.empty(len(y), dtype=torch.long)
    for c in range(num_classes):
        members = order[y[order] == c]
        fold[members] = torch.arange(len(members)) % folds
    return fold


def load_source(cfg) -> Source:
    """The dataset's source; a plugin's (entry point group rotelab.datasets) may give a Source or a
    dict of arrays as an npz file holds them (x_train, y_train, x_test, y_test, optional classes)."""
    from .sources import arrays_source
    out = SOURCES.get(cfg.dataset)(cfg)
    if isinstance(out, dict):
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in out]
        if missing:
            raise ConfigError("--dataset", f"the dataset {cfg.dataset!r} gave no {missing[0]}")
        return arrays_source(out["x_train"], out["y_train"], out["x_test"], out["y_test"], out.get("classes"),
                             f"dataset {cfg.dataset}", {"source": "plugin", "name": cfg.dataset})
    if not isinstance(out, Source):
        raise ConfigError("--dataset", f"the dataset {cfg.dataset!r} gave a {type(out).__name__}, not arrays")
    return out


def corrupt_split(x, y, num_classes, kind, p, gen, label_mode, perm=None, stats=None):
    """Apply one corruption kind to (x, y); returns (x, y, corrupted mask)."""
    if kind == "labels":
        y_new, mask = corruption.corrupt_labels(y, p, num_classes, gen, label_mode)
        return x, y_new, mask
    if kind == "shuffled-pixels":
        x_new, mask = corruption.shuffle_pixels(x, p, gen, perm)
    elif kind == "random-pixels":
        x_new, mask = corruption.random_pixels(x, p, gen)
    elif kind == "gaussian":
        x_new, mask = corruption.gaussian_inputs(x, p, gen, stats)
    else:
        return x, y, torch.zeros(len(y), dtype=torch.bool)
    return x_new, y, mask


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size pixels of images (N, C, H, W); one clear error for other data."""
    if x.dim() != 4 or min(x.shape[2:]) < size:
        raise ConfigError("--center-crop", f"needs images of at least {size} x {size}, but the data has shape "
                                           f"{tuple(x.shape[1:])}; drop --center-crop or give a smaller size")
    top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
    return x[:, :, top:top + size, left:left + size].contiguous()


def read_labels_file(path: str, key: str | None, n: int, num_classes: int) -> tuple[np.ndarray, dict]:
    """The N training labels of a labels file (--labels-file): .npy, .csv/.txt (one column, or the
    column --labels-key names), or a dict in .pt/.npz/.json (CIFAR-10N's CIFAR-10_human.pt holds
    aggre_label, worse_label, random_label1, ...: --labels-key picks one). With its record."""
    from .sources import file_digest, labels_digest
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("--labels-file", f"no such file {path!r}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            found = np.load(p, allow_pickle=False)
        elif suffix in (".csv", ".txt", ".tsv"):
            import pandas as pd
            sep = "\t" if suffix == ".tsv" else ","
            table = pd.read_csv(p, sep=sep, header=None)
            if not all(np.issubdtype(t, np.number) for t in table.dtypes):
                table = pd.read_csv(p, sep=sep)   # a header line names the columns
            found = table[key].to_numpy() if key is not None else table.to_numpy()
            if key is None and found.ndim == 2:
                if found.shape[1] != 1:
                    raise ConfigError("--labels-key", f"{path} has {found.shape[1]} columns; name the labels' "
                                                      "column (its header) with --labels-key")
                found = found[:, 0]
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                found = {k: f[k] for k in f.files}
        elif suffix in (".pt", ".pth"):
            import torch
            found = torch.load(p, map_location="cpu", weights_only=False)
        elif suffix == ".json":
            import json
            found = json.loads(p.read_text())
        else:
            raise ConfigError("--labels-file", f"{path}: read .npy, .csv, .npz, .pt or .json files of labels")
    except ConfigError:
        raise
    except KeyError:
        raise ConfigError("--labels-key", f"{path} has no column {key!r}") from None
    except Exception as e:
        raise ConfigError("--labels-file", f"cannot read {path} ({type(e).__name__}: {e})") from None
    if isinstance(found, dict):
        keys = sorted(str(k) for k in found)
        if key is None and len(found) != 1:
            raise ConfigError("--labels-key", f"{path} holds {', '.join(keys)}; pick the labels with --labels-key")
        key = key if key is not None else keys[0]
        if key not in found:
            raise ConfigError("--labels-key", f"{path} has no {key!r}; it holds {', '.join(keys)}")
        found = found[key]
    elif key is not None and suffix not in (".csv", ".txt", ".tsv"):
        raise ConfigError("--labels-key", f"{path} holds one array of labels; drop --labels-key")
    y = np.asarray(found.numpy() if hasattr(found, "numpy") else found)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                                  and np.all(np.mod(y, 1) == 0))):
        raise ConfigError("--labels-file", f"{path}{f' [{key}]' if key else ''} needs one whole-number class per "
                                           f"training example, got {y.dtype} of shape {y.shape}")
    if len(y) != n:
        raise ConfigError("--labels-file", f"{path}{f' [{key}]' if key else ''} has {len(y)} labels but the training "
                                           f"set has {n} examples (before --subset); give one label per training example")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError("--labels-file", f"{path} has a label {int(y.max() if y.max() >= num_classes else y.min())} "
                                           f"outside the dataset's classes 0..{num_classes - 1}")
    y = y.astype(np.int64)
    return y, {"path": str(p.resolve()), "key": key, "bytes": p.stat().st_size, "file_sha256": file_digest([p]),
               "labels_sha256": labels_digest(y)}


@functools.lru_cache(maxsize=2)
def _prepared(dataset, data_root, data_file, download, test_fraction, crop, normalize, subset, test_subset,
              hf_keys=(None, None), labels=(None, None)):
    """A source's inputs and labels cropped, standardized and subset: the part of load_data that
    depends on no seed, kept for the next run in this process (the runs of a stack, a memorize
    folder's models: reading and standardizing Fashion-MNIST took 0.8 s a run). Nothing downstream
    writes into these tensors (corruptions and subsets make new ones). With a labels file, the labels
    used in training (y_given) are the file's and the source's are the truth; what a file source read
    is its record (config.json's "data")."""
    cfg = types.SimpleNamespace(dataset=dataset, data_root=data_root, data_file=data_file, download=download,
                                test_fraction=test_fraction, hf_image_key=hf_keys[0], hf_label_key=hf_keys[1])
    src = load_source(cfg)
    x_train, y_train, x_test, y_test = src.x_train, src.y_train, src.x_test, src.y_test
    record = dict(src.record) if src.record else None
    y_given = y_train
    if labels[0] is not None:
        given, labels_record = read_labels_file(labels[0], labels[1], len(y_train), src.num_classes)
        y_given = torch.from_numpy(given)
        record = {**(record or {"source": dataset}), "labels_file": labels_record,
                  "labels_differ": int((y_given != y_train).sum())}
    if crop is not None:
        x_train, x_test = center_crop(x_train, crop), center_crop(x_test, crop)
    if src.normalize and normalize == "standard":
        mean, std = corruption.channel_stats(x_train)
        shape = (1, -1) + (1,) * (x_train.dim() - 2) if x_train.dim() > 2 else (1, 1)
        std = std.clamp_min(1e-8)
        x_train = (x_train - mean.reshape(shape)) / std.reshape(shape)
        x_test = (x_test - mean.reshape(shape)) / std.reshape(shape)
    if subset is not None:
        idx = balanced_subset(y_train, subset, src.num_classes)
        x_train, y_train, y_given = x_train[idx], y_train[idx], y_given[idx]
    if test_subset is not None:
        if test_subset > len(y_test):
            raise ConfigError("--test-subset", f"asks for {test_subset} examples but the test set has {len(y_test)}")
        idx = balanced_subset(y_test, test_subset, src.num_classes, seed=derive_seed(0, "test-subset"))
        x_test, y_test = x_test[idx], y_test[idx]
    return (x_train, y_train, x_test, y_test, src.num_classes, corruption.channel_stats(x_train), y_given, record)


def data_record(cfg) -> dict | None:
    """What the config's data source read (path, sizes, hashes of its files and labels), or None for
    the built-in data sets: what config.json keeps as "data"."""
    return prepared(cfg)[7]


def prepared(cfg):
    return _prepared(cfg.dataset, getattr(cfg, "data_root", None), getattr(cfg, "data_file", None),
                     getattr(cfg, "download", False), getattr(cfg, "test_fraction", None), cfg.center_crop,
                     cfg.normalize, cfg.subset, cfg.test_subset,
                     (getattr(cfg, "hf_image_key", None), getattr(cfg, "hf_label_key", None)),
                     (getattr(cfg, "labels_file", None), getattr(cfg, "labels_key", None)))


def memorization_of(path: str) -> np.ndarray:
    """The memorization estimates (mem per training example) of a memorize folder or its npz file."""
    p = Path(path).expanduser()
    p = p / "memorization.npz" if p.is_dir() else p
    if not p.is_file():
        raise ConfigError("--remove", f"no memorization estimates at {path!r}; give a finished memorize folder "
                                      "or its memorization.npz")
    with np.load(p) as z:
        return np.asarray(z["mem"], dtype=np.float64)


def kept_after_removal(train: "Split", spec: str, seed: int) -> torch.Tensor:
    """The training indices trained on once --remove leaves K out: K drawn at random from `seed`, or the
    K of highest mem (NaN last, ties in index order)."""
    from ..spec import parse_remove
    kind, k, path = parse_remove(spec)
    n = len(train)
    if k >= n:
        raise ConfigError("--remove", f"removes {k} of {n} training examples; leave some to train on")
    if kind == "random":
        removed = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    else:
        mem = memorization_of(str(path))
        if len(mem) != n:
            raise ConfigError("--remove", f"{path} has estimates for {len(mem)} examples, the training set {n}; "
                                          "give the memorize folder of this very data")
        removed = torch.from_numpy(np.argsort(-np.nan_to_num(mem, nan=-np.inf), kind="stable")[:k].copy())
    keep = torch.ones(n, dtype=torch.bool)
    keep[removed] = False
    return torch.nonzero(keep).flatten()


def load_data(cfg, val_size: int | float | None = None, val_corrupt: str = "none") -> Data:
    """The data set of a config: normalized, subset, corrupted; deterministic from cfg.data_seed
    (default cfg.seed).

    With val_size (a count, or a fraction below 1), a class-balanced part of the training set drawn
    from the seed is split off as `val`, corrupted by `val_corrupt` with its own random stream. With
    cfg.train_fraction, `train_subset` holds a class-balanced draw (by the labels used) of that
    fraction of the training set, from cfg.seed: what the run trains on (the rest is held out)."""
    x_train, y_train, x_test, y_test, k, stats, y_given, record = prepared(cfg)
    seed = cfg.seed if getattr(cfg, "data_seed", None) is None else cfg.data_seed
    perm = corruption.pixel_permutation(x_train, generator(seed, "pixel-permutation"))

    def split(x, y, spec, stream, given=None):
        if given is not None and getattr(cfg, "labels_file", None):   # a labels file's noise, not ours
            return Split(x, given, y, given != y)
        kind, p = parse_corruption(spec)
        xc, yc, mask = corrupt_split(x, y, k, kind, p, generator(seed, "corrupt", stream),
                                     cfg.label_noise_mode, perm, stats)
        return Split(xc, yc, y, mask)

    val = None
    if val_size is not None:
        if val_size < 1:
            val_size = max(1, int(len(y_train) * val_size))
        val_size = int(val_size)
        if val_size >= len(y_train):
            raise ConfigError("--val-size", f"must be below the training set's {len(y_train)} examples, got {val_size}")
        val_idx = balanced_subset(y_train, val_size, k, seed=derive_seed(seed, "val-split"))
        keep = torch.ones(len(y_train), dtype=torch.bool)
        keep[val_idx] = False
        val = split(x_train[val_idx], y_train[val_idx], val_corrupt, "val", y_given[val_idx])
        x_train, y_train, y_given = x_train[keep], y_train[keep], y_given[keep]
    train = split(x_train, y_train, cfg.corrupt, "train", y_given)
    kind, p = parse_corruption(cfg.corrupt)
    if cfg.corrupt_test:
        test = split(x_test, y_test, cfg.corrupt, "test")
    elif kind == "shuffled-pixels" and p == 1.0:
        # every training image shuffled: the permutation defines the task, and Zhang et al. apply it to
        # the test images too (their test accuracy is that of the permuted task)
        test = split(x_test, y_test, cfg.corrupt, "test")
    else:
        test = Split(x_test, y_test, y_test, torch.zeros(len(y_test), dtype=torch.bool))
    subset = None
    if getattr(cfg, "heldout_fold", None) is not None:
        f, folds = parse_fold(cfg.heldout_fold)
        subset = torch.nonzero(fold_of(train.y, folds, k, derive_seed(seed, "folds")) != f).flatten()
    if getattr(cfg, "remove", None) is not None:
        subset = kept_after_removal(train, cfg.remove, derive_seed(cfg.seed, "remove"))
    if getattr(cfg, "train_fraction", None) is not None:
        n = round(cfg.train_fraction * len(train))
        if n < k or n >= len(train):
            raise ConfigError("--train-fraction", f"{cfg.train_fraction} of {len(train)} training examples is {n}; "
                                                  f"it must leave at least one example out and give each of the {k} "
                                                  "classes one; raise --subset or change the fraction")
        subset = balanced_subset(train.y, n, k, seed=derive_seed(cfg.seed, "train-subset", cfg.train_fraction))
    return Data(cfg.dataset, train, test, k, val, subset, record)


_digests: dict = {}   # (path, size, mtime) -> digest: a sweep asks about the same files many times


def _cached_digest(paths: list[Path], names=None) -> str:
    from .sources import file_digest
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _digests:
        _digests[key] = file_digest(paths, names)
    return _digests[key]


def data_differences(cfg, recorded: dict | None) -> list[str]:
    """Where the files a run read (its config.json "data") no longer hold what they held: the npz file,
    the ImageFolder's files or the labels file hash otherwise now, or are gone. Read without decoding
    (a hash of the bytes), so a sweep can ask of every run."""
    if not recorded:
        return []
    out = []
    try:
        if recorded.get("source") == "npz" and "file_sha256" in recorded:
            now = _cached_digest([Path(cfg.dataset.partition(":")[2]).expanduser()])
            if now != recorded["file_sha256"]:
                out.append(f"data = {cfg.dataset} changed (sha256 {now}, recorded {recorded['file_sha256']})")
        elif recorded.get("source") == "imagefolder" and "file_sha256" in recorded:
            from .sources import _image_files
            root = Path(cfg.dataset.partition(":")[2]).expanduser()
            classes, train_files, _ = _image_files(root / "train", None)   # the files the source read, in its order
            files = train_files + _image_files(root / "test", classes)[1]
            now = _cached_digest(files, [str(f.relative_to(root)) for f in files])
            if now != recorded["file_sha256"]:
                out.append(f"data = {cfg.dataset} changed (its images hash {now}, recorded {recorded['file_sha256']})")
        labels = recorded.get("labels_file")
        if labels and getattr(cfg, "labels_file", None):
            now = _cached_digest([Path(cfg.labels_file).expanduser()])
            if now != labels["file_sha256"]:
                out.append(f"labels_file = {cfg.labels_file} changed (sha256 {now}, recorded {labels['file_sha256']})")
    except OSError as e:
        out.append(f"data = {cfg.dataset} cannot be read now ({e.strerror or e})")
    return out
