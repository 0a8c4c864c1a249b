"""`rotelab forget`: memorize train + val parts, then go on with the train part alone.

Stage 1 trains on the union of the train part and the val part (each with its own corruption) until
both are fit or --epochs1 ends; stage 2 continues from those weights on the train part only for
--epochs2. Every epoch evaluates the train part, the val part and the test set. One Loop runs both
stages: the StageSwitch hook changes what it trains on (and, if asked, the optimizer and schedule)
at the boundary, so epochs count on and the curves join.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import SCHEDULES, ConfigError, FitConfig, opt, parse_corruption
from ..hook import EpochResult, Hook
from ..plan import make, one_run
from ..protocol import Protocol, StudyParts, register
from ..store import RunDir, StoreError, examples_upto
from ..training import assemble, device_data_model, information_penalty, standard_hooks

SPLITS = ("train", "val", "test")


@dataclass
class ForgetConfig(FitConfig):
    """Stage 1 trains on train part + val part until both are fit (or --epochs1), stage 2 on the train
    part alone for --epochs2. Stage-1 training options are FitConfig's; stage-2 ones default to them."""

    corrupt: str = opt("none", "corruption of the train part, KIND=P as for fit", aliases=["--train-corrupt"])
    epochs: int = opt(100, "maximum epochs of stage 1 (train + val parts)", aliases=["--epochs1"])
    until_train_acc: float | None = opt(1.0, "end stage 1 once train and val parts both reach this accuracy", aliases=["--until-fit"])
    val_size: int | None = opt(None, "examples split off the training set as the val part (default: a sixth of it)", ge=1)
    val_corrupt: str = opt("none", "corruption of the val part, KIND=P")
    epochs2: int = opt(100, "epochs of stage 2 (train part only)", ge=0)
    stage2_on: str = opt("train", "what stage 2 trains on: the train part alone (the protocol), or train + val (a control: nothing is left out, so forgetting cannot be the cause of a drop)", ("train", "train+val"))
    optimizer2: str | None = opt(None, "stage-2 optimizer (default: stage 1's)", ("sgd", "adam"))
    lr2: float | None = opt(None, "stage-2 learning rate (default: stage 1's last, with its schedule going on)", gt=0)
    schedule2: str | None = opt(None, "stage-2 lr schedule (default: stage 1's)", SCHEDULES)
    reset_lr: bool = opt(False, "restart the lr schedule at stage 2 (momentum buffers are kept when the optimizer is the same)")
    collapse_drop: float = opt(0.2, "a collapse: accuracy falls by more than this below its best of the previous --collapse-window epochs", gt=0, lt=1)
    collapse_window: int = opt(5, "epochs looked back by the collapse detector", ge=1)
    stage2_from: str | None = opt(None, "(set by --stage2-from) the stage-1 checkpoint stage 2 started from")

    STAGE2_FIELDS = ("epochs2", "stage2_on", "optimizer2", "lr2", "schedule2", "reset_lr", "collapse_drop", "collapse_window")

    @property
    def resets_stage2(self) -> bool:
        """Stage 2 gets a fresh schedule (and lr) rather than going on with stage 1's."""
        return self.reset_lr or any(v is not None for v in (self.optimizer2, self.lr2, self.schedule2))

    def stage2(self) -> "ForgetConfig":
        """The training options of stage 2 as a config the engine reads."""
        return dataclasses.replace(self, optimizer=self.optimizer2 or self.optimizer, lr=self.lr2 or self.lr,
                                   schedule=self.schedule2 or self.schedule, epochs=self.epochs2)

    def validate(self) -> "ForgetConfig":
        super().validate()
        if parse_corruption(self.val_corrupt, "--val-corrupt")[0] != "none" and self.labels_file is not None:
            raise ConfigError("--val-corrupt", "a --labels-file labels the val part too; drop --val-corrupt")
        for name in ("train_fraction", "heldout_fold"):
            if getattr(self, name) is not None:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(flag, f"forget trains on its train and val parts whole; drop {flag}")
        return self


