"""Multiplicative log-normal weight noise (Kingma et al. 2015; Achille & Soatto 2018).

Every weight w of a wrapped Linear or Conv2d layer is used as w = m * eps with
eps ~ LogNormal(-alpha/2, alpha): E[eps] = 1 and Var[log eps] = alpha. alpha is held as log alpha,
per weight, per output unit or per layer, fixed or learned. Biases stay deterministic.

Two ways to draw the noise in a forward pass (`sampling`):

- "weights" (exact): one draw of eps per weight per forward pass, shared by the batch. The layer's
  weights follow the log-normal law exactly; examples in a batch see the same weights.
- "lrt" (local reparameterization, Linear only): each example's pre-activation is drawn from a
  Gaussian with the exact mean sum_i x_i m_i and variance sum_i x_i^2 m_i^2 (e^alpha - 1) of the
  log-normal model. Exact in its first two moments; the Gaussian shape is a central-limit
  approximation (good for wide layers, poor for a layer with few inputs). Convolutions fall back to
  "weights", where the trick does not apply without per-position weights.

The information in the weights (per layer, summed over weights; see `weight_information`):

- improper log-uniform prior on |w|: KL = -1/2 ln alpha + const per weight. Only differences are
  meaningful, so it is reported relative to a reference alpha_ref: 1/2 ln(alpha_ref / alpha).
- log-normal prior on |w|, log|w| ~ N(mu_p, s_p^2): the posterior has log|w| ~ N(ln|m| - alpha/2, alpha),
  KL = ln(s_p / sqrt(alpha)) + (alpha + (ln|m| - alpha/2 - mu_p)^2) / (2 s_p^2) - 1/2 per weight, with
  (mu_p, s_p^2) given or fitted to minimize the total (mean of the posterior means; mean of
  alpha + squared deviations). Signs are treated as known in both.
- the initialization's law (`kl_init`): the log-normal prior fitted, per layer, to the layer's
  posterior when it was wrapped (for a new network: its random initial weights at the initial alpha),
  and kept fixed. A proper prior: the KL is >= 0 and 0 only for a weight that is as uncertain as a
  fresh draw of the initialization, which is what "the weight holds nothing about the data" means
  here; each weight's term is smallest at alpha = s_p^2, so a learned alpha needs no cap. Its
  expectation over training sets bounds I(w; D) from above (any fixed prior does), so it is a count
  of information, not a value up to a constant.

Also reported: the mean over weights of -1/2 ln alpha in nats (the quantity plotted by the study
that motivates the noise ramp: about 4.6 at alpha = 1e-4, falling by 1/2 ln 2 per doubling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GRANULARITIES = ("weight", "unit", "layer")


def _alpha_shape(weight: torch.Tensor, granularity: str) -> tuple[int, ...]:
    if granularity == "weight":
        return tuple(weight.shape)
    if granularity == "unit":
        return (weight.shape[0],) + (1,) * (weight.dim() - 1)
    if granularity == "layer":
        return (1,) * weight.dim()
    raise ValueError(f"unknown noise granularity {granularity!r}; use one of {GRANULARITIES}")


class LogNormalNoise(nn.Module):
    """Wraps a Linear or Conv2d: its weight becomes the mean m of w = m * eps."""

    def __init__(self, layer: nn.Module, alpha: float, granularity: str = "layer", learn: bool = False,
                 sampling: str = "lrt", max_alpha: float | None = None):
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"log-normal noise wraps Linear and Conv2d layers, not {type(layer).__name__}")
        self.layer = layer
        self.granularity, self.sampling = granularity, sampling
        init = torch.full(_alpha_shape(layer.weight, granularity), math.log(alpha), device=layer.weight.device)
        self.log_alpha = nn.Parameter(init, requires_grad=learn)
        # A learned alpha under the log-uniform prior is kept <= 1, as Kingma et al. do: that prior's KL
        # falls without end as alpha grows. A fixed alpha (the noise ramp), or one learned under the
        # initialization's law (whose KL rises again past alpha = s_p^2), is not bounded.
        if max_alpha is None:
            max_alpha = 1.0 if learn else math.inf
        self.max_log_alpha = math.log(max_alpha) if max_alpha < math.inf else math.inf
        # The initialization's law of log|w| (see the module docstring): not saved in checkpoints,
        # since a resumed run is built from the same seed and finds the same law again.
        mu_p, var_p = fit_lognormal_prior(*lognormal_posterior(layer.weight.detach(), init.detach()))
        self.register_buffer("prior_mu", torch.tensor(mu_p, device=init.device), persistent=False)
        self.register_buffer("prior_var", torch.tensor(var_p, device=init.device), persistent=False)
        self.active = True   # noise on in any mode; `noise_off` switches it off for clean evaluation
        # The standard normal draws of the next forward pass when given from outside (a stack of runs
        # draws each run's own, in the order its own model would); None: drawn here.
        self.noise = None

    def noise_shape(self, out: torch.Tensor) -> tuple[int, ...]:
        """The shape of the standard normal draws of a forward pass whose output is `out`."""
        lrt = isinstance(self.layer, nn.Linear) and self.sampling == "lrt"
        return tuple(out.shape) if lrt else tuple(self.layer.weight.shape)

    def _standard_normal(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like) if self.noise is None else self.noise

    @property
    def clamped_log_alpha(self) -> torch.Tensor:
        return self.log_alpha.clamp(max=self.max_log_alpha)

    @property
    def alpha(self) -> torch.Tensor:
        return self.clamped_log_alpha.exp()

    def set_alpha(self, alpha: float):
        with torch.no_grad():
            self.log_alpha.fill_(math.log(alpha))

    def sample_weight(self) -> torch.Tensor:
        a = self.alpha.expand_as(self.layer.weight)
        eps = torch.exp(-a / 2 + a.sqrt() * self._standard_normal(self.layer.weight))
        return self.layer.weight * eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not self.active:
            return layer(x)
        if isinstance(layer, nn.Linear) and self.sampling == "lrt":
            mean = F.linear(x, layer.weight, layer.bias)
            var_eps = torch.expm1(self.alpha.expand_as(layer.weight))
            var = F.linear(x * x, layer.weight * layer.weight * var_eps)
            return mean + var.clamp_min(0).sqrt() * self._standard_normal(mean)
        w = self.sample_weight()
        if isinstance(layer, nn.Linear):
            return F.linear(x, w, layer.bias)
        return layer._conv_forward(x, w, layer.bias)


def add_weight_noise(model: nn.Module, alpha: float, granularity: str = "layer", learn: bool = False,
                     sampling: str = "lrt", max_alpha: float | None = None) -> nn.Module:
    """Replace every Linear and Conv2d of `model` (in place) by a LogNormalNoise wrapper; a bare
    layer is returned wrapped."""
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        return LogNormalNoise(model, alpha, granularity, learn, sampling, max_alpha)
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            setattr(model, name, LogNormalNoise(child, alpha, granularity, learn, sampling, max_alpha))
        elif not isinstance(child, LogNormalNoise):
            add_weight_noise(child, alpha, granularity, learn, sampling, max_alpha)
    return model


def noisy_layers(model: nn.Module) -> list[tuple[str, LogNormalNoise]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LogNormalNoise)]


class noise_off:
    """Context manager: the model's noisy layers use their means."""

    def __init__(self, model: nn.Module):
        self.layers = [m for _, m in noisy_layers(model)]

    def __enter__(self):
        self.saved = [m.active for m in self.layers]
        for m in self.layers:
            m.active = False

    def __exit__(self, *exc):
        for m, s in zip(self.layers, self.saved):
            m.active = s


