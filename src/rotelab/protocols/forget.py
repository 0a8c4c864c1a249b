"""`rotelab forget`: memorize train + val parts, then go on with the train part alone.

Stage 1 trains on the union of the train part and the val part (each with its own corruption) until
both are fit or --epochs1 ends; stage 2 continues from those weights on the train part only for
--epochs2. Every epoch evaluates the train part, the val part and the test set. One Loop runs both
stages: the StageSwitch hook changes what it trains on (and, if asked, the optimizer and schedule)
at the boundary, so epochs count on and the curves join.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import ConfigError, ForgetConfig
from ..data import load_data
from ..engine import EpochResult, Hook, Loop, build_optimizer, build_scheduler, resolve_device
from ..hooks import Checkpointer, ExampleRecorder, MetricsWriter, ProgressBar, StatusWriter, TensorBoardWriter
from ..measures.curves import find_collapses
from ..models import build_model
from ..store import RunDir, environment, examples_upto
from . import train_run
from .fit import information_penalty, measurement_hooks

SPLITS = ("train", "val", "test")


class StageSwitch(Hook):
    """Tags each epoch's metrics with its stage; at the end of stage 1 saves checkpoints/stage1.pt
    and turns the loop to stage 2 (train part only, stage-2 optimizer options)."""

    def __init__(self, run: RunDir, cfg: ForgetConfig):
        self.run, self.cfg = run, cfg
        self.stage, self.stage1_end = 1, None

    def apply(self, loop: Loop, stage1_end: int):
        """Turn `loop` into its stage-2 form after epoch `stage1_end` (also used when resuming)."""
        cfg2 = self.cfg.stage2()
        loop.set_fit(("train",))
        loop.end_epoch = stage1_end + self.cfg.epochs2
        loop.until = None
        if self.cfg.resets_stage2:
            old = loop.opt
            loop.opt = build_optimizer(loop.model, cfg2)
            if type(old) is type(loop.opt):   # keep momentum buffers / moments, restart the lr
                loop.opt.load_state_dict(old.state_dict())
                for group in loop.opt.param_groups:
                    group["lr"] = cfg2.lr
                    group.pop("initial_lr", None)
            loop.sched = build_scheduler(loop.opt, cfg2)
        self.stage, self.stage1_end = 2, stage1_end

    def stage1_over(self, loop: Loop) -> bool:
        return loop.epoch >= self.cfg.epochs or (loop.until is not None and loop.fit_epoch is not None)

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        result.metrics["stage"] = self.stage
        if self.stage == 1 and self.stage1_over(loop):
            self.run.save_checkpoint({**loop.state_dict(), "stage": 1}, "stage1.pt")
            self.apply(loop, loop.epoch)

    def extra_state(self) -> dict:
        return {"stage": self.stage, "stage1_end": self.stage1_end}


class StageCheckpointer(Checkpointer):
    def __init__(self, run, keep_epochs, switch: StageSwitch):
        super().__init__(run, keep_epochs)
        self.switch = switch

    def on_epoch_end(self, loop, result):
        self.extra = self.switch.extra_state()
        super().on_epoch_end(loop, result)


CONFIG = ForgetConfig


def load_parts(cfg: ForgetConfig):
    """The data with its train part, val part (default a sixth of the training set) and test set."""
    return load_data(cfg, cfg.val_size if cfg.val_size is not None else 1 / 6, cfg.val_corrupt)


def build_loop(cfg: ForgetConfig, run: RunDir, state: dict | None = None) -> Loop:
    return build(cfg, run, state)[0]


def build(cfg: ForgetConfig, run: RunDir, state: dict | None = None, backfill_tb: bool = False):
    """Data, model, hooks and the loop (in the stage the state says), before anything is written."""
    device = resolve_device(cfg.device)
    data = load_parts(cfg).to(device)
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    switch = StageSwitch(run, cfg)
    hooks = []
    if cfg.example_record != "none":
        hooks.append(ExampleRecorder(run, data.splits, cfg.example_record, cfg.example_margins))
    hooks += [switch, *measurement_hooks(cfg, data), MetricsWriter(run), TensorBoardWriter(run, cfg.hist_every, backfill=backfill_tb),
              StageCheckpointer(run, cfg.save_epochs, switch), StatusWriter(run),
              ProgressBar(cfg.epochs + cfg.epochs2, cfg.progress)]
    loop = Loop(model, data.splits, cfg, hooks, device, fit_on=("train", "val"),
                penalty=information_penalty(cfg, model, len(data.train) + len(data.val)))
    if state is not None:
        if state.get("stage") == 2:
            switch.apply(loop, state["stage1_end"])
        loop.load_state_dict(state)
    return loop, switch


def summarize(run: RunDir, cfg: ForgetConfig | None = None) -> dict:
    """Stage boundary and collapses per split, from metrics.jsonl (so plots can recompute them)."""
    cfg = cfg or ForgetConfig.from_dict(run.read_config())
    metrics = run.read_metrics()
    stage1 = [m["epoch"] for m in metrics if m.get("stage") == 1]
    out = {"stage1_end": max(stage1) if stage1 else None, "collapses": {}}
    for split in SPLITS:
        pts = [(m["epoch"], m[f"{split}_acc"]) for m in metrics if m.get(f"{split}_acc") is not None]
        if pts:
            e, a = zip(*pts)
            out["collapses"][split] = find_collapses(e, a, cfg.collapse_drop, cfg.collapse_window)
    return out


def forget(cfg: ForgetConfig, out, overwrite: bool = False) -> RunDir:
    cfg.validate()
    run = RunDir.check_new(out, overwrite)
    loop, _ = build(cfg, run)
    run.create(cfg.to_dict(), environment(loop.device), overwrite, protocol="forget")
    return train_run(run, loop, summarize)


def stage2_from(checkpoint, out, overrides: dict, overwrite: bool = False) -> RunDir:
    """A new run whose stage 2 starts from a stage-1 checkpoint of another forget run, with the
    stage-2 options in `overrides`. The source run's stage-1 metrics and examples come along."""
    ckpt = Path(checkpoint)
    source = RunDir(ckpt.parent.parent)
    if not ckpt.is_file() or not source.config_file.is_file():
        raise ConfigError("--stage2-from", f"{ckpt} is not a checkpoint inside a forget run's checkpoints/ "
                                           "folder; give e.g. runs/forget/checkpoints/stage1.pt")
    src_cfg = source.read_config()
    if source.read_protocol() != "forget":
        raise ConfigError("--stage2-from", f"{source.path} is not a forget run")
    bad = sorted(set(overrides) - set(ForgetConfig.STAGE2_FIELDS) - {"progress", "device", "hist_every"})
    if bad:
        raise ConfigError("--" + bad[0].replace("_", "-"), "stage 1 options come from the source run; "
                          f"with --stage2-from only {', '.join('--' + f.replace('_', '-') for f in ForgetConfig.STAGE2_FIELDS)} may be given")
    cfg = dataclasses.replace(ForgetConfig.from_dict(src_cfg), **overrides, stage2_from=str(ckpt)).validate()
    state = source.load_checkpoint(ckpt)
    if state.get("stage") != 1:
        raise ConfigError("--stage2-from", f"{ckpt} is a stage-2 checkpoint; give a stage-1 one such as "
                                           f"{source.checkpoints / 'stage1.pt'} or an epoch_NNNN.pt saved in stage 1")
    run = RunDir.check_new(out, overwrite)
    loop, switch = build(cfg, run, state, backfill_tb=True)
    switch.apply(loop, loop.epoch)   # the same turn an uninterrupted run takes at the boundary
    run.create(cfg.to_dict(), environment(loop.device), overwrite, protocol="forget")
    for record in source.read_metrics():
        if record["epoch"] <= loop.epoch:
            run.append_metrics(record)
    if source.examples_file.is_file() and cfg.example_record != "none":
        run.write_examples(examples_upto(source.read_examples(), loop.epoch))
    return train_run(run, loop, summarize)