def change_stage(loop, fit_on, end_epoch: int, until: float | None, cfg=None):
    """Train `loop` on other splits from the next epoch on, up to `end_epoch`, stopping at `until`;
    with `cfg`, a fresh optimizer and schedule of cfg's (momentum buffers or moments are kept where
    the optimizer class stays the same; the lr restarts at cfg.lr)."""
    from ..engine import build_optimizer, build_scheduler
    loop.set_fit(fit_on)
    loop.end_epoch, loop.until = end_epoch, until
    if cfg is not None:
        old = loop.opt
        loop.opt = build_optimizer(loop.model, cfg)
        if type(old) is type(loop.opt):
            loop.opt.load_state_dict(old.state_dict())
            for group in loop.opt.param_groups:
                group["lr"] = cfg.lr
                group.pop("initial_lr", None)
        loop.sched = build_scheduler(loop.opt, cfg)


class StageSwitch(Hook):
    """Tags each epoch's metrics with its stage; at the end of stage 1 saves checkpoints/stage1.pt
    and turns the loop to stage 2 (train part only, stage-2 optimizer options)."""

    def __init__(self, run: RunDir, cfg: ForgetConfig):
        self.run, self.cfg = run, cfg
        self.stage = 1
        self.stage1_end: int | None = None

    def apply(self, loop, stage1_end: int):
        """Turn `loop` into its stage-2 form after epoch `stage1_end` (also when resuming)."""
        change_stage(loop, tuple(self.cfg.stage2_on.split("+")), stage1_end + self.cfg.epochs2, None,
                     self.cfg.stage2() if self.cfg.resets_stage2 else None)
        self.stage, self.stage1_end = 2, stage1_end

    def stage1_over(self, loop) -> bool:
        return loop.epoch >= self.cfg.epochs or (loop.until is not None and loop.fit_epoch is not None)

    def on_epoch_end(self, loop, result: EpochResult):
        result.metrics["stage"] = self.stage
        if self.stage == 1 and self.stage1_over(loop):
            self.run.save_checkpoint(loop.state_dict(), "stage1.pt")
            self.apply(loop, loop.epoch)

    def state_dict(self) -> dict:
        return {"stage": self.stage, "stage1_end": self.stage1_end}

    def load_state_dict(self, state: dict, loop):
        if state.get("stage") == 2:
            self.apply(loop, state["stage1_end"])


def checkpoint_stage(state: dict) -> int:
    """The stage a checkpoint was saved in (checkpoints of earlier versions kept it at the top level)."""
    return state.get("hooks", {}).get("StageSwitch", state).get("stage", 1)


def load_parts(cfg: ForgetConfig):
    """The data with its train part, val part (default a sixth of the training set) and test set."""
    from ..data import load_data
    return load_data(cfg, cfg.val_size if cfg.val_size is not None else 1 / 6, cfg.val_corrupt)


def ramp_data(cfg: ForgetConfig):
    """The data a noise ramp evaluates a forget run on: the train part (stage 2's) and the test set."""
    data = load_parts(cfg)
    data.val = None
    return data


def build_loop(cfg: ForgetConfig, run: RunDir, state: dict | None = None):
    return build(cfg, run, state)[0]


def build(cfg: ForgetConfig, run: RunDir, state: dict | None = None):
    """Data, model, hooks and the loop (in the stage the state says), before anything is written. A
    run with --stage2-from and no state of its own starts from the source's stage-1 checkpoint."""
    inherit = None
    if state is None and cfg.stage2_from:
        state, source = stage1_state(cfg.stage2_from)
        inherit = Inherit(run, source, state["epoch"], cfg.example_record != "none")
    device, data, model = device_data_model(cfg, load_parts(cfg))
    switch = StageSwitch(run, cfg)
    hooks = standard_hooks(cfg, run, data, [switch], total_epochs=cfg.epochs + cfg.epochs2,
                           backfill_tb=inherit is not None)
    loop = assemble(cfg, model, data, hooks + ([inherit] if inherit else []), device, fit_on=("train", "val"),
                    penalty=information_penalty(cfg, model, len(data.train) + len(data.val)))
    if state is not None:
        if "hooks" not in state and state.get("stage") == 2:   # a checkpoint of an earlier version
            switch.apply(loop, state["stage1_end"])
        loop.load_state_dict(state)
    if inherit is not None:
        switch.apply(loop, loop.epoch)   # the same turn an uninterrupted run takes at the boundary
    return loop, switch