# -- information in the weights ---------------------------------------------------------------

def kl_loguniform(log_alpha: torch.Tensor, n_weights: int, alpha_ref: float = 1.0) -> torch.Tensor:
    """Sum over n weights of 1/2 ln(alpha_ref / alpha) in nats (log_alpha broadcast to the weights)."""
    per = 0.5 * (math.log(alpha_ref) - log_alpha)
    return per.sum() * (n_weights / log_alpha.numel())


def lognormal_posterior(mean_weight: torch.Tensor, log_alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of log|w| under the posterior, per weight."""
    a = log_alpha.exp().expand_as(mean_weight)
    return mean_weight.abs().clamp_min(1e-30).log() - a / 2, a


def fit_lognormal_prior(mu_q: torch.Tensor, var_q: torch.Tensor) -> tuple[float, float]:
    """The (mu_p, s_p^2) of a Gaussian prior on log|w| that minimizes sum KL(q_i || p)."""
    mu_p = mu_q.mean()
    return float(mu_p), float((var_q + (mu_q - mu_p) ** 2).mean())


def kl_lognormal(mu_q: torch.Tensor, var_q: torch.Tensor, mu_p, var_p) -> torch.Tensor:
    """Sum over weights of KL(N(mu_q, var_q) || N(mu_p, var_p)) in nats (KL between log|w| laws);
    the prior's (mu_p, var_p) as numbers or 0-d tensors."""
    var_p = torch.as_tensor(var_p, dtype=var_q.dtype, device=var_q.device)
    return (0.5 * var_p.log() - 0.5 * var_q.log() + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5).sum()


def kl_init(m: "LogNormalNoise") -> torch.Tensor:
    """A noisy layer's KL (nats, summed over its weights) to the initialization's law, differentiable."""
    mu_q, var_q = lognormal_posterior(m.layer.weight, m.clamped_log_alpha)
    return kl_lognormal(mu_q, var_q, m.prior_mu, m.prior_var)


@torch.no_grad()
def weight_information(model: nn.Module, alpha_ref: float = 1.0, prior: tuple[float, float] | None = None) -> dict:
    """Per layer and in total: KL under the log-uniform prior relative to alpha_ref (bits), KL under
    a log-normal prior (bits; fitted per layer unless `prior` = (mu_p, s_p^2) is given), KL to the
    initialization's law (bits), the mean of -1/2 ln alpha (nats) and the mean of log10 alpha."""
    out: dict = {"layers": {}}
    tot_lu = tot_ln = tot_init = tot_neg = 0.0
    n_tot = 0
    for name, m in noisy_layers(model):
        w, la = m.layer.weight, m.clamped_log_alpha
        n = w.numel()
        mu_q, var_q = lognormal_posterior(w, la)
        mu_p, var_p = prior if prior is not None else fit_lognormal_prior(mu_q, var_q)
        lu = float(kl_loguniform(la, n, alpha_ref)) / math.log(2)
        ln = float(kl_lognormal(mu_q, var_q, mu_p, var_p)) / math.log(2)
        init = float(kl_init(m)) / math.log(2)
        neg = float((-0.5 * la).mean())
        out["layers"][name] = {"weights": n, "kl_loguniform_bits": lu, "kl_lognormal_bits": ln, "kl_init_bits": init,
                               "neg_half_log_alpha": neg, "mean_log10_alpha": float(la.mean()) / math.log(10)}
        tot_lu, tot_ln, tot_init = tot_lu + lu, tot_ln + ln, tot_init + init
        tot_neg, n_tot = tot_neg + neg * n, n_tot + n
    out.update(kl_loguniform_bits=tot_lu, kl_lognormal_bits=tot_ln, kl_init_bits=tot_init,
               neg_half_log_alpha=tot_neg / max(n_tot, 1), alpha_ref=alpha_ref)
    return out


PRIORS = ("loguniform", "init")


def info_penalty(model: nn.Module, alpha_ref: float = 1.0, prior: str = "loguniform") -> torch.Tensor:
    """Differentiable total KL (nats) of the noisy weights: what --info-weight scales. `prior`:
    "loguniform" (relative to alpha_ref) or "init" (to the initialization's law)."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; use one of {PRIORS}")
    terms = [kl_loguniform(m.clamped_log_alpha, m.layer.weight.numel(), alpha_ref) if prior == "loguniform"
             else kl_init(m) for _, m in noisy_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
