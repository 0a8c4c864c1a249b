"""Several runs of one small architecture trained as one batched model (`--vectorize-seeds`).

Each run stays an ordinary Loop with its own data (seed, corruption), model, optimizer, hooks and run
directory. Only the training pass is shared: every epoch the runs' parameters and optimizer states
are stacked, one pass of vmap(functional_call) over the stack trains all of them on their own
batches (each run's own permutation of its own data), and the results are written back; then each
Loop evaluates, logs and checkpoints its epoch as usual. The stacked update is the same elementwise
arithmetic as the separate ones, so the runs equal separate runs up to float rounding of batched
matrix products. Runs that stop early (--until-train-acc) leave the stack.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .config import ConfigError, FitConfig
from .engine import Loop, build_optimizer

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


def _stack_entry(values: list):
    return torch.stack(values) if _per_run(values[0]) else _copy(values[0])


def _slice_entry(v, k: int):
    return v[k].clone() if _per_run(v) else _copy(v)


def _copy(v):
    return v.clone() if torch.is_tensor(v) else v


class JointTrainer:
    """One training pass for several Loops at once (see the module docstring)."""

    def __init__(self, loops: list[Loop]):
        self.loops = loops

    def _stack(self, active: list[Loop]):
        names = [n for n, _ in active[0].model.named_parameters()]
        params = [dict(l.model.named_parameters()) for l in active]
        holder = nn.Module()
        stacked = {}
        for j, n in enumerate(names):
            p = nn.Parameter(torch.stack([ps[n].detach() for ps in params]).clone())
            holder.register_parameter(f"p{j}", p)
            stacked[n] = p
        opt = build_optimizer(holder, active[0].cfg)
        for group in opt.param_groups:
            group["lr"] = active[0].opt.param_groups[0]["lr"]
        for n in names:
            states = [l.opt.state.get(ps[n]) for l, ps in zip(active, params)]
            if all(states):
                opt.state[stacked[n]] = {k: _stack_entry([s[k] for s in states]) for k in states[0]}
        return names, params, stacked, opt

    def _write_back(self, active, names, params, stacked, opt):
        with torch.no_grad():
            for k, (l, ps) in enumerate(zip(active, params)):
                for n in names:
                    ps[n].copy_(stacked[n][k])
                    state = opt.state.get(stacked[n])
                    if state:
                        l.opt.state[ps[n]] = {key: _slice_entry(v, k) for key, v in state.items()}

    def train_epoch(self, active: list[Loop]) -> list[tuple[float, float, float]]:
        """One epoch for every active loop; returns each one's (loss, accuracy, seconds)."""
        t0 = time.perf_counter()
        e = active[0].epoch + 1
        names, params, stacked, opt = self._stack(active)
        base = active[0].model
        x = torch.stack([l.fit_x for l in active])
        y = torch.stack([l.fit_y for l in active])
        order = torch.stack([l.epoch_order(e) for l in active]).to(x.device)
        k, n = y.shape
        rows = torch.arange(k, device=x.device)[:, None]
        forward = vmap(lambda p, xb: functional_call(base, p, (xb,)))
        loss_sum = torch.zeros(k, device=x.device)
        hits = torch.zeros(k, device=x.device, dtype=torch.long)
        base.train()
        bs = active[0].cfg.batch_size
        for i in range(0, n, bs):
            idx = order[:, i:i + bs]
            xb, yb = x[rows, idx], y.gather(1, idx)
            logits = forward(stacked, xb)
            ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(k, -1).mean(dim=1)
            opt.zero_grad(set_to_none=True)
            ce.sum().backward()
            opt.step()
            with torch.no_grad():
                loss_sum += ce.detach() * idx.shape[1]
                hits += (logits.argmax(dim=-1) == yb).sum(dim=1)
        self._write_back(active, names, params, stacked, opt)
        seconds = (time.perf_counter() - t0) / k
        return [(float(loss_sum[j]) / n, float(hits[j]) / n, seconds) for j in range(k)]

    def run(self):
        for l in self.loops:
            l.start()
        while True:
            active = [l for l in self.loops if not l.done]
            if not active:
                break
            for l, trained in zip(active, self.train_epoch(active)):
                l.close_epoch(l.run_epoch(trained=trained))
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