class Inherit(Hook):
    """A run whose stage 2 starts from another run's stage-1 checkpoint begins with that run's
    metrics and per-example records up to the checkpoint's epoch (before the writers start)."""
    phase = 0

    def __init__(self, run: RunDir, source: RunDir, epoch: int, examples: bool):
        self.run, self.source, self.epoch, self.examples = run, source, epoch, examples

    def on_start(self, loop):
        if not self.run.metrics_file.is_file() or not self.run.read_metrics():
            for record in self.source.read_metrics():
                if record["epoch"] <= self.epoch:
                    self.run.append_metrics(record)
        if self.examples and self.source.examples_file.is_file() and not self.run.examples_file.is_file():
            self.run.write_examples(examples_upto(self.source.read_examples(), self.epoch))


def stage1_state(checkpoint) -> tuple[dict, RunDir]:
    """The state of a forget run's stage-1 checkpoint, and that run; ConfigError for anything else."""
    ckpt = Path(checkpoint)
    source = RunDir(ckpt.parent.parent)
    if not ckpt.is_file() or not source.config_file.is_file():
        raise ConfigError("--stage2-from", f"{ckpt} is not a checkpoint inside a forget run's checkpoints/ "
                                           "folder; give e.g. runs/forget/checkpoints/stage1.pt")
    try:
        protocol = source.read_protocol()
    except StoreError:
        protocol = None
    if protocol != "forget":
        raise ConfigError("--stage2-from", f"{source.path} is not a forget run")
    state = source.load_checkpoint(ckpt)
    if checkpoint_stage(state) != 1:
        raise ConfigError("--stage2-from", f"{ckpt} is a stage-2 checkpoint; give a stage-1 one such as "
                                           f"{source.checkpoints / 'stage1.pt'} or an epoch_NNNN.pt saved in stage 1")
    return state, source


def summarize(run: RunDir, cfg: ForgetConfig | None = None) -> dict:
    """Stage boundary and collapses per split, from metrics.jsonl (so plots can recompute them)."""
    from ..measures.curves import find_collapses
    cfg = cfg or ForgetConfig.from_dict(run.read_config())
    metrics = run.read_metrics()
    stage1 = [m["epoch"] for m in metrics if m.get("stage") == 1]
    out: dict = {"stage1_end": max(stage1) if stage1 else None, "collapses": {}}
    for split in SPLITS:
        pts = [(m["epoch"], m[f"{split}_acc"]) for m in metrics if m.get(f"{split}_acc") is not None]
        if pts:
            e, a = zip(*pts)
            out["collapses"][split] = find_collapses(e, a, cfg.collapse_drop, cfg.collapse_window)
    return out


def plan(cfg: ForgetConfig, out: Path):
    return one_run("forget", cfg, out)


def forget(cfg: ForgetConfig, out, overwrite: bool = False) -> RunDir:
    return make("forget", cfg, out, overwrite)[0]


def stage2_config(checkpoint, overrides: dict) -> ForgetConfig:
    """The config of a new run whose stage 2 starts from a stage-1 checkpoint of another forget run:
    the source's, with the stage-2 options in `overrides`."""
    bad = sorted(set(overrides) - set(ForgetConfig.STAGE2_FIELDS) - {"progress", "device", "hist_every"})
    if bad:
        raise ConfigError("--" + bad[0].replace("_", "-"), "stage 1 options come from the source run; "
                          f"with --stage2-from only {', '.join('--' + f.replace('_', '-') for f in ForgetConfig.STAGE2_FIELDS)} may be given")
    _, source = stage1_state(checkpoint)
    return dataclasses.replace(ForgetConfig.from_dict(source.read_config()), **overrides,
                               stage2_from=str(Path(checkpoint).resolve())).validate()


def stage2_from(checkpoint, out, overrides: dict, overwrite: bool = False) -> RunDir:
    """A new run whose stage 2 starts from a stage-1 checkpoint of another forget run, with the
    stage-2 options in `overrides`. The source run's stage-1 metrics and examples come along."""
    return make("forget", stage2_config(checkpoint, overrides), out, overwrite)[0]


def config_from_args(args):
    """--stage2-from CHECKPOINT: the source run's config with the stage-2 flags given; else None."""
    if not getattr(args, "stage2_from", None):
        return None
    names = {f.name for f in dataclasses.fields(ForgetConfig)}
    return stage2_config(args.stage2_from, {k: v for k, v in vars(args).items() if k in names and k != "stage2_from"})


def report_lines(run: RunDir) -> list[str]:
    """The collapses the run's summary lists, one line each."""
    collapses = run.read_status().get("summary", {}).get("collapses", {})
    return [f"collapse of {split} at epoch {e['epoch']}: {e['before']:.3f} -> {e['lowest']:.3f}"
            for split, events in collapses.items() for e in events]


