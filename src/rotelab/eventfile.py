"""TensorBoard event files written in the calling thread, with a C CRC-32C where one is installed.

torch's SummaryWriter hands every event to a thread of its own and frames it with TensorBoard's
pure-Python CRC-32C (about 40 us an event); a stack of 16 small runs spent a quarter of its epoch
there and waiting on those threads. An event file is TFRecord framing around serialized `Event`
protos (the format TensorBoard reads and the tensorboard package's own loader checks); this writes
that framing with the `crc32c` package (the one tensorboardX uses) when it is installed, else with
TensorBoard's own function. A flush hands the bytes to the OS, without fsync: metrics.jsonl is the
run's record, and a resume rebuilds the event file up to its checkpoint from the files on disk.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import struct
import time
from pathlib import Path

try:   # the C implementation (SSE4.2 where the CPU has it)
    from crc32c import crc32c as _crc32c
except ImportError:   # pragma: no cover - the dependency is declared; this keeps a bare install working
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as _crc32c  # type: ignore[no-redef]

_FILES = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of `data`."""
    x = _crc32c(data) & 0xFFFFFFFF
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@functools.lru_cache(maxsize=4096)
def _value_head(tag: str) -> bytes:
    """The bytes of Summary.value {tag: TAG, simple_value: ...} up to the float itself."""
    t = tag.encode()
    value_len = 1 + len(_varint(len(t))) + len(t) + 5
    return b"\x0a" + _varint(value_len) + b"\x0a" + _varint(len(t)) + t + b"\x15"


def _float32(v: float) -> bytes:
    try:
        return struct.pack("<f", v)
    except OverflowError:   # beyond float32: protobuf stores an infinity
        return struct.pack("<f", math.copysign(math.inf, v))


def scalars_event(pairs, step: int, wall_time: float) -> bytes:
    """A serialized Event {wall_time, step, summary {value {tag, simple_value}...}} for (tag, value)
    pairs, byte for byte what protobuf writes (a test compares them), at a fraction of building the
    messages: a stack of small runs writes one such event per run per epoch."""
    summary = b"".join(_value_head(tag) + _float32(v) for tag, v in pairs)
    head = b"\x09" + struct.pack("<d", wall_time) if wall_time else b""   # proto3 leaves zeros out
    if step:
        head += b"\x10" + _varint(step & 0xFFFFFFFFFFFFFFFF)
    return head + (b"\x2a" + _varint(len(summary)) + summary if summary else b"")


def _tensorflow_bins() -> list[float]:
    """The bucket edges of TensorFlow's histograms (what SummaryWriter.add_histogram's default, "tensorflow", uses)."""
    v, pos = 1e-12, []
    while v < 1e20:
        pos.append(v)
        v *= 1.1
    return [-b for b in reversed(pos)] + [0.0] + pos


TENSORFLOW_BINS = _tensorflow_bins()


def histogram_summary(tag: str, values):
    """A histogram Summary of `values` (a numpy array) on TensorFlow's bucket edges."""
    from torch.utils.tensorboard.summary import histogram
    return histogram(tag, values, TENSORFLOW_BINS)


class EventFile:
    """A new events.out.tfevents.* file in `folder`: add_summary / add_event append, flush hands the
    bytes to the OS (at least every `flush_secs` when events come), close flushes."""

    def __init__(self, folder, flush_secs: float = 10.0):
        from tensorboard.compat.proto.event_pb2 import Event
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}"
        self.path = folder / name
        self.file = open(self.path, "wb")
        self.flush_secs, self.last_flush = flush_secs, time.monotonic()
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event, walltime: float | None = None):
        if walltime is not None:
            event.wall_time = walltime
        elif not event.wall_time:
            event.wall_time = time.time()
        self.file.write(record(event.SerializeToString()))
        if time.monotonic() - self.last_flush >= self.flush_secs:
            self.flush()

    def add_scalars(self, pairs, step: int, walltime: float | None = None):
        """One event of scalar (tag, value) pairs at `step`."""
        self.file.write(record(scalars_event(pairs, int(step), time.time() if walltime is None else walltime)))
        if time.monotonic() - self.last_flush >= self.flush_secs:
            self.flush()

    def add_summary(self, summary, step: int, walltime: float | None = None):
        from tensorboard.compat.proto.event_pb2 import Event
        self.add_event(Event(step=int(step), summary=summary), walltime)

    def flush(self):
        self.file.flush()
        self.last_flush = time.monotonic()

    def close(self):
        if not self.file.closed:
            self.file.close()
