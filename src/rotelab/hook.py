"""What the loop hands its hooks. Kept free of torch so that protocol files (which define hooks) can be
imported, and their figures drawn, without it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Loop = Any   # engine.Loop, named in annotations only: engine imports this module, not the other way


@dataclass
class Evaluation:
    """A clean pass over a split, per example (or (K, N) for a stack of K runs)."""
    loss: torch.Tensor      # per-example cross-entropy
    pred: torch.Tensor      # predicted class
    correct: torch.Tensor   # bool, pred == label used
    margin: torch.Tensor | None = None

    def __getitem__(self, index) -> "Evaluation":
        """Every tensor indexed alike: one run of a stack's (K, N) Evaluation, or a part of the examples."""
        fields = (self.loss, self.pred, self.correct, self.margin)
        loss, pred, correct, margin = (None if t is None else t[index] for t in fields)
        return Evaluation(loss, pred, correct, margin)  # type: ignore[arg-type]  # only margin may be None


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

    @property
    def state_key(self) -> str:
        """The name its state has in a checkpoint (Lightning's state_key): the class name by default;
        a hook that can appear twice in one loop with different state overrides it."""
        return type(self).__name__

    def on_start(self, loop: "Loop"): ...
    def on_epoch_end(self, loop: "Loop", result: EpochResult): ...
    def on_end(self, loop: "Loop"): ...

    # A hook with state that a resume needs returns it here; the loop saves it in every checkpoint
    # (under the hook's class name) and hands it back, before the model and optimizer are loaded,
    # to load_state_dict, which may reconfigure the loop (a stage change, say).
    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict, loop: "Loop"): ...


