"""Hooks that record a run into its run directory. Protocols compose them around engine.Loop.

Order matters at the end of an epoch: examples and metrics first, then the checkpoint, then the
status. A run killed between two of these resumes from the checkpoint and drops what came after it.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import EpochResult, Hook, Loop
from .hook import CHECKPOINT, MEASURE, RECORD, REPORT, STATUS, WRITE
from .measures.examples import overlap, pack, unpack
from .store import RunDir, examples_upto, metrics_line


class ExampleRecorder(Hook):
    """Per-example correctness bits of every split per epoch (and, with margins, the margin and the
    assigned label's probability, float16) into examples.npz; adds the
    intersection/union of consecutive epochs' correct sets to the epoch's metrics.

    With source 'presentation' the bits of the splits being trained on come from the training
    passes; the other splits (test, or a split no longer trained on) always from the clean pass."""
    phase = RECORD

    def __init__(self, run: RunDir, splits: dict, source: str = "evaluation", margins: bool = False,
                 seen=None):
        self.run, self.source, self.with_margins = run, source, margins
        self.names = list(splits)
        self.static: dict[str, Any] = {"source": np.array(source)}
        if seen is not None:   # --train-fraction: which training examples the run trains on
            mask = np.zeros(len(splits["train"]), dtype=bool)
            mask[seen.cpu().numpy()] = True
            self.static["train_seen"] = mask
        self.rows: dict[str, list] = {"epochs": []}
        for name, s in splits.items():
            self.static.update({f"n_{name}": np.int64(len(s)), f"{name}_labels_used": s.y.cpu().numpy(),
                                f"{name}_labels_true": s.y_true.cpu().numpy(),
                                f"{name}_corrupted": s.corrupted.cpu().numpy()})
            self.rows[f"{name}_correct"] = []
            if margins:
                self.rows[f"{name}_margin"] = []
                self.rows[f"{name}_prob"] = []
        self.prev: dict[str, np.ndarray] = {}

    def on_start(self, loop: Loop):
        if loop.epoch == 0 or not self.run.examples_file.is_file():
            return
        saved = examples_upto(self.run.read_examples(), loop.epoch)
        for k in self.rows:
            if k in saved:
                self.rows[k] = list(saved[k])
        for name in self.names:
            if self.rows[f"{name}_correct"]:
                self.prev[name] = unpack(self.rows[f"{name}_correct"][-1], int(self.static[f"n_{name}"]))

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        if not result.evals:   # an epoch without a clean pass (--eval-every): no row
            if loop.persist and self.rows["epochs"]:
                self.run.write_examples({**self.static, **{k: np.stack(v) for k, v in self.rows.items()}})
            return
        for name in self.names:
            # bits and margins from one pass: the training pass where this split was presented, else the clean one
            presented = self.source == "presentation" and name in result.presented
            correct = (result.presented[name] if presented else result.evals[name].correct).cpu().numpy()
            if name in self.prev:
                inter, union = overlap(self.prev[name], correct)
                result.metrics[f"{name}_intersection"] = inter
                result.metrics[f"{name}_union"] = union
            self.prev[name] = correct
            self.rows[f"{name}_correct"].append(pack(correct))
            if self.with_margins:
                margin = result.presented_margins[name] if presented else result.evals[name].margin
                assert margin is not None   # recorded with --example-margins
                self.rows[f"{name}_margin"].append(margin.cpu().numpy().astype(np.float16))
                # the assigned label's probability in the clean pass, exp(-cross-entropy): data maps
                prob = torch.exp(-result.evals[name].loss)
                self.rows[f"{name}_prob"].append(prob.cpu().numpy().astype(np.float16))
        self.rows["epochs"].append(result.epoch)
        if loop.persist:
            self.run.write_examples({**self.static, **{k: np.stack(v) for k, v in self.rows.items()}})


class MetricsWriter(Hook):
    """One JSON line per epoch in metrics.jsonl. The file stays open and is flushed to the OS when
    the loop persists (before the checkpoint, so the lines a resume keeps are always there) and at
    least every `flush_secs`, for whoever follows a run live; a flush every epoch cost as much as
    writing the line (a system call per epoch)."""
    phase = WRITE

    def __init__(self, run: RunDir, flush_secs: float = 1.0):
        self.run, self.flush_secs, self.last_flush = run, flush_secs, 0.0
        self.file: Any = None   # open from on_start to on_end

    def on_start(self, loop: Loop):
        if loop.epoch > 0 or self.run.metrics_file.exists():
            self.run.truncate_metrics(loop.epoch)
        self.file = open(self.run.metrics_file, "a")
        self.last_flush = time.perf_counter()

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        self.file.write(metrics_line(result.metrics))
        now = time.perf_counter()
        if loop.persist or now - self.last_flush >= self.flush_secs:
            self.file.flush()
            self.last_flush = now

    def on_end(self, loop: Loop):
        self.file.close()


@functools.lru_cache(maxsize=4096)
def tb_tag(key: str) -> str:
    """'train_acc_clean' -> 'acc_clean/train', so TensorBoard puts train and test side by side."""
    for split in ("train", "test", "val"):
        if key.startswith(split + "_"):
            return f"{key[len(split) + 1:]}/{split}"
    return key


def scalar_pairs(metrics: dict) -> list[tuple[str, float]]:
    """An epoch's finite numbers as (TensorBoard tag, value) pairs, written as one event per epoch
    (several times cheaper than one per key)."""
    return [(tb_tag(k), v) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def set_aside_events(folder: Path) -> Path | None:
    """Move the event files of `folder` (and any set aside by an earlier, interrupted resume) into
    folder/.resumed, where a new writer cannot reuse their names; None if there are none."""
    aside = folder / ".resumed"
    files = sorted(folder.glob("events.out.tfevents.*"))
    if files:
        aside.mkdir(exist_ok=True)
        n = len(list(aside.iterdir()))
        for i, f in enumerate(files):
            f.rename(aside / f"{n + i:04d}.{f.name}")
    return aside if aside.is_dir() else None


def events_upto(aside: Path, step: int) -> list:
    """The events of the set-aside files up to `step`, in the order they were written (not the files'
    version headers)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    events = (Event.FromString(raw) for f in sorted(aside.iterdir()) for raw in RawEventFileLoader(str(f)).Load())
    return [e for e in events if e.step <= step and not e.HasField("file_version")]


def resumed_writer(folder: Path, upto: int, flush_secs: float):
    """A new event file in `folder` that starts with the events of the folder's earlier files up to
    step `upto` (a resume's checkpoint); the earlier files then go, so no file holds a step past the
    checkpoint or one twice."""
    import shutil
    from .eventfile import EventFile
    aside = set_aside_events(folder) if folder.is_dir() else None
    writer = EventFile(folder, flush_secs)
    if aside is not None:
        for event in events_upto(aside, upto):
            writer.add_event(event, walltime=event.wall_time)
        writer.flush()   # the kept events on disk before the old files go
        shutil.rmtree(aside)
    return writer


class TensorBoardWriter(Hook):
    """TensorBoard files derived from the epoch's metrics (scalars, one event per epoch) and weight
    histograms at chosen epochs (eventfile.EventFile). On resume the events up to the
    checkpoint's epoch move into the new event file and the old files go: no file then holds an epoch
    past what metrics.jsonl keeps, or one twice."""
    phase = WRITE

    def __init__(self, run: RunDir, hist_every: int = 10, backfill: bool = False, flush_secs: float = 10):
        self.run, self.hist_every, self.backfill = run, hist_every, backfill
        self.writer: Any = None   # an EventFile from on_start to on_end
        self.flush_secs = flush_secs
        self.last_hist: int | None = None

    def on_start(self, loop: Loop):
        self.writer = resumed_writer(self.run.tb, loop.epoch, self.flush_secs)
        if self.backfill:  # a run that starts from another run's epochs shows them too
            for record in self.run.read_metrics():
                self.scalars(record)

    def scalars(self, metrics: dict):
        self.writer.add_scalars(scalar_pairs(metrics), metrics["epoch"])

    def histograms(self, loop: Loop, epoch: int):
        from .eventfile import histogram_summary
        for name, p in loop.model.named_parameters():
            self.writer.add_summary(histogram_summary(f"weights/{name}", p.detach().float().cpu().numpy()), epoch)
        self.last_hist = epoch

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        self.scalars(result.metrics)
        if self.hist_every and (result.epoch == 1 or result.epoch % self.hist_every == 0):
            self.histograms(loop, result.epoch)
        if loop.persist:   # on disk up to the checkpoint, which a resume starts from
            self.writer.flush()

    def on_end(self, loop: Loop):
        if self.hist_every and loop.epoch and self.last_hist != loop.epoch:
            self.histograms(loop, loop.epoch)
        self.writer.close()


class Checkpointer(Hook):
    """checkpoints/last.pt when the loop persists (atomically), plus epoch_NNNN.pt for chosen epochs."""
    phase = CHECKPOINT

    def __init__(self, run: RunDir, keep_epochs=(), extra=None):
        self.run, self.keep, self.extra = run, set(keep_epochs), extra or {}

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        if not loop.persist:
            return
        state = {**loop.state_dict(), **self.extra}
        self.run.save_checkpoint(state)
        loop.saved_epoch = result.epoch
        if result.epoch in self.keep:
            self.run.save_checkpoint(state, f"epoch_{result.epoch:04d}.pt")


class StatusWriter(Hook):
    phase = STATUS

    def __init__(self, run: RunDir):
        self.run = run

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        if loop.persist:
            self.run.write_status("running", epochs_completed=loop.epoch, fit_epoch=loop.fit_epoch)

    def on_end(self, loop: Loop):
        final: dict = loop.last_metrics or {}
        self.run.write_status("done", epochs_completed=loop.epoch, fit_epoch=loop.fit_epoch,
                              final={k: v for k, v in final.items() if not k.startswith("seconds")})


class ProgressBar(Hook):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) one line every `line_secs` with the
    epoch, accuracies and the time left, so a long run is never silent."""
    phase = REPORT

    LINE_SECS = 30.0

    def __init__(self, total: int, enabled: bool = True, desc: str = "epochs"):
        self.total, self.enabled, self.desc = total, enabled, desc
        self.bar: Any = None   # a tqdm bar from on_start to on_end
        self.line_secs, self.started, self.last_line, self.first_epoch = self.LINE_SECS, 0.0, 0.0, 0

    def on_start(self, loop: Loop):
        import sys
        from tqdm import tqdm   # text bars everywhere (tqdm.auto wants ipywidgets in a notebook)
        # disable=None: no bar when the output is not a terminal
        self.bar = tqdm(total=self.total, initial=loop.epoch, desc=self.desc, unit="ep", dynamic_ncols=True,
                        disable=None if self.enabled else True)
        self.lines = self.enabled and self.bar.disable and not sys.stderr.isatty()
        self.started = self.last_line = time.perf_counter()
        self.first_epoch = loop.epoch

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        if self.bar.disable:
            now = time.perf_counter()
            if self.lines and now - self.last_line >= self.line_secs:
                import sys
                accs = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in self.accuracies(result.metrics).items())
                rate = (now - self.started) / max(result.epoch - self.first_epoch, 1)
                print(f"{self.desc}: epoch {result.epoch}/{self.total}{accs}, at most "
                      f"{rate * max(self.total - result.epoch, 0) / 60:.1f} min left", file=sys.stderr, flush=True)
                self.last_line = now
            return
        m = result.metrics
        if "train_acc" in m:   # an evaluated epoch (--eval-every)
            self.bar.set_postfix(loss=f"{m['train_loss']:.3f}", train=f"{m['train_acc']:.3f}", test=f"{m['test_acc']:.3f}")
        self.bar.update(1)

    @staticmethod
    def accuracies(m: dict) -> dict:
        """Train and test accuracy of an evaluated epoch, else the training pass's."""
        if "train_acc" in m:
            return {"train_acc": m["train_acc"], "test_acc": m.get("test_acc", float("nan"))}
        return {"train_acc_presented": m["train_acc_presented"]} if "train_acc_presented" in m else {}

    def on_end(self, loop: Loop):
        self.bar.close()


