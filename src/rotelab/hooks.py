"""Hooks that record a run into its run directory. Protocols compose them around engine.Loop.

Order matters at the end of an epoch: examples and metrics first, then the checkpoint, then the
status. A run killed between two of these resumes from the checkpoint and drops what came after it.
"""

from __future__ import annotations

import functools
import math
import struct
import time

import numpy as np
import torch

from .engine import EpochResult, Hook, Loop
from .hook import CHECKPOINT, MEASURE, RECORD, REPORT, STATUS, WRITE
from .measures.examples import overlap, pack, unpack
from .store import RunDir, examples_upto, metrics_line


class ExampleRecorder(Hook):
    """Per-example correctness bits of every split per epoch (and margins) into examples.npz; adds the
    intersection/union of consecutive epochs' correct sets to the epoch's metrics.

    With source 'presentation' the bits of the splits being trained on come from the training
    passes; the other splits (test, or a split no longer trained on) always from the clean pass."""
    phase = RECORD

    def __init__(self, run: RunDir, splits: dict, source: str = "evaluation", margins: bool = False):
        self.run, self.source, self.with_margins = run, source, margins
        self.names = list(splits)
        self.static = {"source": np.array(source)}
        self.rows = {"epochs": []}
        for name, s in splits.items():
            self.static.update({f"n_{name}": np.int64(len(s)), f"{name}_labels_used": s.y.cpu().numpy(),
                                f"{name}_labels_true": s.y_true.cpu().numpy(),
                                f"{name}_corrupted": s.corrupted.cpu().numpy()})
            self.rows[f"{name}_correct"] = []
            if margins:
                self.rows[f"{name}_margin"] = []
        self.prev = {}

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
                self.rows[f"{name}_margin"].append(margin.cpu().numpy().astype(np.float16))
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
        self.run, self.file, self.flush_secs, self.last_flush = run, None, flush_secs, 0.0

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


_F32, _F64 = struct.Struct("<f"), struct.Struct("<d")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _f32(v: float) -> bytes:
    try:
        return _F32.pack(v)
    except OverflowError:   # beyond float32, as protobuf stores it
        return _F32.pack(math.copysign(math.inf, v))


@functools.lru_cache(maxsize=4096)
def _scalar_field(key: str) -> bytes:
    """One Summary.value (field 1) holding Value{tag (1): tb_tag(key), simple_value (2): ...}, up to
    the value's 4 bytes."""
    tag = tb_tag(key).encode()
    value = b"\x0a" + _varint(len(tag)) + tag + b"\x15"
    return b"\x0a" + _varint(len(value) + 4) + value


def scalars_event(metrics: dict, wall_time: float) -> bytes:
    """An epoch's finite numbers as one serialized TensorBoard Event {wall_time (1), step (2): the
    epoch, summary (5)}, written straight in protobuf's wire format: a third of the cost of building
    the message objects, which was a quarter of what a small run's hooks did per epoch. Byte for
    byte what protobuf writes (tested)."""
    summary = b"".join([_scalar_field(k) + _f32(v) for k, v in metrics.items()
                        if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)])
    return (b"\x09" + _F64.pack(wall_time) + b"\x10" + _varint(metrics["epoch"])
            + b"\x2a" + _varint(len(summary)) + summary)


def fast_event_checksums():
    """TensorBoard frames every event with a CRC32C computed in pure Python (about 0.3 ms for an
    epoch's scalars: more than everything else a small run logs per epoch); google-crc32c computes
    the same checksum in C. Installed into tensorboard's record writer when available."""
    try:
        import google_crc32c
    except ImportError:
        return
    from tensorboard.summary.writer import record_writer

    def masked_crc32c(data) -> int:
        x = google_crc32c.value(bytes(data))
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c