def figures(run: RunDir):
    from ..plots import plot_forget
    return [plot_forget(run, summarize(run))]


# -- what studies of forget runs draw and check ---------------------------------------------------




def stage2_collapses(run: RunDir, recover: float = 0.9, val_gap: float = 0.2) -> dict:
    """What stage 2 of a forget run did: whether the learning rate stayed as it was at the boundary
    (a collapse is spontaneous only then), each collapse of the train or val part in stage 2 with the
    train part's best accuracy after it and the val part's accuracy before it and at the end, and
    whether it is the motivating study's kind (train recovers to `recover`, val stays `val_gap` below)."""
    s = summarize(run)
    m = {r["epoch"]: r for r in run.read_metrics()}
    end = s["stage1_end"]
    last = max(m)
    # the same lr on both sides of the boundary (0.1 x 0.1 from a step schedule is 0.010000000000000002)
    kept = end is not None and end + 1 in m and math.isclose(m[end]["lr"], m[end + 1]["lr"], rel_tol=1e-9)
    out = {"stage1_end": end, "lr_kept": kept,
           "val_start": m[end]["val_acc"] if end in m else None, "val_end": m[last]["val_acc"],
           "train_end": m[last]["train_acc"], "collapses": []}
    for split in ("train", "val"):
        for c in s["collapses"].get(split, []):
            if end is None or c["epoch"] <= end:
                continue
            val_before = max(m[e]["val_acc"] for e in range(max(end + 1, c["epoch"] - 5), c["epoch"]) if e in m) \
                if c["epoch"] - 1 > end else m[end]["val_acc"]
            train_after = max(m[e]["train_acc"] for e in m if e > c["lowest_epoch"]) if last > c["lowest_epoch"] else None
            kind = train_after is not None and train_after >= recover and m[last]["val_acc"] <= val_before - val_gap
            out["collapses"].append({"split": split, **c, "val_before": val_before, "train_after": train_after,
                                     "val_end": m[last]["val_acc"], "motivating_kind": bool(kind)})
    return out


def first_stage2_collapse(run: RunDir, recover: float = 0.9, val_gap: float = 0.2) -> dict:
    """The first collapse of stage 2 (train or val part) measured where it happens: the val part's
    best accuracy in the 5 epochs before it, the first epoch after its lowest point at which the train
    part is back to `recover`, and the val part's accuracy then. The motivating study's kind: the lr
    unchanged at the boundary, train back, val then `val_gap` or more below where it was."""
    r = stage2_collapses(run, recover, val_gap)
    m = {x["epoch"]: x for x in run.read_metrics()}
    out = {"lr_kept": r["lr_kept"], "stage1_end": r["stage1_end"], "val_start": r["val_start"],
           "val_end": r["val_end"], "collapse": None, "motivating_kind": False}
    if not r["collapses"]:
        return out
    c = min(r["collapses"], key=lambda c: c["epoch"])
    back = next((e for e in sorted(m) if e > c["lowest_epoch"] and m[e]["train_acc"] >= recover), None)
    val_then = m[back]["val_acc"] if back is not None else None
    out["collapse"] = {"split": c["split"], "epoch": c["epoch"], "before": c["before"], "lowest": c["lowest"],
                       "val_before": c["val_before"], "train_back_epoch": back, "val_then": val_then}
    out["motivating_kind"] = bool(r["lr_kept"] and back is not None and val_then <= c["val_before"] - val_gap)
    return out


def example(tmp) -> tuple[dict, list]:
    return dict(dataset="digits", widths=[64], epochs=15, until_train_acc=None, epochs2=15, val_size=200,
                corrupt="labels=1.0", lr=0.05, hist_every=0, checkpoint_every=0, progress=False), []


PROTOCOL = register(Protocol(
    name="forget", config=ForgetConfig, plan=plan, build_loop=build_loop, example=example, summarize=summarize,
    help="memorize train + val parts, then train on the train part alone",
    description="Stage 1 trains on a train part and a val part, each with its own corruption; stage 2 continues "
                "on the train part alone. --stage2-from CHECKPOINT starts stage 2 of a new run from a stage-1 "
                "checkpoint of another (only stage-2 options may be given then).",
    config_from_args=config_from_args, figures=figures, ramp_data=ramp_data, report_lines=report_lines,
    study=StudyParts(module="rotelab.protocols.forget_study")))
