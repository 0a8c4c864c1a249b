"""The analysis API, what `rotelab.load` gives: a Run (one run directory read as pandas tables) and
Runs (every run below a folder, with long tables over them). The run directory itself, its files, lock
and discovery, is store.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import parse_corruption
from .store import RunDir, StoreError, find_runs, is_run, sweep_axes


def numeric_frame(records: list[dict]):
    """A DataFrame of records whose columns of numbers and Nones are float, with NaN for None (a
    column that is all None, such as train_acc_corrupted at p = 0, would otherwise be of object
    dtype, which groupby means drop without a word)."""
    import pandas as pd
    return float_columns(pd.DataFrame(records))


def float_columns(df):
    """df with its object columns that hold only numbers and Nones made float (NaN for None)."""
    for col in df.columns[df.dtypes == object]:
        values = df[col].dropna()
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in values):
            df[col] = df[col].astype(float)
    return df


class Run:
    """A finished (or running) run, read for analysis: what `rotelab.load` gives.

    run.config, run.status   dicts (the config fields; state, fit_epoch, final, summary)
    run.label_corruption     float: p of --corrupt labels=p (0.0 for true labels and pixel corruptions)
    run.pixel_corruption     str: the input corruption (shuffled-pixels, random-pixels, gaussian), or "none"
    run.pixel_fraction       float: the fraction of inputs it corrupts (0.0 without one)
    run.seed                 int
    run.parameters           int: the model's parameter count (None for runs from before it was recorded)
    run.axes                 dict: the run's sweep-axis values (a variant axis by its name); {} outside a sweep
    run.metrics              DataFrame, one row per epoch (and noise step); numeric columns are float
    run.info                 DataFrame of information-plane records (epoch, layer, estimator, ixt, ity)
    run.examples             dict of examples.npz's arrays
    run.correct(split)       bool array (epochs x examples): which examples were right at each epoch
    run.per_example(split)   DataFrame, one row per example: labels, corruption and every per-example signal
    run.table(name)          a table the run's protocol provides: a noise ramp's "noise_fate" (each
                             example's breaking alpha, joined to its training run's forgetting events)
    """

    def __init__(self, path, root=None):
        self.dir = RunDir(path)
        self.path = self.dir.path
        # its name in tables: the path below the folder it was loaded from, else its folder name
        self.name = str(self.path.relative_to(root)) if root is not None and self.path != Path(root) else self.path.name
        self.protocol = self.dir.read_protocol()
        self.config = self.dir.read_config()
        kind, p = parse_corruption(self.config.get("corrupt", "none"))
        self.label_corruption = float(p) if kind == "labels" else 0.0
        self.pixel_corruption = kind if kind not in ("labels", "none") else "none"
        self.pixel_fraction = float(p) if self.pixel_corruption != "none" else 0.0
        self.seed = int(self.config.get("seed", 0))
        self.parameters = self.dir.read_environment().get("parameters")
        self.axes = sweep_axes(self.path)

    @property
    def fields(self) -> dict:
        """The columns that describe this run in a table of many runs."""
        return {"run": self.name, "protocol": self.protocol, "label_corruption": self.label_corruption,
                "pixel_corruption": self.pixel_corruption, "pixel_fraction": self.pixel_fraction,
                "seed": self.seed, "parameters": self.parameters, **self.axes}

    @property
    def status(self) -> dict:
        return self.dir.read_status()

    @property
    def metrics(self):
        return numeric_frame(self.dir.read_metrics())

    @property
    def info(self):
        return numeric_frame(self.dir.read_info())

    @property
    def examples(self) -> dict:
        return self.dir.read_examples()

    def correct(self, split: str = "train", ex: dict | None = None) -> np.ndarray:
        """`ex`: examples.npz's arrays when the caller has read them already."""
        from .measures.examples import correctness
        ex = self.examples if ex is None else ex
        if f"{split}_correct" not in ex:
            raise StoreError(self.dir.examples_file, f"{self.dir.examples_file} has no split {split!r}")
        return correctness(ex, split)

    def per_example(self, split: str = "train", until: int | None = None):
        """One row per example of `split`: its labels, whether it was corrupted (and, with
        --train-fraction, trained on), the final correctness, Toneva et al.'s forgetting events and
        first-learned presentation, learned_at (presentations to learn; the number of epochs if it ends
        wrong), and with --example-margins Pleiss et al.'s AUM (mean margin) and Swayamdipta et al.'s
        data map (confidence, variability, correctness) with the final margin and probability.
        `until`: as if the run had stopped after that epoch (its evaluated epochs up to it; "final"
        is then that epoch's)."""
        import pandas as pd
        from .measures.examples import first_correct, forgetting_events, presentations_to_learn
        from .measures.memorization import aum, data_map
        ex = self.examples
        correct = self.correct(split, ex)
        if until is not None:
            rows = np.asarray(ex["epochs"]) <= until
            if not rows.any():
                raise StoreError(self.dir.examples_file, f"{self.path} has no evaluated epoch at or before {until}")
            ex = {k: (v[rows] if k.startswith(f"{split}_") and np.ndim(v) == 2 and len(v) == len(rows) else v)
                  for k, v in ex.items()}
            correct = correct[rows]
        table = {"example": np.arange(correct.shape[1]), "label_used": ex[f"{split}_labels_used"],
                 "label_true": ex[f"{split}_labels_true"], "corrupted": ex[f"{split}_corrupted"].astype(bool)}
        if f"{split}_seen" in ex:
            table["seen"] = ex[f"{split}_seen"].astype(bool)
        table.update(correct_final=correct[-1], forgetting_events=forgetting_events(correct),
                     first_learned=first_correct(correct), learned_at=presentations_to_learn(correct))
        if f"{split}_margin" in ex:
            table.update(aum=aum(ex[f"{split}_margin"]), margin_final=ex[f"{split}_margin"][-1].astype(float))
        if f"{split}_prob" in ex:
            dm = data_map(ex[f"{split}_prob"], correct)
            table.update(confidence=dm["confidence"], variability=dm["variability"], correctness=dm["correctness"],
                         prob_final=ex[f"{split}_prob"][-1].astype(float))
        return pd.DataFrame(table)

    def table(self, name: str, **kwargs):
        """A per-run table that the run's protocol provides (Protocol.tables), such as a noise ramp's
        "noise_fate"; one clear error naming the tables there are when it has no such table."""
        from .protocol import protocol_of
        tables = protocol_of(self.dir).tables
        if name not in tables:
            have = ", ".join(sorted(tables)) or "none"
            raise StoreError(self.path, f"{self.path} is a {self.protocol} run, which has no table {name!r} "
                                        f"(its protocol's tables: {have})")
        return tables[name](self, **kwargs)

    def __repr__(self):
        return f"Run({str(self.path)!r}, protocol={self.protocol!r}, state={self.status.get('state')!r})"


