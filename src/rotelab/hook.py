"""What the loop hands its hooks. Kept free of torch so that protocol files (which define hooks) can be
imported, and their figures drawn, without it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .engine import Evaluation, Loop


@dataclass
class EpochResult:
    epoch: int
    metrics: dict                          # what goes to metrics.jsonl (hooks may add keys)
    evals: dict[str, Evaluation]           # a clean pass over each named split
    presented: dict[str, torch.Tensor]     # per-example correctness during the training passes, per
                                           # split trained on (empty unless example_record == presentation)
    presented_margins: dict[str, torch.Tensor] = field(default_factory=dict)   # ... and their margins
                                           # (with example_margins too): bits and margins of one pass

    @property
    def train(self) -> Evaluation:
        return self.evals["train"]

    @property
    def test(self) -> Evaluation:
        return self.evals["test"]


# The phases of an epoch's end, in the order the Loop runs hooks (stable within a phase): what adds to
# the epoch's metrics first, then what writes them, then the checkpoint, then status.json (a run killed
# between two of these resumes from the checkpoint and drops what came after it), then progress.
RECORD, MEASURE, PROTOCOL, WRITE, CHECKPOINT, STATUS, REPORT = 10, 20, 30, 60, 80, 90, 100


class Hook:
    """Override what you need. The Loop runs hooks by `phase` (see above), in the order given within
    a phase; each sees what earlier ones added. `on_backward(loop, loss)` (called after each training
    batch's backward pass, with the batch's mean loss as a tensor) is only called on hooks that define it, so the others cost nothing per batch."""

    phase = PROTOCOL

    def on_start(self, loop: "Loop"): ...
    def on_epoch_end(self, loop: "Loop", result: EpochResult): ...
    def on_end(self, loop: "Loop"): ...

    # A hook with state that a resume needs returns it here; the loop saves it in every checkpoint
    # (under the hook's class name) and hands it back, before the model and optimizer are loaded,
    # to load_state_dict, which may reconfigure the loop (a stage change, say).
    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict, loop: "Loop"): ...


