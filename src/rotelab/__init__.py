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
