"""Several runs of one small architecture trained as one batched model (`--vectorize-seeds`).

Each run stays an ordinary Loop with its own data (seed, corruption), model, optimizer, hooks and run
directory. What is shared is the arithmetic: the runs' MLPs are held as batched matrices (a leading
run axis on every weight, bias and optimizer moment), each training step is one batched pass over
every run's own batch (its own permutation of its own data), and each epoch's evaluation is one
batched pass over every run's splits, with the metrics of all runs in one sync. Inputs that are the
same for every run (label corruption only) are stored once and the first layer of all runs is one
matrix product over them. Then each Loop closes its epoch with its own hooks as usual. The stacked
update is the same elementwise arithmetic as the separate ones, so the runs equal separate runs up to
float rounding of the batched matrix products (and of tanh, computed from a sigmoid: tanh_of_doubled_).

The stack lives across epochs. A run's weights are copied back to its model when something reads
the model (a hook, a checkpoint: Loop.model); optimizer state only when a run writes a checkpoint.
Runs that stop early (--until-train-acc) leave the stack, which is rebuilt from the others.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, FitConfig
from .engine import EpochShare, Evaluation, Loop, build_optimizer, margins, split_metrics_rows

# Fields that may differ between runs trained together: they change the data, not the computation.
PER_RUN_FIELDS = {"seed", "corrupt", "label_noise_mode", "corrupt_test", "progress", "save_epochs", "checkpoint_every"}
# what a stack cannot give a run: per-batch hooks (the stack trains every run in one pass) and batch
# norm in the written-out MLP kernel; points that ask for them are trained one by one
UNSTACKABLE_FIELDS = ("norms", "batch_scalars")


def mlp_batch_norm(config: dict) -> bool:
    from .spec import read_model_fields
    return config.get("model", "mlp") in ("mlp", "tishby") and \
        bool(read_model_fields(config).get("model_args", {}).get("batch_norm"))


def stackable(config: dict) -> bool:
    return not any(config.get(k) for k in UNSTACKABLE_FIELDS) and not mlp_batch_norm(config)


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
    if not stackable(c.to_dict()):
        raise ConfigError("--vectorize-seeds", "cannot stack runs with --norms, --batch-scalars or --batch-norm "
                                               "(they need each run's own batches); a sweep trains such points "
                                               "one by one")
    if getattr(c, "precision", "fp32") == "bf16" or getattr(c, "compile", False):
        raise ConfigError("--vectorize-seeds", "a stack computes in float32 without torch.compile; drop "
                                               "--precision bf16 and --compile, or train the runs one by one")
    if c.augment or c.example_record == "presentation" or c.loss_reduction != "mean":
        raise ConfigError("--vectorize-seeds", "works without --augment, --example-record presentation and "
                                               "--loss-reduction sum")


def check_stackable_model(loop) -> None:
    """A stack's runs must each equal their separate run, so a model that draws random numbers in a
    training pass (dropout, drop-path: found from the model itself, random_in_training) is refused in
    one line before anything is written."""
    from .models import random_in_training
    from .models.noisy import noise_off
    x = next(iter(loop.splits.values())).x
    with noise_off(loop.model):   # learned weight noise is drawn per run by the stack itself
        random = random_in_training(loop.model, tuple(x.shape[1:]), x.device)
    if random:
        raise ConfigError("--vectorize-seeds", "the model draws random numbers in training (dropout or the like), "
                                               "so its runs cannot be stacked; train them one by one (drop "
                                               "--vectorize-seeds, --vectorize or --stack), or set its dropout to 0")


def _per_run(v) -> bool:
    """Optimizer-state entries with a value per weight (momentum, moments) are stacked per run;
    scalar ones (Adam's step count) are the same for every run and shared."""
    return torch.is_tensor(v) and v.dim() > 0


def _copy(v):
    return v.clone() if torch.is_tensor(v) else v


def tanh_of_doubled_(z2: torch.Tensor) -> torch.Tensor:
    """tanh(z) in place, from z2 = 2z, as 2 sigmoid(2z) - 1. torch.tanh is scalar code on CPU (about
    3 ns an element here, a quarter of a stacked 12-bit run), sigmoid vectorized (about 0.6 ns), and
    the doubling comes free from the layer's matrix product (alpha = beta = 2, exact in floating
    point). The absolute error is at most about 2.4e-7, two float32 steps at 1: the rounding of a
    batched product of these sizes (tested against torch.tanh)."""
    return torch.sigmoid_(z2).mul_(2).sub_(1)


def class_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class of unit-major logits (K, C, B): what logits.max(dim=1).indices gives (the
    first maximum on a tie, a NaN above every number). With two classes it is a comparison: on CPU a
    reduction over an axis of 2 costs about five times as much (a 12-bit stack's evaluation)."""
    if logits.shape[1] != 2:
        return logits.max(dim=1).indices
    a, b = logits[:, 0], logits[:, 1]
    return ((b > a) | (b.isnan() & ~a.isnan())).long()


def _tanh_backward(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return d.addcmul_(d * a, a, value=-1)     # d * (1 - a^2), a = tanh(z)


def _relu_backward(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return d.masked_fill_(a <= 0, 0)          # as autograd: no gradient where the output is 0


# gradient through the activation, in place, from the activation's output (what the pass keeps)
ACTIVATION_BACKWARD = {nn.Tanh: _tanh_backward, nn.ReLU: _relu_backward}


class RunStack:
    """What every stack of runs shares: the runs' data stacked, each run's batches, the epoch's
    training pass and evaluation, and each run's share of them. A subclass holds the runs' models and
    gives forward(x, shared) and train_step(xb, yb), and copies weights and optimizer state back to a
    run (write_back_weights(j), write_back_state(j))."""

    loops: list[Loop]
    k: int
    opt: torch.optim.Optimizer

    def forward(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        raise NotImplementedError

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def stack_data(self, loops: list[Loop]):
        """Inputs stored once when every run has the same ones, else stacked; labels stacked. The
        splits of each kind (shared, stacked) lie end to end in one tensor, each split a view of it,
        so that one evaluation pass covers them (`groups`: names, inputs, labels, shared)."""
        self.x: dict[str, torch.Tensor] = {}
        self.shared: dict[str, bool] = {}
        self.y: dict[str, torch.Tensor] = {}
        self.y_true: dict[str, torch.Tensor] = {}
        self.corrupted: dict[str, torch.Tensor] = {}
        self.groups: list[tuple] = []
        self.where: dict[str, tuple] = {}   # where[split]: (its group's inputs, its first index there)
        names = list(loops[0].splits)
        for name in names:
            splits = [l.splits[name] for l in loops]
            x0 = splits[0].x
            self.shared[name] = all(s.x is x0 or torch.equal(s.x, x0) for s in splits)
            for attr in ("y", "y_true", "corrupted"):
                getattr(self, attr)[name] = torch.stack([getattr(s, attr) for s in splits])
        for shared in (True, False):
            group = [n for n in names if self.shared[n] == shared]
            if not group:
                continue
            first = loops[0].splits[group[0]].x
            n_all = sum(len(loops[0].splits[n]) for n in group)
            x = first.new_empty(((n_all,) if shared else (self.k, n_all)) + first.shape[1:])
            start = 0
            for name in group:   # copied run by run: no transient second copy of stacked inputs
                m = len(loops[0].splits[name])
                for j, l in enumerate(loops[:1] if shared else loops):
                    (x if shared else x[j])[start:start + m].copy_(l.splits[name].x)
                self.x[name] = x[start:start + m] if shared else x[:, start:start + m]
                self.where[name] = (x, start)
                start += m
            self.groups.append((group, x, torch.cat([self.y[n] for n in group], 1), shared))
        for l in loops:   # one copy of shared inputs in memory, not one per run
            for name, s in l.splits.items():
                if self.shared[name]:
                    s.x = self.x[name]
            l.set_fit(l.fit_on)

    def _batch(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """Inputs (K, B, ...) of each run's examples idx[k] of split `name`."""
        x, start = self.where[name]   # indexed in the group's tensor: the split is a strided view of it
        if self.shared[name]:
            return x.index_select(0, (idx + start).flatten()).view(*idx.shape, *x.shape[1:])
        rows = torch.arange(self.k, device=x.device)[:, None] * x.shape[1] + start
        return x.flatten(0, 1).index_select(0, (rows + idx).flatten()).view(*idx.shape, *x.shape[2:])

    def train_epoch(self) -> tuple[list[float], list[float]]:
        """One epoch of every run on its own permutation of its data; presented loss and accuracy."""
        first = self.loops[0]
        e, bs = first.epoch + 1, first.spec.batch_size
        for group, own in zip(self.opt.param_groups, first.opt.param_groups):   # the schedule's lrs
            group["lr"] = own["lr"]
        (name,) = first.fit_on
        y = self.y[name]
        order = torch.stack([l.epoch_order(e) for l in self.loops]).to(y.device)
        k, n = order.shape
        y_epoch = y.gather(1, order)
        losses, preds = [], []
        for i in range(0, n, bs):
            ce, logits = self.train_step(self._batch(name, order[:, i:i + bs]), y_epoch[:, i:i + bs])
            losses.append(ce)
            preds.append(class_argmax(logits))   # argmax's first-maximum rule, much faster than argmax over dim 1
        loss = torch.cat(losses, 1).sum(1) / n
        acc = (torch.cat(preds, 1) == y_epoch).sum(1).double() / n
        return loss.tolist(), acc.tolist()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, shared: bool, batch_size: int,
                 with_margins: bool) -> Evaluation:
        """A clean pass over inputs x (N, ...) shared by all runs or (K, N, ...) with labels y (K, N):
        an Evaluation of (K, N) tensors."""
        losses, preds, margs = [], [], []
        for i in range(0, y.shape[1], batch_size):
            xb = x[i:i + batch_size] if shared else x[:, i:i + batch_size]
            yb = y[:, i:i + batch_size]
            logits = self.forward(xb, shared).float()
            # cross-entropy as log-softmax and a gather: the same numbers, faster on (K, C, B) than F.cross_entropy
            losses.append(torch.log_softmax(logits, dim=1).gather(1, yb[:, None]).squeeze(1).neg_())
            preds.append(class_argmax(logits))
            if with_margins:
                margs.append(margins(logits, yb))
        pred = torch.cat(preds, 1)
        return Evaluation(torch.cat(losses, 1), pred, pred == y, torch.cat(margs, 1) if with_margins else None)

    def epoch(self) -> list[EpochShare]:
        """Train and evaluate every run for one epoch; each run's share."""
        t0 = time.perf_counter()
        cfg = self.loops[0].spec
        loss, acc = self.train_epoch()
        t_train = (time.perf_counter() - t0) / self.k
        evals: dict[str, list] = {}
        metrics: list[dict] = [{} for _ in self.loops]
        groups = self.groups if self.loops[0].evaluates(self.loops[0].epoch + 1) else []
        for names, x, y, shared in groups:   # one pass over each group's splits end to end
            ev = self.evaluate(x, y, shared, cfg.eval_batch_size, cfg.example_margins)
            for name in names:
                start = self.where[name][1]
                part = slice(start, start + self.y[name].shape[1])
                one = ev[:, part]
                evals[name] = [one[j] for j in range(self.k)]
                for m, row in zip(metrics, split_metrics_rows(name, one, self.corrupted[name], self.y_true[name])):
                    m.update(row)
        evals = {n: evals[n] for n in self.x if n in evals}   # in the splits' own order
        seconds = (time.perf_counter() - t0) / self.k
        return [EpochShare(loss[j], acc[j], None, {n: evals[n][j] for n in evals}, metrics[j], t_train, seconds)
                for j in range(self.k)]


class MLPStack(RunStack):
    """The MLPs, optimizer states and data of `loops`, stacked along a leading run axis.

    All runs' weights and biases live in one flat parameter (and its gradient in one flat buffer),
    viewed per layer as (K, out, in) and (K, out): the optimizer then steps one tensor, and the
    backward pass, written out for Linear + tanh/ReLU with cross-entropy, writes each layer's
    gradient straight into its view. For these small stacked products autograd's bookkeeping and
    the optimizer's per-tensor work cost as much as the arithmetic; the gradients equal autograd's
    (tested)."""

    def __init__(self, loops: list[Loop]):
        self.loops, self.k = loops, len(loops)
        base: Any = loops[0].model
        activation = type(base.layers[0][1]) if len(base.layers) else None
        self.tanh = activation is nn.Tanh   # computed from 2z (tanh_of_doubled_); ReLU in place
        self.activation_backward: Any = ACTIVATION_BACKWARD[activation] if activation else None
        # per run, its parameters in the order [w0, b0, w1, b1, ...] (Linear layers in forward order)
        self.run_params = [[p for m in l.model.modules() if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]
                           for l in loops]
        self.shapes = [p.shape for p in self.run_params[0]]
        first = self.run_params[0][0]
        self.flat = nn.Parameter(torch.empty(sum(self.k * p.numel() for p in self.run_params[0]),
                                             device=first.device, dtype=first.dtype))
        self.flat.grad = torch.zeros_like(self.flat)
        self.params, self.grads = self.views(self.flat.data), self.views(self.flat.grad)
        for i, v in enumerate(self.params):
            v.copy_(torch.stack([ps[i].detach() for ps in self.run_params]))
        self.opt = build_optimizer(nn.ParameterList([self.flat]), loops[0].spec)
        states: list[list[Any]] = [[l.opt.state.get(p) for p in ps] for l, ps in zip(loops, self.run_params)]
        if all(all(row) for row in states):
            template = states[0][0]
            stacked: dict = {}
            for key, value in template.items():
                if _per_run(value):
                    stacked[key] = torch.empty_like(self.flat.data)
                    for i, v in enumerate(self.views(stacked[key])):
                        v.copy_(torch.stack([row[i][key] for row in states]))
                else:
                    stacked[key] = _copy(value)
            self.opt.state[self.flat] = stacked
        self.stack_data(loops)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat tensor of the stack's layout as per-layer views (K, *shape of run parameter)."""
        out, start = [], 0
        for shape in self.shapes:
            n = self.k * shape.numel()
            out.append(flat[start:start + n].view(self.k, *shape))
            start += n
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, shared: bool, keep: list | None = None) -> torch.Tensor:
        """Logits (K, classes, B) of every run for inputs (B, ...) shared by all runs or (K, B, ...);
        `keep`, if given, receives each layer's input (for the backward pass). Activations are
        unit-major, (K, width, B): reductions over a handful of classes are then vectorized over the
        batch (several times faster on CPU than over a last axis of 2)."""
        n_layers = len(self.params) // 2
        h = x.flatten(1) if shared else x.flatten(2).transpose(1, 2)
        if keep is None and self.tanh:
            return self._forward_sigmoids(h, shared)
        for i in range(n_layers):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            if keep is not None:
                keep.append(h)
            hidden = i < n_layers - 1
            scale = 2.0 if hidden and self.tanh else 1.0
            if i == 0 and shared:   # one product for all runs, (B, D) x (D, K*width), read as (K, width, B)
                h = torch.addmm(b.flatten(), h, w.flatten(0, 1).T, beta=scale, alpha=scale)   # 2x faster than
                h = h.T.view(*w.shape[:2], -1)                                                 # (K*width, D) x (D, B)
            else:
                h = torch.baddbmm(b.unsqueeze(2), w, h, beta=scale, alpha=scale)
            if hidden:
                h = tanh_of_doubled_(h) if self.tanh else h.relu_()
        return h

    def _forward_sigmoids(self, h: torch.Tensor, shared: bool) -> torch.Tensor:
        """forward() of a tanh net when no layer input is kept (evaluation): each hidden layer keeps
        s = sigmoid(2z) and the next layer takes tanh(z) = 2s - 1 into its weights and bias
        (2W s + b - W 1), which spares two passes over every hidden activation."""
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            hidden = i < n_layers - 1
            scale = 2.0 if hidden else 1.0   # hidden layers compute 2z, for sigmoid(2z)
            if i > 0:   # the input is s; the layer's own input is 2s - 1
                b = b - w.sum(dim=2)
                w = w * 2
            if i == 0 and shared:
                h = torch.addmm(b.flatten(), h, w.flatten(0, 1).T, beta=scale, alpha=scale).T.view(*w.shape[:2], -1)
            else:
                h = torch.baddbmm(b.unsqueeze(2), w, h, beta=scale, alpha=scale)
            if hidden:
                h = torch.sigmoid_(h)
        return h

    @torch.no_grad()
    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of every run on its batch (xb (K, B, ...), yb (K, B)), minimizing the
        mean cross-entropy of each; returns the per-example cross-entropy and the logits."""
        inputs: list[torch.Tensor] = []
        logits = self.forward(xb, shared=False, keep=inputs)
        log_p = torch.log_softmax(logits, dim=1)
        ce = -log_p.gather(1, yb[:, None]).squeeze(1)
        # d(mean CE)/d logits = (softmax - one-hot) / B
        d = log_p.exp_()
        d.scatter_add_(1, yb[:, None], torch.full_like(ce[:, None], -1.0))
        d.div_(yb.shape[1])
        for i in reversed(range(len(inputs))):
            torch.bmm(d, inputs[i].transpose(1, 2), out=self.grads[2 * i])
            torch.sum(d, dim=2, out=self.grads[2 * i + 1])
            if i > 0:
                d = self.activation_backward(torch.bmm(self.params[2 * i].transpose(1, 2), d), inputs[i])
        self.opt.step()
        return ce, logits

    @torch.no_grad()
    def write_back_weights(self, j: int):
        """Copy run j's weights from the stack into its own model (one batched copy)."""
        torch._foreach_copy_(self.run_params[j], [p[j] for p in self.params])

    @torch.no_grad()
    def write_back_state(self, j: int):
        """Copy run j's optimizer state from the stack into its own optimizer."""
        state = self.opt.state.get(self.flat)
        if not state:
            return
        per_layer = {key: self.views(v) if _per_run(v) else v for key, v in state.items()}
        for i, run_p in enumerate(self.run_params[j]):
            self.loops[j].opt.state[run_p] = {key: v[i][j].clone() if isinstance(v, list) else _copy(v)
                                              for key, v in per_layer.items()}


class FuncStack(RunStack):
    """Any model's runs stacked with torch.func: stack_module_state gives every parameter and buffer
    a leading run axis, one vmap of functional_call over a stateless copy of the model computes every
    run's logits on its own batch, one backward pass of the sum of the runs' mean losses gives each
    run its own gradient (a run's loss depends only on its own slice), and one optimizer steps all
    slices with the same elementwise update as the separate optimizers. Batch norm keeps per-run
    running statistics. Weight-noise layers get each run's own standard normal draws, from the stream
    its own run would draw them from, in the order its own forward pass would (recorded once per batch
    shape on the architecture). A penalty (--info-weight) is each run's own, evaluated on its slice.
    The same interface as MLPStack (the written-out kernel for MLPs, faster there)."""

    def __init__(self, loops: list[Loop]):
        import copy
        from torch.func import stack_module_state
        from .models.noisy import noisy_layers
        self.loops, self.k = loops, len(loops)
        models = [l.model for l in loops]
        params, buffers = stack_module_state(models)
        self.names = list(params)
        # fixed parameters (a noise level that is not learned) stay fixed
        self.params = {n: nn.Parameter(p.detach().clone(), requires_grad=models[0].get_parameter(n).requires_grad)
                       for n, p in params.items()}
        self.buffers = {n: b.clone() for n, b in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")   # the architecture, without data
        self.noisy = dict(noisy_layers(self.base))
        self.noise_plans: dict[tuple, list] = {}
        self.generators: list = []   # each run's noise stream of the epoch (train_epoch)
        self.penalty = _Penalty(loops[0]) if loops[0].penalty is not None else None
        self.run_params = [dict(m.named_parameters()) for m in models]
        self.run_buffers = [dict(m.named_buffers()) for m in models]
        self.opt = build_optimizer(self.params, loops[0].spec)   # by name: the groups of each run's own
        for n in self.names:   # optimizer state where the runs have it (a fixed parameter has none)
            states: list[Any] = [l.opt.state.get(ps[n]) for l, ps in zip(loops, self.run_params)]
            if all(states):
                self.opt.state[self.params[n]] = {key: torch.stack([st[key] for st in states]) if _per_run(v)
                                                  else _copy(v) for key, v in states[0].items()}
        self.stack_data(loops)

    def _one(self, params, buffers, x, noise):
        from torch.func import functional_call
        for name, draws in noise.items():
            self.noisy[name].noise = draws
        try:
            return functional_call(self.base, (params, buffers), (x,))
        finally:
            for name in noise:
                self.noisy[name].noise = None

    def forward(self, x: torch.Tensor, shared: bool, noise: dict | None = None) -> torch.Tensor:
        """Logits (K, classes, B) of every run, for inputs (B, ...) shared by all runs or (K, B, ...);
        `noise`: per noisy layer, every run's standard normal draws (K, ...)."""
        from torch.func import vmap
        out = vmap(self._one, in_dims=(0, 0, None if shared else 0, 0))(self.params, self.buffers, x, noise or {})
        return out.transpose(1, 2)

    def noise_plan(self, input_shape: tuple) -> list[tuple[str, tuple]]:
        """The noisy layers a forward pass on a batch of `input_shape` draws for, in the order it
        draws, with the shapes of the draws (one pass of the architecture on meta tensors)."""
        if input_shape not in self.noise_plans:
            plan = []
            handles = [m.register_forward_hook(lambda m, args, out, name=name: plan.append((name, m.noise_shape(out))))
                       for name, m in self.noisy.items()]
            try:
                with torch.no_grad():
                    self.base(torch.empty(input_shape, device="meta"))
            finally:
                for h in handles:
                    h.remove()
            self.noise_plans[input_shape] = plan
        return self.noise_plans[input_shape]

    def draw_noise(self, xb: torch.Tensor) -> dict:
        """Each run's standard normal draws for one training batch, from its own epoch stream."""
        plan = self.noise_plan(tuple(xb.shape[1:]))
        draws = [[torch.randn(shape, generator=g, device=xb.device) for _, shape in plan] for g in self.generators]
        return {name: torch.stack([d[i] for d in draws]) for i, (name, _) in enumerate(plan)}

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.base.train()
        logits = self.forward(xb, shared=False, noise=self.draw_noise(xb) if self.noisy else None)
        ce = F.cross_entropy(logits, yb, reduction="none")
        loss = ce.mean(1)
        if self.penalty is not None:
            loss = loss + self.penalty.of_each(self.params, self.buffers)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.opt.step()
        return ce.detach(), logits.detach()

    def train_epoch(self) -> tuple[list[float], list[float]]:
        if self.noisy:   # each run's stream of the epoch, as Eager seeds the global one for a run alone
            from .seeding import generator
            e, device = self.loops[0].epoch + 1, next(iter(self.y.values())).device
            self.generators = [generator(l.spec.seed, "torch", e, device=device) for l in self.loops]
        return super().train_epoch()

    def evaluate(self, *args) -> Evaluation:
        from .models.noisy import noise_off
        self.base.eval()
        with noise_off(self.base):   # a clean pass: the noisy layers' means
            return super().evaluate(*args)

    @torch.no_grad()
    def write_back_weights(self, j: int):
        """Copy run j's parameters and buffers (batch-norm statistics) into its own model."""
        for n, p in self.run_params[j].items():
            p.copy_(self.params[n][j])
        for n, b in self.run_buffers[j].items():
            b.copy_(self.buffers[n][j])

    @torch.no_grad()
    def write_back_state(self, j: int):
        for n in self.names:
            state = self.opt.state.get(self.params[n])
            if state:
                self.loops[j].opt.state[self.run_params[j][n]] = {
                    key: v[j].clone() if _per_run(v) else _copy(v) for key, v in state.items()}


class _Penalty(nn.Module):
    """A loop's penalty (a function of its model's parameters) as a module's forward, so that
    functional_call evaluates it on every run's slice of a stack."""

    def __init__(self, loop: Loop):
        super().__init__()
        self.model, self.fn = loop.model, loop.penalty

    def forward(self) -> torch.Tensor:
        return self.fn()

    def of_each(self, params: dict, buffers: dict) -> torch.Tensor:
        """The penalty of every run (K,)."""
        from torch.func import functional_call, vmap

        def one(p, b):
            return functional_call(self, ({f"model.{n}": v for n, v in p.items()},
                                          {f"model.{n}": v for n, v in b.items()}), ())
        return vmap(one)(params, buffers)


def stack_for(loops: list[Loop], kind: str | None = None):
    """The written-out kernel for MLPs without weight noise (the mlp and tishby models, where it is
    measured faster: bench/vectorized_seeds.py), torch.func for every other model; `kind`
    ("kernel" or "func") forces one (the bench compares them)."""
    from .models.mlp import MLP
    from .models.noisy import noisy_layers
    model = loops[0].model
    kernel = type(model) is MLP and not model.batch_norm and not noisy_layers(model)
    kind = kind or ("kernel" if kernel else "func")
    return (MLPStack if kind == "kernel" else FuncStack)(loops)


class Stacked:
    """The strategy of loops trained together: the first loop to ask for an epoch gets it computed
    for every active loop as one stack (MLPStack for MLPs, FuncStack for other models); the others take
    their share. The stack lives across epochs and is rebuilt when runs leave it (--until-train-acc)."""

    def __init__(self, loops: list[Loop], kind: str | None = None):
        self.loops, self.kind = loops, kind
        self.stack: Any = None   # the stack of the active runs (MLPStack or FuncStack), built at the first epoch
        self.shares: dict = {}
        self.owed: dict[int, Any] = {}   # id(loop) -> the copy of its weights from the stack, made when its model is read
        self.persist_at: dict[int, bool] = {}   # epoch -> whether the stack's runs write their state at its end
        for loop in loops:
            loop.strategy = self

    def epoch(self, loop: Loop) -> EpochShare:
        if id(loop) not in self.shares:
            active = [l for l in self.loops if not l.done]
            if self.stack is None or self.stack.loops != active:   # first epoch, or runs have left
                if self.stack is not None:
                    for j in range(self.stack.k):
                        self.stack.write_back_state(j)
                self.stack = stack_for(active, self.kind)
            shares = self.stack.epoch()
            for j, l in enumerate(active):   # copied when something reads the run's model: most epochs
                self.owed[id(l)] = functools.partial(self.stack.write_back_weights, j)   # nothing does
            self.shares = {id(l): s for l, s in zip(active, shares)}
        return self.shares.pop(id(loop))

    def persist_due(self, loop: Loop) -> bool:
        """The first run to close an epoch decides for the stack: its runs write their checkpoints at
        the same epochs, so that a killed stack resumes as one (runner.resume_stack)."""
        if loop.epoch not in self.persist_at:
            self.persist_at = {loop.epoch: loop.persist_due()}
        return self.persist_at[loop.epoch] or loop.done

    def before_read(self, loop: Loop):
        copy = self.owed.pop(id(loop), None)
        if copy is not None:
            copy()

    def step_schedule(self, loop: Loop, share: EpochShare):
        with warnings.catch_warnings():   # this run's optimizer did not step: its twin in the stack did
            warnings.simplefilter("ignore", UserWarning)
            loop.sched.step()

    def before_persist(self, loop: Loop):
        """The checkpoint needs this run's optimizer state, which lives in the stack."""
        self.stack.write_back_state(self.stack.loops.index(loop))
