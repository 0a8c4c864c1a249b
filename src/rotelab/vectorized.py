"""Several runs of one small architecture trained as one batched model (`--vectorize-seeds`).

Each run stays an ordinary Loop with its own data (seed, corruption), model, optimizer, hooks and run
directory. What is shared is the arithmetic: the runs' MLPs are held as batched matrices (a leading
run axis on every weight, bias and optimizer moment), each training step is one batched pass over
every run's own batch (its own permutation of its own data), and each epoch's evaluation is one
batched pass over every run's splits, with the metrics of all runs in one sync. Inputs that are the
same for every run (label corruption only) are stored once and the first layer of all runs is one
matrix product over them. Then each Loop closes its epoch with its own hooks as usual. The stacked
update is the same elementwise arithmetic as the separate ones, so the runs equal separate runs up to
float rounding of the batched matrix products.

The stack lives across epochs. Weights are copied back to the runs' models every epoch (hooks may
read them); optimizer state only when a run writes a checkpoint. Runs that stop early
(--until-train-acc) leave the stack, which is rebuilt from the others.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, FitConfig
from .engine import Evaluation, JointEpoch, Loop, build_optimizer, margins, split_metrics_rows

# Fields that may differ between runs trained together: they change the data, not the computation.
PER_RUN_FIELDS = {"seed", "corrupt", "label_noise_mode", "corrupt_test", "progress", "save_epochs", "checkpoint_every"}


def check_vectorizable(cfgs: list[FitConfig]) -> None:
    """Runs can be trained together when they differ only in PER_RUN_FIELDS and use a model and
    training options the stacked pass reproduces exactly."""
    first = cfgs[0].to_dict()
    for c in cfgs[1:]:
        diff = sorted(k for k, v in c.to_dict().items() if v != first[k] and k not in PER_RUN_FIELDS)
        if diff:
            raise ConfigError("--vectorize-seeds", f"runs trained together must share every option but "
                                                   f"{', '.join(sorted(PER_RUN_FIELDS))}; they differ in {diff[0]}")
    c = cfgs[0]
    if c.model not in ("mlp", "tishby"):
        raise ConfigError("--vectorize-seeds", f"works for mlp and tishby models, not {c.model}")
    if c.augment or c.weight_noise != "none" or c.example_record == "presentation":
        raise ConfigError("--vectorize-seeds", "works without --augment, --weight-noise and "
                                               "--example-record presentation")


def _per_run(v) -> bool:
    """Optimizer-state entries with a value per weight (momentum, moments) are stacked per run;
    scalar ones (Adam's step count) are the same for every run and shared."""
    return torch.is_tensor(v) and v.dim() > 0


def _copy(v):
    return v.clone() if torch.is_tensor(v) else v


class Stack:
    """The MLPs, optimizer states and data of `loops`, stacked along a leading run axis."""

    def __init__(self, loops: list[Loop]):
        self.loops, self.k = loops, len(loops)
        base = loops[0].model
        self.activation = base.layers[0][1] if len(base.layers) else None
        # per run, its parameters in the order [w0, b0, w1, b1, ...] (Linear layers in forward order)
        self.run_params = [[p for m in l.model.modules() if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]
                           for l in loops]
        self.params = nn.ParameterList(
            nn.Parameter(torch.stack([ps[j].detach() for ps in self.run_params]).clone())
            for j in range(len(self.run_params[0])))
        self.param_list = list(self.params)
        self.opt = build_optimizer(self.params, loops[0].cfg)
        for j, p in enumerate(self.params):
            states = [l.opt.state.get(ps[j]) for l, ps in zip(loops, self.run_params)]
            if all(states):
                self.opt.state[p] = {key: torch.stack([s[key] for s in states]) if _per_run(states[0][key])
                                     else _copy(states[0][key]) for key in states[0]}
        # data: inputs stored once when every run has the same ones, else stacked; labels stacked
        self.x, self.shared, self.y, self.y_true, self.corrupted = {}, {}, {}, {}, {}
        for name in loops[0].splits:
            splits = [l.splits[name] for l in loops]
            x0 = splits[0].x
            self.shared[name] = all(s.x is x0 or torch.equal(s.x, x0) for s in splits)
            self.x[name] = x0 if self.shared[name] else torch.stack([s.x for s in splits])
            for attr in ("y", "y_true", "corrupted"):
                getattr(self, attr)[name] = torch.stack([getattr(s, attr) for s in splits])
        for l in loops:   # one copy of shared inputs in memory, not one per run
            for name, s in l.splits.items():
                if self.shared[name]:
                    s.x = self.x[name]
            l.set_fit(l.fit_on)

    def forward(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Logits (K, classes, B) of every run for inputs (B, ...) shared by all runs or (K, B, ...).
        Activations are kept unit-major, (K, width, B): reductions over a handful of classes are
        then vectorized over the batch (several times faster on CPU than over a last axis of 2)."""
        n_layers = len(self.param_list) // 2
        h = x.flatten(1) if shared else x.flatten(2)
        for i in range(n_layers):
            w, b = self.param_list[2 * i], self.param_list[2 * i + 1]
            if i == 0 and shared:   # one product for all runs: (K*width, D) x (D, B)
                h = torch.addmm(b.flatten()[:, None], w.flatten(0, 1), h.T).view(*w.shape[:2], -1)
            else:
                h = torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2) if i == 0 else h)
            if i < n_layers - 1:
                h = self.activation(h)
        return h

    def _batch(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """Inputs (K, B, ...) of each run's examples idx[k] of split `name`."""
        x = self.x[name]
        if self.shared[name]:
            return x.index_select(0, idx.flatten()).view(*idx.shape, *x.shape[1:])
        rows = torch.arange(self.k, device=x.device)[:, None] * x.shape[1]
        return x.flatten(0, 1).index_select(0, (rows + idx).flatten()).view(*idx.shape, *x.shape[2:])

    def train_epoch(self) -> tuple[list[float], list[float]]:
        """One epoch of every run on its own permutation of its data; presented loss and accuracy."""
        first = self.loops[0]
        e, bs = first.epoch + 1, first.cfg.batch_size
        for group in self.opt.param_groups:
            group["lr"] = first.opt.param_groups[0]["lr"]
        (name,) = first.fit_on
        y = self.y[name]
        order = torch.stack([l.epoch_order(e) for l in self.loops]).to(y.device)
        k, n = order.shape
        rows = torch.arange(k, device=y.device)[:, None] * n
        y_flat = y.flatten()
        loss_sum = torch.zeros(k, device=y.device)
        hits = torch.zeros(k, device=y.device, dtype=torch.long)
        for i in range(0, n, bs):
            idx = order[:, i:i + bs]
            xb, yb = self._batch(name, idx), y_flat.index_select(0, (rows + idx).flatten()).view(idx.shape)
            logits = self.forward(xb, shared=False)
            ce = F.cross_entropy(logits, yb, reduction="none")
            self.opt.zero_grad(set_to_none=True)
            (ce.sum() / idx.shape[1]).backward()   # the sum over runs of each run's batch mean
            self.opt.step()
            with torch.no_grad():
                loss_sum += ce.detach().sum(1)
                # max(...).indices: argmax's first-maximum rule, much faster than argmax over dim 1
                hits += (logits.max(dim=1).indices == yb).sum(1)
        return (loss_sum / n).tolist(), (hits.double() / n).tolist()

    @torch.no_grad()
    def evaluate(self, name: str, batch_size: int, with_margins: bool) -> Evaluation:
        """A clean pass over split `name` of every run: an Evaluation of (K, N) tensors."""
        x, y = self.x[name], self.y[name]
        losses, preds, margs = [], [], []
        for i in range(0, y.shape[1], batch_size):
            xb = x[i:i + batch_size] if self.shared[name] else x[:, i:i + batch_size]
            yb = y[:, i:i + batch_size]
            logits = self.forward(xb, self.shared[name]).float()
            losses.append(F.cross_entropy(logits, yb, reduction="none"))
            preds.append(logits.max(dim=1).indices)
            if with_margins:
                margs.append(margins(logits, yb))
        pred = torch.cat(preds, 1)
        return Evaluation(torch.cat(losses, 1), pred, pred == y, torch.cat(margs, 1) if with_margins else None)

    def epoch(self) -> list[JointEpoch]:
        """Train and evaluate every run for one epoch; each run's share."""
        t0 = time.perf_counter()
        cfg = self.loops[0].cfg
        loss, acc = self.train_epoch()
        t_train = (time.perf_counter() - t0) / self.k
        evals, metrics = {}, [{} for _ in self.loops]
        for name in self.x:
            ev = self.evaluate(name, cfg.eval_batch_size, cfg.example_margins)
            evals[name] = [Evaluation(ev.loss[j], ev.pred[j], ev.correct[j], None if ev.margin is None else ev.margin[j])
                           for j in range(self.k)]
            for m, row in zip(metrics, split_metrics_rows(name, ev, self.corrupted[name], self.y_true[name])):
                m.update(row)
        seconds = (time.perf_counter() - t0) / self.k
        return [JointEpoch(loss[j], acc[j], t_train, seconds, {n: evals[n][j] for n in evals}, metrics[j])
                for j in range(self.k)]

    @torch.no_grad()
    def write_back_weights(self):
        """Copy every run's weights from the stack into its own model (one batched copy)."""
        slices = [p.unbind(0) for p in self.param_list]
        torch._foreach_copy_([q for ps in self.run_params for q in ps],
                             [slices[i][j] for j in range(self.k) for i in range(len(slices))])

    @torch.no_grad()
    def write_back_state(self, j: int):
        """Copy run j's optimizer state from the stack into its own optimizer."""
        for p, run_p in zip(self.param_list, self.run_params[j]):
            state = self.opt.state.get(p)
            if state:
                self.loops[j].opt.state[run_p] = {key: v[j].clone() if _per_run(v) else _copy(v)
                                                  for key, v in state.items()}


class JointTrainer:
    """Runs several Loops as one stack (see the module docstring)."""

    def __init__(self, loops: list[Loop]):
        self.loops = loops

    def run(self):
        for l in self.loops:
            l.start()
        stack = None
        while True:
            active = [l for l in self.loops if not l.done]
            if not active:
                break
            if stack is None or stack.loops != active:   # first epoch, or runs have left
                if stack is not None:
                    for j in range(stack.k):
                        stack.write_back_state(j)
                stack = Stack(active)
            joint = stack.epoch()
            stack.write_back_weights()   # hooks may read a run's model
            for j, loop in enumerate(active):
                result = loop.run_epoch(joint[j])
                persist = loop.persist_due()
                if persist:   # the checkpoint needs this run's optimizer state
                    stack.write_back_state(j)
                loop.close_epoch(result, persist)
        for l in self.loops:
            l.finish()
        return self.loops


def fit_together(cfgs: list[FitConfig], outs) -> list:
    """`fit` for several configs at once; each gets its own ordinary run directory."""
    from .protocols.fit import build_loop
    from .store import RunDir, environment
    for c in cfgs:
        c.validate()
    check_vectorizable(cfgs)
    runs = [RunDir.check_new(o) for o in outs]
    loops = [build_loop(c, r) for c, r in zip(cfgs, runs)]
    for c, r, l in zip(cfgs, runs, loops):
        r.create(c.to_dict(), environment(l.device))
    try:
        JointTrainer(loops).run()
    except Exception as e:
        for r, l in zip(runs, loops):
            r.write_status("failed", epochs_completed=l.epoch, error=f"{type(e).__name__}: {e}")
        raise
    return runs
