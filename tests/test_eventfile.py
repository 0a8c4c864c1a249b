"""The event files rotelab writes: TFRecord framing with a CRC-32C checked against its standard check
value and against TensorBoard's own implementation, read back by TensorBoard's loader."""

import numpy as np
import torch

import pytest

from rotelab.eventfile import EventFile, histogram_summary, masked_crc32c, record, scalars_event


def test_crc32c_is_the_castagnoli_crc():
    import crc32c
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as tensorboard_crc32c
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked
    assert crc32c.crc32c(b"123456789") == 0xE3069283   # the check value of CRC-32C (RFC 3720, B.4)
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 300, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == tensorboard_masked(data) and crc32c.crc32c(data) == tensorboard_crc32c(data)


def test_records_read_back_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
    w = EventFile(tmp_path, flush_secs=3600)
    for step in range(1, 6):
        w.add_summary(Summary(value=[Summary.Value(tag="acc/train", simple_value=step / 10),
                                     Summary.Value(tag="loss/train", simple_value=1 / step)]), step)
    w.add_summary(histogram_summary("weights/w", torch.arange(100.0).numpy()), 5)
    w.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("acc/train")] == [(s, s / 10) for s in range(1, 6)]
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2, 3, 4, 5]
    hist = acc.Histograms("weights/w")[0].histogram_value
    assert (hist.min, hist.max, hist.num, hist.sum) == (0.0, 99.0, 100, 4950.0)
    # the framing checked record by record by TensorBoard's own reader (it verifies both CRCs)
    reader = PyRecordReader_New(str(w.path))
    count = 0
    while True:
        try:
            reader.GetNext()
        except Exception:
            break
        count += 1
    assert count == 7   # the file-version event, 5 scalar events, 1 histogram event
    assert len(record(b"abc")) == 8 + 4 + 3 + 4


@pytest.mark.parametrize("step,wall", [(0, 0.0), (1, 1.7e9), (300, 1234.5), (2 ** 40, 1e9)])
def test_scalars_event_is_what_protobuf_writes(step, wall):
    # an independent implementation: TensorBoard's own messages, serialized by protobuf
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    pairs = [("acc/train", 0.5), ("loss/test", 2.302585), ("lr", 1e-4), ("zero", 0.0), ("stage", 2),
             ("big", 1e39), ("négatif", -3.25), ("x" * 200, 7.0)]
    reference = Event(wall_time=wall, step=step, summary=Summary(
        value=[Summary.Value(tag=t, simple_value=v) for t, v in pairs])).SerializeToString()
    assert scalars_event(pairs, step, wall) == reference
    assert scalars_event([], step, wall) == Event(wall_time=wall, step=step).SerializeToString()