class WeightNoiseStats(Hook):
    """The information in noisy weights per epoch: KL under both priors (bits), mean -1/2 ln alpha
    (nats) and mean log10 alpha, in total and per layer (keys `name/layer`). Given the training
    split, also the KL to the initialization's law (`kl_init_bits`) and, at evaluated epochs, one
    pass with the noise on over the labels trained on: `train_acc_noisy` and `train_loss_noisy` (a
    one-draw estimate of the expected cross-entropy under the noise, the loss Achille & Soatto's
    objective charges; the clean pass's `train_acc` uses the weights' means), with the number of
    examples and of classes."""
    phase = MEASURE

    def __init__(self, alpha_ref: float = 1.0, train=None, num_classes: int | None = None):
        self.alpha_ref, self.train, self.num_classes = alpha_ref, train, num_classes

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        from .engine import evaluate, forward_precision
        from .models.noisy import weight_information
        info = weight_information(loop.model, self.alpha_ref)
        m = result.metrics
        keys = ("kl_loguniform_bits", "kl_lognormal_bits") + (("kl_init_bits",) if self.train is not None else ())
        for key in keys + ("neg_half_log_alpha",):
            m[key] = info[key]
        for name, layer in info["layers"].items():
            for key in keys + ("mean_log10_alpha",):
                m[f"{key}/{name}"] = layer[key]
        if self.train is not None and "train_acc" in m:
            ev = evaluate(loop.model, self.train.x, self.train.y, loop.spec.eval_batch_size,
                          forward=forward_precision(loop.spec, loop.device))
            m["train_acc_noisy"] = float(ev.correct.float().mean())
            m["train_loss_noisy"] = float(ev.loss.mean())
            # what a bound on the information the fit needs reads with them (Fano: N labels of K classes)
            m["train_examples"], m["classes"] = len(self.train), self.num_classes


