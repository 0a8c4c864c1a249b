"""rotelab: experiments on how deep networks memorize.

    import rotelab
    run = rotelab.load("runs/fm-rand")        # a run: config, status, metrics / info tables, examples
    runs = rotelab.load("runs/zhang-fig1")    # a folder: every run below it (a list of runs)
    runs.metrics                              # one long DataFrame: every run's epochs, with each run's
                                              # label_corruption, pixel corruption, seed and sweep axes
    runs.final                                # one row per run: its last epoch, fit_epoch and state
    runs.summary("label_corruption", "test_acc")   # per p: runs, mean, 95% interval (t), n
"""

from .version import __version__  # noqa: F401


def load(path):
    """A run directory as a `rotelab.runs.Run` (config, status, metrics and info as pandas
    DataFrames, per-example arrays), or, for a folder of runs (a sweep, an infoplane group, a noise
    ramp, a study), a `rotelab.runs.Runs`: the list of every run below it, with long tables
    (`.metrics`, `.final`, `.info`) whose rows carry each run's corruption, seed and sweep axes."""
    from .runs import load as _load
    return _load(path)


def run(protocol: str, out, *, overwrite: bool = False, **fields):
    """Run a protocol from Python as `rotelab PROTOCOL --out OUT` would, its flags as keyword
    arguments (`batch_size=128`, `model_args={"widths": [64]}`); returns `load(out)`: a Run, or a
    Runs for a protocol that writes a folder (infoplane seeds, memorize models, noise ramps). A
    non-empty `out` is refused unless `overwrite=True`; bad values raise ConfigError, nothing written.
    `noise` takes the trained runs as `sources=[...]`."""
    from .plan import make
    from .protocol import get_protocol
    proto = get_protocol(protocol)
    inputs = {"sources": [str(s) for s in fields.pop("sources")]} if "sources" in fields else {}
    make(proto.name, proto.config.from_dict(fields), out, overwrite=overwrite, **inputs)
    return load(out)


def fit(*, out, overwrite: bool = False, **fields):
    """`rotelab fit`: rotelab.fit(dataset="npz:data.npz", model="torchvision:resnet18", epochs=10, out="runs/a")."""
    return run("fit", out, overwrite=overwrite, **fields)


def forget(*, out, overwrite: bool = False, **fields):
    """`rotelab forget`: train + val, then train only."""
    return run("forget", out, overwrite=overwrite, **fields)


def infoplane(*, out, overwrite: bool = False, **fields):
    """`rotelab infoplane`: information planes over training (seeds="0-2", layers="layer1,layer2", ...)."""
    return run("infoplane", out, overwrite=overwrite, **fields)


def memorize(*, out, overwrite: bool = False, **fields):
    """`rotelab memorize`: Feldman & Zhang's estimates from many models on random subsets."""
    return run("memorize", out, overwrite=overwrite, **fields)


def noise(sources, *, out, overwrite: bool = False, **fields):
    """`rotelab noise RUN...`: a weight-noise ramp over trained runs."""
    return run("noise", out, overwrite=overwrite, sources=sources, **fields)
