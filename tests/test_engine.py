import math

import pytest
import torch
import torch.nn.functional as F

from rotelab.config import FitConfig
from rotelab.engine import build_optimizer, build_scheduler, crop_flip, evaluate, margins


def test_crop_flip_equals_a_per_image_loop():
    x = torch.randn(16, 3, 6, 7)
    out = crop_flip(x, torch.Generator().manual_seed(3), pad=2)
    g = torch.Generator().manual_seed(3)   # replay the same draws
    dy = torch.randint(0, 5, (16, 1), generator=g)
    dx = torch.randint(0, 5, (16, 1), generator=g)
    flip = torch.rand(16, 1, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, dy[i, 0]:dy[i, 0] + 6, dx[i, 0]:dx[i, 0] + 7]
        if flip[i, 0]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert flip.any() and (~flip).any()


def test_margins_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    assert margins(logits, y).tolist() == [1.0, -2.0]


def test_evaluate_matches_a_direct_computation():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    x, y = torch.randn(37, 5), torch.randint(3, (37,))
    ev = evaluate(net, x, y, batch_size=8, with_margins=True)
    logits = net(x)
    assert torch.allclose(ev.loss, F.cross_entropy(logits, y, reduction="none"), atol=1e-6)
    assert torch.equal(ev.correct, logits.argmax(1) == y)
    assert torch.equal(ev.margin > 0, ev.correct)


@pytest.mark.parametrize("schedule,expected", [
    ("constant", lambda e: 0.1),
    ("exp", lambda e: 0.1 * 0.95 ** e),
    ("step", lambda e: 0.1 * 0.5 ** (e // 3)),
    ("cosine", lambda e: 0.05 * (1 + math.cos(math.pi * e / 10))),
])
def test_lr_schedules(schedule, expected):
    cfg = FitConfig(lr=0.1, schedule=schedule, lr_gamma=0.95 if schedule == "exp" else 0.5, lr_step=3, epochs=10)
    net = torch.nn.Linear(2, 2)
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, cfg)
    for e in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(expected(e), rel=1e-6)
        opt.step()
        sched.step()


def test_hooks_own_their_checkpoint_state(tmp_path, small_cfg):
    """A hook's state_dict goes into every checkpoint and comes back, before the model and optimizer
    are loaded, on resume."""
    from rotelab.engine import Hook
    from rotelab.protocols.fit import build_loop
    from rotelab.store import RunDir

    class Counter(Hook):
        seen = []

        def __init__(self):
            self.n = 0

        def on_epoch_end(self, loop, result):
            self.n += result.epoch

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state, loop):
            Counter.seen.append((state["n"], loop.epoch))
            self.n = state["n"]

    run = RunDir(tmp_path / "r")
    loop = build_loop(small_cfg(epochs=3), run)
    loop.hooks.insert(0, Counter())
    run.create(small_cfg(epochs=3).to_dict(), {})
    loop.run()
    state = run.load_checkpoint()
    assert state["hooks"]["Counter"] == {"n": 6}
    fresh = build_loop(small_cfg(epochs=3), run)
    fresh.hooks.insert(0, Counter())
    fresh.load_state_dict(state)
    assert Counter.seen == [(6, 0)] and fresh.hooks[0].n == 6 and fresh.epoch == 3
    run.unlock()


def test_the_loop_runs_hooks_by_phase_whatever_order_they_are_given(tmp_path, small_cfg):
    from rotelab.hook import Hook
    from rotelab.hooks import Checkpointer, MetricsWriter, StatusWriter
    from rotelab.protocols.fit import build_loop
    from rotelab.store import RunDir
    run = RunDir(tmp_path / "r")
    loop = build_loop(small_cfg(epochs=1), run)
    hooks = list(reversed(loop.hooks)) + [Hook()]
    from rotelab.engine import Loop
    again = Loop(loop.model, loop.splits, loop.spec, hooks)
    names = [type(h).__name__ for h in again.hooks]
    assert names.index("Hook") < names.index("MetricsWriter") < names.index("Checkpointer") < names.index("StatusWriter")
    assert names[0] == "ExampleRecorder" and names[-1] == "ProgressBar"
    assert [h.phase for h in again.hooks] == sorted(h.phase for h in again.hooks)
    assert {MetricsWriter.phase, Checkpointer.phase, StatusWriter.phase} <= {h.phase for h in again.hooks}


@pytest.mark.parametrize("n, batch", [(10, 4), (12, 4), (7, 7)])
def test_an_epochs_crops_drawn_once_equal_the_batch_by_batch_draws(n, batch):
    """--augment moves its draws to the device once an epoch; the numbers are those the batches drew."""
    from rotelab.engine import crop_flip_draws
    x = torch.randn(n, 3, 6, 6)
    per_batch = torch.cat([crop_flip(x[i:i + batch], g) for g in [torch.Generator().manual_seed(5)]
                           for i in range(0, n, batch)])
    draws = crop_flip_draws(n, batch, torch.Generator().manual_seed(5))
    once = torch.cat([crop_flip(x[i:i + batch], tuple(t[i:i + batch] for t in draws)) for i in range(0, n, batch)])
    assert torch.equal(per_batch, once)