def joint_norm(tensors: list):
    """The norm of several tensors taken together, as a 0-d tensor (no sync); 0 for none."""
    return torch.stack(torch._foreach_norm(tensors)).square().sum().sqrt() if tensors else torch.zeros(())


class NormStats(Hook):
    """Per epoch: each weight matrix's norm (`weight_norm/NAME`, Linear and Conv weights), their joint
    norm (`weight_norm`), the effective learning rate lr / ||w||^2 (`eff_lr`: the step size of weights
    that batch norm makes scale-invariant, Li & Arora 2020; Lobacheva et al. 2021) and the mean over
    the epoch's batches of the gradient norm of those weights before each step (`grad_norm`). Where
    the model names its scale-invariant weights (batch norm after them; the classifier never), also
    their joint norm (`si_weight_norm`) and the effective lr over them alone (`si_eff_lr`)."""
    phase = MEASURE

    def __init__(self):
        self.grad_sq, self.batches = None, 0

    @staticmethod
    def weights(model) -> dict:
        return {n: p for n, p in model.named_parameters() if p.dim() > 1 and not n.endswith("log_alpha")}

    def on_backward(self, loop: Loop, loss):
        grads = [p.grad for p in self.weights(loop.model).values() if p.grad is not None]
        if grads:
            sq = joint_norm(grads)
            self.grad_sq = sq if self.grad_sq is None else self.grad_sq + sq
            self.batches += 1

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        import torch
        m = result.metrics
        with torch.no_grad():
            norms = {n: float(p.norm()) for n, p in self.weights(loop.model).items()}
        total = math.sqrt(sum(v * v for v in norms.values()))
        m["weight_norm"] = total
        m["eff_lr"] = m["lr"] / total ** 2 if total > 0 else None
        m["grad_norm"] = float(self.grad_sq) / self.batches if self.batches else None
        invariant: list = getattr(loop.model, "scale_invariant", lambda: [])()
        if invariant:
            si = math.sqrt(sum(norms[n] ** 2 for n in invariant))
            m["si_weight_norm"] = si
            m["si_eff_lr"] = m["lr"] / si ** 2 if si > 0 else None
        for n, v in norms.items():
            m[f"weight_norm/{n}"] = v
        self.grad_sq, self.batches = None, 0


