"""One training/evaluation loop, composed with hooks.

Data live on the device as tensors; a batch is an index slice of a per-epoch permutation. Every
random draw of epoch e comes from streams named by (seed, e), so a run resumed from the checkpoint
of epoch e-1 repeats exactly what an uninterrupted run would do.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .config import ConfigError
from .hook import EpochResult, Evaluation, Hook  # noqa: F401  (re-exported: hooks subclass engine.Hook)
from .seeding import derive_seed, generator, seed_global_streams
from .store import writes_together


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("--device", f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "CUDA is not available on this machine; use --device cpu or auto")
    return device


@dataclass(frozen=True)
class TrainSpec:
    """What the training loop reads of a run's config, and nothing else: the optimizer and its
    schedule, the epochs and when to stop, batches, what an epoch records, and when state is saved.
    `TrainSpec.of(cfg, **changes)` takes these fields from any config that has them (FitConfig and
    every protocol's config built on it); a protocol whose loop differs from its config (a noise
    ramp over a trained run) names what differs."""
    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    alpha_lr: float | None             # the learned log alphas' own lr (weight noise), None: lr
    schedule: str
    lr_gamma: float
    lr_step: int
    loss_reduction: str
    batch_size: int
    eval_batch_size: int
    eval_every: int
    until_train_acc: float | None
    augment: bool
    example_record: str
    example_margins: bool
    seed: int
    save_epochs: tuple[int, ...]
    checkpoint_every: float
    # how the arithmetic runs (a GPU user's options; configs without them run fp32, eager, as torch picks)
    precision: str = "fp32"
    compile: bool = False
    deterministic: bool = False

    @classmethod
    def of(cls, cfg, **changes) -> "TrainSpec":
        """Every field from `cfg` (no defaults here but how the arithmetic runs: they are the config's),
        `changes` over them."""
        if isinstance(cfg, TrainSpec):
            return replace(cfg, **changes)
        optional = {"precision", "compile", "deterministic"}
        picked = {**{f.name: getattr(cfg, f.name) for f in fields(cls)
                     if f.name not in changes and (f.name not in optional or hasattr(cfg, f.name))}, **changes}
        return cls(**{**picked, "save_epochs": tuple(picked["save_epochs"])})


def apply_arithmetic(spec: TrainSpec) -> None:
    """Process-wide flags of how a run's arithmetic goes, set when its loop is made (each run sets
    them all, so a worker's next run does not inherit them): TF32 matmuls and convolutions only with
    --precision tf32 (torch would let cuDNN use TF32 by default), and with --deterministic torch's
    deterministic algorithms (warning where one has none), cuBLAS's fixed workspace and no cuDNN
    autotuning."""
    import os
    tf32 = spec.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if spec.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(spec.deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = spec.deterministic
    torch.backends.cudnn.benchmark = False


def forward_precision(spec: TrainSpec, device) -> Callable[[], Any]:
    """The context of a forward pass: bf16 autocast with --precision bf16 (losses, per-example records
    and every measurement read float32 logits and activations), else nothing."""
    if spec.precision == "bf16":
        kind = torch.device(device).type
        return lambda: torch.autocast(device_type=kind, dtype=torch.bfloat16)
    return contextlib.nullcontext


# -- pure pieces ------------------------------------------------------------------------------

def param_groups(params, cfg) -> list[dict]:
    """A module's parameters (or a dict name -> parameter) as optimizer groups: every parameter at
    --lr, the learned log alphas of weight noise at --alpha-lr where it is set (their own group, last)."""
    named = list(params.named_parameters() if isinstance(params, torch.nn.Module) else params.items())
    own = getattr(cfg, "alpha_lr", None)
    alpha = [p for n, p in named if own and n.endswith("log_alpha")]
    groups = [{"params": [p for n, p in named if not (own and n.endswith("log_alpha"))]}]
    return groups + ([{"params": alpha, "lr": own}] if alpha else [])


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam over param_groups(model); the fused kernels where this
    torch has them (one pass over the parameters per step instead of several: a measurable share of a
    small MLP's step)."""
    cls: type[torch.optim.Optimizer]
    if cfg.optimizer == "sgd":
        cls, kw = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        cls, kw = torch.optim.Adam, dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ConfigError("--optimizer", f"unknown optimizer {cfg.optimizer!r}; use sgd or adam")
    try:
        return cls(param_groups(model, cfg), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(param_groups(model, cfg), **kw)


def build_scheduler(opt: torch.optim.Optimizer, cfg):
    """Per-epoch lr schedules. exp multiplies by lr_gamma each epoch (Zhang et al.'s decay)."""
    s = torch.optim.lr_scheduler
    if cfg.schedule == "constant":
        return s.LambdaLR(opt, lambda epoch: 1.0)
    if cfg.schedule == "step":
        return s.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    if cfg.schedule == "exp":
        return s.ExponentialLR(opt, gamma=cfg.lr_gamma)
    if cfg.schedule == "cosine":
        return s.CosineAnnealingLR(opt, T_max=cfg.epochs)
    raise ConfigError("--schedule", f"unknown schedule {cfg.schedule!r}; use constant, step, exp or cosine")


def crop_flip_draws(n: int, batch_size: int, gen: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, ...]:
    """An epoch's crop offsets and flips for n examples in batches of batch_size, drawn on the host
    from `gen` batch by batch (the numbers crop_flip drew batch by batch before), so that they move to
    the device once an epoch instead of three times a batch."""
    dys, dxs, flips = [], [], []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        dys.append(torch.randint(0, 2 * pad + 1, (b, 1), generator=gen))
        dxs.append(torch.randint(0, 2 * pad + 1, (b, 1), generator=gen))
        flips.append(torch.rand(b, 1, generator=gen) < 0.5)
    return torch.cat(dys), torch.cat(dxs), torch.cat(flips)


def crop_flip(x: torch.Tensor, gen: torch.Generator | tuple, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `pad`, and random horizontal flip, for a batch (N, C, H, W)
    in one gather: the flip is folded into the column indices. `gen` is a generator, or the batch's
    (dy, dx, flip) from crop_flip_draws, already on the device."""
    n, c, h, w = x.shape
    dev = x.device
    dy, dx, flip = gen if isinstance(gen, tuple) else (t.to(dev) for t in crop_flip_draws(n, n, gen, pad))
    rows = dy + torch.arange(h, device=dev)
    cols = dx + torch.arange(w, device=dev)
    cols = torch.where(flip, cols.flip(1), cols)
    xp = F.pad(x, (pad, pad, pad, pad))
    return xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other logit (positive iff correct, ties aside); logits
    (N, classes) with labels (N,), or (K, classes, N) with labels (K, N)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


@torch.no_grad()
def evaluate(model, x, y, batch_size: int, with_margins: bool = False, forward=contextlib.nullcontext) -> Evaluation:
    """A clean pass (eval mode) over (x, y), per example; `forward`: the context of each forward pass."""
    model.eval()
    losses, preds, margs = [], [], []
    for i in range(0, len(x), batch_size):
        with forward():
            logits = model(x[i:i + batch_size])
        logits = logits.float()
        yb = y[i:i + batch_size]
        losses.append(F.cross_entropy(logits, yb, reduction="none"))
        preds.append(logits.argmax(dim=1))
        if with_margins:
            margs.append(margins(logits, yb))
    pred = torch.cat(preds)
    return Evaluation(torch.cat(losses), pred, pred == y, torch.cat(margs) if with_margins else None)


def train_epoch(model, opt, x, y, batch_size: int, order: torch.Tensor,
                augment_gen: torch.Generator | None = None, record: bool = False, penalty=None,
                frozen_bn: bool = False, after_backward=None, reduction: str = "mean", record_margins: bool = False,
                forward=contextlib.nullcontext):
    """One pass of SGD over x in the given order, minimizing cross-entropy + penalty() if given.
    Returns (presented cross-entropy, presented accuracy, per-example correctness at presentation
    or None, per-example margins at presentation or None: recorded with `record`, margins with
    `record_margins` too, so that both come from the same forward pass). Sums stay on the device: one sync per epoch. frozen_bn keeps batch norm on its
    running statistics (and leaves them unchanged). after_backward(loss), if given, runs after each
    batch's backward pass, before the step (where per-batch gradients can be read), with the batch's
    mean cross-entropy as a tensor (no sync). reduction "sum"
    minimizes the batch's summed cross-entropy (the returned loss is still the mean per example)."""
    model.train()
    if frozen_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    n = len(order)
    loss_sum = torch.zeros((), device=x.device)
    hits = torch.zeros((), device=x.device, dtype=torch.long)
    presented = torch.zeros(len(y), dtype=torch.bool, device=x.device) if record else None
    presented_margin = torch.zeros(len(y), device=x.device) if record and record_margins else None
    draws = None if augment_gen is None else [t.to(x.device) for t in crop_flip_draws(n, batch_size, augment_gen)]
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx], y[idx]
        if draws is not None:
            xb = crop_flip(xb, tuple(t[i:i + batch_size] for t in draws))
        with forward():   # bf16 autocast, where asked: the loss and what is recorded read float32 logits
            logits = model(xb)
        logits = logits.float()
        ce = F.cross_entropy(logits, yb, reduction=reduction)
        loss = ce if penalty is None else ce + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward(ce.detach() / len(idx) if reduction == "sum" else ce.detach())
        opt.step()
        with torch.no_grad():
            hit = logits.argmax(dim=1) == yb
            loss_sum += ce.detach() * (len(idx) if reduction == "mean" else 1)
            hits += hit.sum()
            if presented is not None:
                presented[idx] = hit
            if presented_margin is not None:
                presented_margin[idx] = margins(logits.float(), yb)
    return loss_sum.item() / n, hits.item() / n, presented, presented_margin


def split_metrics_rows(prefix: str, ev: Evaluation, corrupted: torch.Tensor, y_true: torch.Tensor) -> list[dict]:
    """split_metrics for K runs at once: every tensor is (K, N), one row per run; one list of K
    dicts (counts in float64, so accuracies are exact fractions; one sync for all of them)."""
    correct, corrupted = ev.correct.double(), corrupted.double()
    clean = 1 - corrupted
    n_corrupted, n_clean = corrupted.sum(1), clean.sum(1)
    table = torch.stack([ev.loss.double().mean(1), correct.mean(1),
                         (correct * clean).sum(1) / n_clean, (correct * corrupted).sum(1) / n_corrupted,
                         (ev.pred == y_true).double().mean(1), n_clean, n_corrupted], 1).tolist()
    rows = []
    for loss, acc, acc_clean, acc_corrupted, acc_true, has_clean, has_corrupted in table:
        rows.append({f"{prefix}_loss": loss, f"{prefix}_acc": acc,
                     f"{prefix}_acc_clean": acc_clean if has_clean else None,
                     f"{prefix}_acc_corrupted": acc_corrupted if has_corrupted else None,
                     f"{prefix}_acc_true": acc_true})
    return rows


def split_metrics(prefix: str, ev: Evaluation, split) -> dict:
    """Loss and accuracy of a split, and accuracy on its corrupted and clean examples
    (None where a part is empty). `_acc_true` scores predictions against the original labels."""
    one = ev[None]
    return split_metrics_rows(prefix, one, split.corrupted[None], split.y_true[None])[0]


@contextlib.contextmanager
def frozen_heap():
    """Objects alive when training starts (data, models, modules, hooks) live as long as the run;
    frozen, they are left out of the garbage collector's full passes, which otherwise scan them
    again and again (measured: a few ms per epoch when many runs share a process)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# -- the loop ---------------------------------------------------------------------------------

@dataclass
class EpochShare:
    """What a training strategy gives a loop for one epoch."""
    loss: float | None                     # presented cross-entropy (None when nothing was trained)
    acc: float | None                      # presented accuracy
    presented: torch.Tensor | None         # per-example correctness at presentation, or None
    evals: dict[str, Evaluation]           # a clean pass over each split
    metrics: dict                          # split metrics, as evaluate_splits gives them
    seconds_train: float                   # this run's training time (its share, when shared)
    seconds: float                         # ... and of the training and evaluation together
    presented_margin: torch.Tensor | None = None   # per-example margins at presentation, or None


class Eager:
    """The default strategy: one run, eager PyTorch, batches as index slices of in-memory tensors.

    A strategy decides how an epoch is trained and evaluated (`epoch`), steps the schedule
    (`step_schedule`), and may hold a run's weights or optimizer state elsewhere (a stack of runs):
    `before_read` brings the loop's model up to date before anything reads it, `before_persist` its
    optimizer state before a checkpoint. Subclasses override `trains`, `evaluate` and `frozen_bn`
    (a frozen network under weight noise: protocols/noise.py)."""

    frozen_bn = False   # train with batch norm on its fixed running statistics

    def trains(self, loop: "Loop") -> bool:
        return True

    def evaluate(self, loop: "Loop") -> tuple[dict[str, Evaluation], dict]:
        return loop.evaluate_splits()

    def epoch(self, loop: "Loop") -> EpochShare:
        spec, e = loop.spec, loop.epoch + 1
        t0 = time.perf_counter()
        seed_global_streams(derive_seed(spec.seed, "torch", e))  # dropout, weight noise, any global draws
        loss = acc = presented = presented_margin = None
        if self.trains(loop):
            aug = generator(spec.seed, "augment", e) if spec.augment else None
            order = loop.epoch_order(e).to(loop.device)
            per_batch = [h for h in loop.hooks if hasattr(h, "on_backward")]
            after_backward = (lambda loss: [h.on_backward(loop, loss) for h in per_batch]) if per_batch else None
            loss, acc, presented, presented_margin = train_epoch(
                loop.model, loop.opt, loop.fit_x, loop.fit_y, spec.batch_size, order, aug,
                record=spec.example_record == "presentation", penalty=loop.penalty,
                frozen_bn=self.frozen_bn, after_backward=after_backward, reduction=spec.loss_reduction,
                record_margins=spec.example_margins, forward=forward_precision(spec, loop.device))
        t_train = time.perf_counter() - t0
        evals, metrics = self.evaluate(loop) if loop.evaluates(e) else ({}, {})
        return EpochShare(loss, acc, presented, evals, metrics, t_train, time.perf_counter() - t0,
                          presented_margin=presented_margin)

    def persist_due(self, loop: "Loop") -> bool:
        return loop.persist_due()

    def step_schedule(self, loop: "Loop", share: EpochShare):
        if share.loss is not None:   # nothing trained, nothing to schedule
            loop.sched.step()

    def before_read(self, loop: "Loop"):
        pass

    def before_persist(self, loop: "Loop"):
        pass


class Loop:
    """Train `model` on the union of the splits named in `fit_on`, evaluate every split each epoch,
    call hooks. Splits are already on `device`. Runs until epoch `end_epoch` (default spec.epochs)
    or until every trained-on split reaches accuracy `until` (default spec.until_train_acc). `spec`:
    a TrainSpec, or a config it is taken from. `clean_pass(model)`: the context of a clean
    evaluation (weight noise off), where the model needs one."""

    def __init__(self, model, splits: dict, spec, hooks=(), device="cpu", fit_on=("train",),
                 end_epoch: int | None = None, until: float | None = None, penalty=None, strategy=None,
                 fit_subset: torch.Tensor | None = None,
                 clean_pass: Callable[[torch.nn.Module], Any] | None = None):
        spec = TrainSpec.of(spec)
        apply_arithmetic(spec)
        x = splits[fit_on[0]].x
        if spec.augment and x.dim() != 4:
            raise ConfigError("--augment", f"crop and flip need images (N, C, H, W); these data have inputs "
                                           f"of shape {tuple(x.shape[1:])}; drop --augment")
        self.model, self.splits, self.spec = model, splits, spec   # (model: a property, see there)
        self.clean_pass = clean_pass or (lambda model: contextlib.nullcontext())
        self.hooks = sorted(hooks, key=lambda h: h.phase)   # the order the run directory relies on
        self.penalty = penalty      # a callable added to each batch's loss
        # how an epoch is trained and evaluated: Eager, or vectorized.Stacked (several runs as one),
        # or noise.NoisyEvaluation (a frozen network evaluated under weight noise)
        self.strategy = strategy or Eager()
        self.fit_subset = fit_subset   # indices of the examples trained on (the rest held out), or None
        self.set_fit(fit_on)
        self.end_epoch = spec.epochs if end_epoch is None else end_epoch
        self.until = spec.until_train_acc if until is None else until
        self.device = torch.device(device)
        self.opt = build_optimizer(model, spec)
        self.sched = build_scheduler(self.opt, spec)
        self.epoch = 0              # epochs completed
        self.saved_epoch = 0        # the epoch of the checkpoint on disk: where a resume starts
        self.fit_epoch: int | None = None       # first epoch at which every trained-on split reached `until`
        self.last_metrics: dict | None = None
        # Hooks that write state (checkpoint, examples.npz, status) do so only when `persist` is
        # set: every spec.checkpoint_every seconds, at chosen epochs and at the end, so that short
        # epochs are not dominated by writing files. metrics.jsonl is appended every epoch and cut
        # back to the checkpoint on resume.
        self.persist = False
        self.data_record: dict | None = None   # what a file source read (config.json's "data"), set by its assembly
        self._last_persist = time.perf_counter()

    @property
    def model(self) -> torch.nn.Module:
        """The run's model, brought up to date by the strategy first (a stack of runs holds the
        weights elsewhere and copies them back only when something reads them)."""
        self.strategy.before_read(self)
        return self._model

    @model.setter
    def model(self, model: torch.nn.Module):
        self._model = model

    def set_fit(self, fit_on):
        """Train on the union of these splits from the next epoch on."""
        self.fit_on = tuple(fit_on)
        parts = [self.splits[n] for n in self.fit_on]
        self.fit_x = torch.cat([p.x for p in parts]) if len(parts) > 1 else parts[0].x
        self.fit_y = torch.cat([p.y for p in parts]) if len(parts) > 1 else parts[0].y

    @property
    def done(self) -> bool:
        return self.epoch >= self.end_epoch or (self.until is not None and self.fit_epoch is not None)

    def keyed_hooks(self):
        """(key, hook) for every hook: its state_key, numbered from the second with the same key on
        (the key its state has in a checkpoint)."""
        seen: dict[str, int] = {}
        for h in self.hooks:
            name = h.state_key
            seen[name] = seen.get(name, 0) + 1
            yield (name if seen[name] == 1 else f"{name}#{seen[name]}"), h

    def hook_states(self) -> dict:
        """Each stateful hook's state, under its key."""
        return {key: state for key, h in self.keyed_hooks() if (state := h.state_dict()) is not None}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "epoch": self.epoch, "fit_epoch": self.fit_epoch,
                "hooks": self.hook_states()}

    def load_state_dict(self, state: dict):
        saved = state.get("hooks", {})
        for key, h in self.keyed_hooks():   # first: a hook may change the loop's stage, optimizer and schedule
            if key in saved:
                h.load_state_dict(saved[key], self)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.fit_epoch = state["epoch"], state["fit_epoch"]
        self.saved_epoch = self.epoch

    def evaluate_splits(self) -> tuple[dict[str, Evaluation], dict]:
        """A clean pass (weight noise off: the weights' means) over every split, and its metrics."""
        spec = self.spec
        evals, metrics = {}, {}
        with self.clean_pass(self.model):
            for name, s in self.splits.items():
                evals[name] = evaluate(self.model, s.x, s.y, spec.eval_batch_size, spec.example_margins,
                                       forward_precision(spec, self.device))
                metrics.update(split_metrics(name, evals[name], s))
        return evals, metrics

    def evaluates(self, epoch: int) -> bool:
        """Whether `epoch` ends with a clean pass over every split (spec.eval_every; always the last)."""
        every = self.spec.eval_every
        return epoch >= self.end_epoch or (every > 0 and epoch % every == 0)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of the training examples in `epoch` (a stream of its own per epoch); of
        the subset trained on, where there is one."""
        if self.fit_subset is not None:
            gen = generator(self.spec.seed, "order", epoch)
            return self.fit_subset.cpu()[torch.randperm(len(self.fit_subset), generator=gen)]
        return torch.randperm(len(self.fit_y), generator=generator(self.spec.seed, "order", epoch))

    def run_epoch(self) -> EpochResult:
        """Train one epoch, evaluate every split and step the schedule, the way the loop's strategy
        does it (eager by default; several runs stacked for vectorized seeds)."""
        e = self.epoch + 1
        lr = self.opt.param_groups[0]["lr"]
        share = self.strategy.epoch(self)
        t0 = time.perf_counter() - share.seconds   # this run's share of what the strategy did
        self.strategy.step_schedule(self, share)
        self.epoch = e
        metrics = {"epoch": e, "lr": lr, **share.metrics}
        if share.loss is not None:
            metrics.update(train_loss_presented=share.loss, train_acc_presented=share.acc)
        if self.fit_subset is not None and share.evals:   # accuracy on the examples trained on, and held out
            correct = share.evals[self.fit_on[0]].correct
            seen = torch.zeros(len(correct), dtype=torch.bool, device=correct.device)
            seen[self.fit_subset] = True
            metrics.update(train_acc_seen=float(correct[seen].float().mean()),
                           train_acc_heldout=float(correct[~seen].float().mean()))
        fit_key = (lambda n: "train_acc_seen") if self.fit_subset is not None else (lambda n: f"{n}_acc")
        if self.until is not None and self.fit_epoch is None and share.evals and \
                all(metrics[fit_key(n)] >= self.until for n in self.fit_on):
            self.fit_epoch = e
        metrics["seconds_train"] = share.seconds_train
        metrics["seconds"] = time.perf_counter() - t0
        by_split, margin_by_split = {}, {}
        if share.presented is not None:
            start = 0
            for n in self.fit_on:
                part = slice(start, start + len(self.splits[n]))
                by_split[n] = share.presented[part]
                if share.presented_margin is not None:
                    margin_by_split[n] = share.presented_margin[part]
                start += len(self.splits[n])
        return EpochResult(e, metrics, share.evals, by_split, margin_by_split)

    def persist_due(self) -> bool:
        return (self.done or self.epoch in self.spec.save_epochs
                or time.perf_counter() - self._last_persist >= self.spec.checkpoint_every)

    def start(self):
        for h in self.hooks:
            h.on_start(self)

    def close_epoch(self, result: EpochResult, persist: bool | None = None):
        """Hooks of a finished epoch, writing state only when `persist` (default: persist_due())."""
        self.persist = self.strategy.persist_due(self) if persist is None else persist
        if self.persist:
            self.strategy.before_persist(self)   # e.g. a stack hands this run its optimizer state
        for h in self.hooks:
            h.on_epoch_end(self, result)
        if self.persist:
            self._last_persist = time.perf_counter()
        self.last_metrics = result.metrics

    def finish(self):
        for h in self.hooks:
            h.on_end(self)

    def epochs(self, started: bool = False):
        """The loop as a generator: one epoch (trained, evaluated, closed by the hooks) per step.
        run() exhausts it; several loops of one stack advance theirs in turn (run_together)."""
        if not started:
            self.start()
        finished = False
        while not self.done:
            self.close_epoch(self.run_epoch())
            if self.done:   # in the same step as the last epoch: its files and the final status
                self.finish()   # become durable together (writes_together)
                finished = True
            yield self.epoch
        if not finished:   # done before it began (a finished run resumed)
            self.finish()

    def run(self):
        with frozen_heap():
            self.start()   # outside any block: its hooks read and cut back files (resume)
            steps = self.epochs(started=True)
            while True:
                with writes_together():   # an epoch's checkpoint, per-example bits and status at once
                    if next(steps, None) is None:
                        break
        return self


def run_together(loops: list["Loop"]) -> list["Loop"]:
    """Several loops whose strategy trains them as one (vectorized seeds), epoch by epoch in turn:
    the first loop to ask for an epoch gets it computed for every active loop of the stack."""
    with frozen_heap():
        for loop in loops:
            loop.start()
        running = [loop.epochs(started=True) for loop in loops]
        while running:
            with writes_together():   # every run's files of the epoch wait for the disk once
                for g in list(running):
                    if next(g, None) is None:
                        running.remove(g)
    return loops