class TensorBoardWriter(Hook):
    """Scalars for every number in the epoch's metrics; weight histograms at chosen epochs.

    Events are collected here and handed to the SummaryWriter every `handoff_secs` (its own flush
    interval), when the loop persists and at the end: the writer's background thread then wakes
    once per batch instead of once per event, which with many runs in one process (vectorized
    seeds) cost more than everything else an epoch's hooks do. What TensorBoard shows is the same."""
    phase = WRITE

    def __init__(self, run: RunDir, hist_every: int = 10, backfill: bool = False, handoff_secs: float = 10):
        self.run, self.hist_every, self.backfill, self.writer = run, hist_every, backfill, None
        self.handoff_secs, self.pending, self.last_handoff = handoff_secs, [], 0.0
        self.last_hist = None

    def on_start(self, loop: Loop):
        from torch.utils.tensorboard import SummaryWriter
        fast_event_checksums()
        # purge_step drops events a killed run wrote after its last checkpoint (also when it had none)
        resuming = self.run.tb.is_dir() and any(self.run.tb.iterdir())
        self.writer = SummaryWriter(str(self.run.tb), purge_step=loop.epoch + 1 if resuming else None,
                                    flush_secs=self.handoff_secs, max_queue=100_000)
        self.last_handoff = time.perf_counter()
        if self.backfill:  # a run that starts from another run's epochs shows them too
            for record in self.run.read_metrics():
                self.scalars(record)
            self.hand_off()

    def scalars(self, metrics: dict):
        """All of an epoch's scalars as one event (several times cheaper than one per key)."""
        self.pending.append(scalars_event(metrics, time.time()))

    def histograms(self, loop: Loop, epoch: int):
        from torch.utils.tensorboard.summary import histogram
        from tensorboard.compat.proto.event_pb2 import Event
        for name, p in loop.model.named_parameters():
            summary = histogram(f"weights/{name}", p.detach().float().cpu(), self.writer.default_bins)
            self.pending.append(Event(wall_time=time.time(), step=epoch, summary=summary).SerializeToString())
        self.last_hist = epoch

    def hand_off(self, flush: bool = False):
        """Serialized events to the writer's queue (its record writer frames them: length, CRC)."""
        writer = self.writer._get_file_writer()
        queue = getattr(writer.event_writer, "_async_writer", None)
        for event in self.pending:
            if queue is not None:
                queue.write(event)
            else:   # a tensorboard without that queue: through its public, slower door
                from tensorboard.compat.proto.event_pb2 import Event
                writer.event_writer.add_event(Event.FromString(event))
        self.pending.clear()
        if flush:   # on disk up to the checkpoint, which a resume starts from
            writer.flush()
        self.last_handoff = time.perf_counter()

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        self.scalars(result.metrics)
        if self.hist_every and (result.epoch == 1 or result.epoch % self.hist_every == 0):
            self.histograms(loop, result.epoch)
        if loop.persist or time.perf_counter() - self.last_handoff >= self.handoff_secs:
            self.hand_off(flush=loop.persist)

    def on_end(self, loop: Loop):
        if self.hist_every and loop.epoch and self.last_hist != loop.epoch:
            self.histograms(loop, loop.epoch)
        self.hand_off()
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
        final = loop.last_metrics or {}
        self.run.write_status("done", epochs_completed=loop.epoch, fit_epoch=loop.fit_epoch,
                              final={k: v for k, v in final.items() if not k.startswith("seconds")})


class ProgressBar(Hook):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) one line every `line_secs` with the
    epoch, accuracies and the time left, so a long run is never silent."""
    phase = REPORT

    LINE_SECS = 30.0

    def __init__(self, total: int, enabled: bool = True, desc: str = "epochs"):
        self.total, self.enabled, self.desc, self.bar = total, enabled, desc, None
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
                m = result.metrics
                rate = (now - self.started) / max(result.epoch - self.first_epoch, 1)
                print(f"{self.desc}: epoch {result.epoch}/{self.total}, train acc {m['train_acc']:.4f}, test acc "
                      f"{m['test_acc']:.4f}, at most {rate * max(self.total - result.epoch, 0) / 60:.1f} min left",
                      file=sys.stderr, flush=True)
                self.last_line = now
            return
        m = result.metrics
        self.bar.set_postfix(loss=f"{m['train_loss']:.3f}", train=f"{m['train_acc']:.3f}", test=f"{m['test_acc']:.3f}")
        self.bar.update(1)

    def on_end(self, loop: Loop):
        self.bar.close()


class WeightNoiseStats(Hook):
    """The information in noisy weights per epoch: KL under both priors (bits), mean -1/2 ln alpha
    (nats) and mean log10 alpha, in total and per layer (keys `name/layer`)."""
    phase = MEASURE

    def __init__(self, alpha_ref: float = 1.0):
        self.alpha_ref = alpha_ref

    def on_epoch_end(self, loop: Loop, result: EpochResult):
        from .models.noisy import weight_information
        info = weight_information(loop.model, self.alpha_ref)
        m = result.metrics
        for key in ("kl_loguniform_bits", "kl_lognormal_bits", "neg_half_log_alpha"):
            m[key] = info[key]
        for name, layer in info["layers"].items():
            for key in ("kl_loguniform_bits", "kl_lognormal_bits", "mean_log10_alpha"):
                m[f"{key}/{name}"] = layer[key]


class NormStats(Hook):
    """Per epoch: each weight matrix's norm (`weight_norm/NAME`, Linear and Conv weights), their joint
    norm (`weight_norm`), the effective learning rate lr / ||w||^2 (`eff_lr`: the step size of weights
    that batch norm makes scale-invariant, Li & Arora 2020; Lobacheva et al. 2021) and the mean over
    the epoch's batches of the gradient norm of those weights before each step (`grad_norm`)."""
    phase = MEASURE

    def __init__(self):
        self.grad_sq, self.batches = None, 0

    @staticmethod
    def weights(model) -> dict:
        return {n: p for n, p in model.named_parameters() if p.dim() > 1 and not n.endswith("log_alpha")}

    def on_backward(self, loop: Loop):
        import torch
        grads = [p.grad for p in self.weights(loop.model).values() if p.grad is not None]
        if grads:
            sq = torch.stack(torch._foreach_norm(grads)).square().sum().sqrt()
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
        for n, v in norms.items():
            m[f"weight_norm/{n}"] = v
        self.grad_sq, self.batches = None, 0


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