class BatchScalars(Hook):
    """TensorBoard scalars per training batch, as the motivating study logged them (--batch-scalars):
    `batch/lr`, `batch/weight_norm` (Linear and Conv weights together, before the step),
    `batch/log10_grad_norm` and `batch/log10_loss`, in their own event files (tb/batch), the step
    being the number of batches trained so far (also each epoch's `batches` metric, from which a
    resume continues). Values stay on the device until the epoch ends: one sync an epoch."""
    phase = MEASURE   # adds `batches` to the epoch's metrics before they are written

    def __init__(self, run: RunDir, flush_secs: float = 10):
        self.run, self.flush_secs, self.batches = run, flush_secs, 0
        self.writer: Any = None
        self.rows: list = []
        self.lrs: list[float] = []

    def on_start(self, loop: Loop):
        if loop.epoch:
            done = [m.get("batches") for m in self.run.read_metrics() if m["epoch"] <= loop.epoch]
            self.batches = int(done[-1] or 0) if done else 0
        self.writer = resumed_writer(self.run.tb / "batch", self.batches, self.flush_secs)

    def on_backward(self, loop: Loop, loss):
        weights = list(NormStats.weights(loop.model).values())
        grads = [p.grad for p in weights if p.grad is not None]
        with torch.no_grad():
            self.rows.append(torch.stack([joint_norm([p.detach() for p in weights]).to(loss.device),
                                          joint_norm(grads).to(loss.device), loss.float()]))
        self.lrs.append(loop.opt.param_groups[0]["lr"])

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        from tensorboard.compat.proto.summary_pb2 import Summary
        rows = torch.stack(self.rows).double().cpu().tolist() if self.rows else []
        for lr, (weight_norm, grad_norm, loss) in zip(self.lrs, rows):
            self.batches += 1
            values = {"batch/lr": lr, "batch/weight_norm": weight_norm,
                      "batch/log10_grad_norm": math.log10(grad_norm) if grad_norm > 0 else None,
                      "batch/log10_loss": math.log10(loss) if loss > 0 else None}
            self.writer.add_summary(Summary(value=[
                Summary.Value(tag=k, simple_value=v) for k, v in values.items()
                if v is not None and math.isfinite(v)]), self.batches)
        self.rows, self.lrs = [], []
        result.metrics["batches"] = self.batches
        if loop.persist:
            self.writer.flush()

    def on_end(self, loop: Loop):
        if self.writer is not None:
            self.writer.close()


class FisherTrace(Hook):
    """Trace of the Fisher information per layer every `every` epochs (and the first), on a fixed
    sample of training examples; keys `fisher_trace` and `fisher_trace/layer`."""
    phase = MEASURE

    def __init__(self, x: torch.Tensor, every: int, seed: int):
        self.x, self.every, self.seed = x, every, seed

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        if result.epoch != 1 and result.epoch % self.every:
            return
        from .measures.fisher import fisher_trace
        from .models.noisy import noise_off
        from .seeding import generator
        with noise_off(loop.model):
            traces = fisher_trace(loop.model, self.x, generator(self.seed, "fisher", result.epoch))
        result.metrics["fisher_trace"] = sum(traces.values())
        for name, v in traces.items():
            result.metrics[f"fisher_trace/{name}"] = v