class Runs(list):
    """The runs of a folder (a sweep, a study, an infoplane group), as `rotelab.load(folder)` gives them:
    a list of Run, and long tables of all of them. Every row carries the run's fields (run, protocol,
    label_corruption, pixel_corruption, pixel_fraction, seed and each sweep axis).

    runs.metrics   DataFrame: every run's metrics, one row per run and epoch
    runs.final     DataFrame: one row per run, its last epoch's metrics, with fit_epoch and state
    runs.info      DataFrame: every run's information-plane records
    runs.summary("label_corruption", "test_acc")   per group: runs, the mean over them and the
                   95% interval of that mean (columns test_acc, test_acc_lo, test_acc_hi, test_acc_n, test_acc_interval)
    """

    def _long(self, frames):
        import pandas as pd
        parts = [frame.assign(**run.fields) for run, frame in frames if len(frame)]
        if not parts:
            return pd.DataFrame()
        return float_columns(pd.concat(parts, ignore_index=True))

    @property
    def metrics(self):
        return self._long((r, r.metrics) for r in self)

    @property
    def info(self):
        return self._long((r, r.info) for r in self)

    def summary(self, by, *columns, table: str = "final"):
        """One row per value of `by` (a column name or a list of them) of `table` (final, metrics or
        info): the number of rows (runs, for `final`) and, per column, their mean, the 95% interval of
        that mean (`COLUMN_lo`, `COLUMN_hi`: Student's t from 3 values, the range of 2), the values it
        rests on (`COLUMN_n`) and the interval's kind (`COLUMN_interval`)."""
        import pandas as pd
        from .measures.stats import mean_interval
        frame = getattr(self, table)
        out = []
        for key, group in frame.groupby(by, dropna=False):
            row = dict(zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,)))
            row["runs"] = len(group)
            for c in columns:
                values = group[c].dropna().to_numpy(dtype=float)
                ci = mean_interval(values)
                row.update({c: ci.mean, f"{c}_lo": ci.lo, f"{c}_hi": ci.hi, f"{c}_n": ci.n, f"{c}_interval": ci.kind})
            out.append(row)
        return pd.DataFrame(out).set_index(by)

    @property
    def final(self):
        rows = []
        for r in self:
            m, status = r.dir.read_metrics(), r.status
            rows.append({**r.fields, **(m[-1] if m else {}), "fit_epoch": status.get("fit_epoch"),
                         "state": status.get("state")})
        return numeric_frame(rows)


def load(path):
    """A Run for a run directory; a Runs (a list of Run with long tables) for a folder that holds runs
    (searched recursively)."""
    path = Path(path)
    if is_run(path):
        return Run(path)
    return Runs(Run(r.path, root=path) for r in find_runs([path]))


