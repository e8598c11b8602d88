"""Per-token divergence estimators computed from the log-probs of the sampled tokens.

Every estimator here maps ``(logp, anchor_logp)`` -> ``values``: log-probabilities in nats of
the sampled tokens under the policy and under the anchor, any equal shapes ``[...]``; values
have the same shape (one per token). Only ``logp`` is differentiated; the anchor is detached.

Two families (see docs/algorithms.md#divergence-estimators):

* tokens sampled from the policy pi (``samples="policy"``), ``log_r = anchor_logp - logp``:
  k1, k2, k3 and k3 straight-through (Schulman's estimators of KL(pi||anchor)).
* tokens sampled from the anchor (``samples="anchor"``), ``log_u = logp - anchor_logp``:
  generator functions ``f(u)`` with ``E_anchor[f(u)] = D_f(anchor||pi)``: forward KL, JS,
  alpha, total variation.

Numerics: the ratio is only ever handled through its log (``log_r`` / ``log_u``), never as
``log(exp(.))``; ``expm1`` keeps ``u - 1`` exact near ``u = 1`` so that value and gradient are
exactly 0 at ``pi == anchor``, and JS uses softplus forms that neither overflow nor produce
``0 * log 0`` NaNs for extreme ratios.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from rlplat.divergences.registry import DivergenceFn, register

_LOG2 = math.log(2.0)


def _log_ratio(num: torch.Tensor, den: torch.Tensor, num_name: str, den_name: str) -> torch.Tensor:
    """``num - sg(den)`` after checking shapes; callers pick which side is the anchor."""
    if num.shape != den.shape:
        raise ValueError(
            f"per-token divergence: {num_name} shape {tuple(num.shape)} != {den_name} shape {tuple(den.shape)}"
        )
    return num - den.detach()


def _log_r(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``log(anchor / pi)`` of the sampled tokens, differentiable in ``logp`` only."""
    return -_log_ratio(logp, anchor_logp, "logp", "anchor_logp")


def _log_u(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``log u = log(pi / anchor)`` of the sampled tokens, differentiable in ``logp`` only."""
    return _log_ratio(logp, anchor_logp, "logp", "anchor_logp")


# --- tokens sampled from the policy -------------------------------------------------------


def k1_value(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``-log_r``: unbiased for KL(pi||anchor) but its expected gradient is 0."""
    return -_log_r(logp, anchor_logp)


def k2_value(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``0.5 log_r^2``: biased value; E_pi[grad k2] = grad KL(pi||anchor) exactly."""
    return 0.5 * _log_r(logp, anchor_logp).square()


def k3_value(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``exp(log_r) - 1 - log_r >= 0``: unbiased for KL(pi||anchor), but
    E_pi[grad k3] = grad KL(anchor||pi) (the forward KL)."""
    log_r = _log_r(logp, anchor_logp)
    return torch.expm1(log_r) - log_r


def k3_st_value(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """Value of k3, gradient of k2: ``k2 + sg(k3 - k2)``."""
    k2 = k2_value(logp, anchor_logp)
    return k2 + (k3_value(logp, anchor_logp) - k2).detach()


@register("k1", samples="policy")
def k1() -> DivergenceFn:
    return k1_value


@register("k2", samples="policy")
def k2() -> DivergenceFn:
    return k2_value


@register("k3", samples="policy")
def k3() -> DivergenceFn:
    return k3_value


@register("k3_st", samples="policy")
def k3_st() -> DivergenceFn:
    return k3_st_value


# --- tokens sampled from the anchor (generator functions f(u)) ----------------------------


def forward_kl_value(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``f(u) = u - 1 - log u``; E_anchor[f(u)] = KL(anchor||pi), unbiased value and gradient."""
    log_u = _log_u(logp, anchor_logp)
    return torch.expm1(log_u) - log_u


def js_value(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``f(u) = 0.5 (u log u - (u+1) log((u+1)/2))``; E_anchor[f(u)] = JSD(anchor, pi) <= log 2.

    Two exact rewrites, picked by region so that neither overflows, cancels nor hits
    ``0 * log 0`` (value and gradient are exactly 0 at ``u = 1``, and ``f >= 0`` survives rounding):

    * ``|log u| > 1``: ``0.5 (u log(2u/(1+u)) + log(2/(1+u)))`` with both logs as
      ``log 2 - softplus(-+log u)``; the ``u -> 0`` limit is 0.5 log 2.
    * ``|log u| <= 1``: with ``m = (1+u)/2``, ``lm = log m``, ``lw = log(u/m)`` (both via log1p),
      ``f = 0.5 (u (expm1(-lw) + lw) + (expm1(lm) - lm))``: two Bregman terms, each
      ``expm1(x) - x >= 0`` even in floating point, instead of the first form's difference of
      two O(log u) terms. Near ``u = 1`` its float32 relative accuracy is that of k3.
    """
    log_u = _log_u(logp, anchor_logp)
    far = 0.5 * (torch.exp(log_u) * (_LOG2 - F.softplus(-log_u)) + (_LOG2 - F.softplus(log_u)))
    # Clamped so the unused branch stays finite (a NaN there would leak into the gradient).
    near_u = log_u.clamp(-1.0, 1.0)
    lw = torch.log1p(torch.tanh(0.5 * near_u))  # log(2u/(1+u)), as log1p((u-1)/(u+1))
    lm = torch.log1p(0.5 * torch.expm1(near_u))  # log((1+u)/2), as log1p((u-1)/2)
    near = 0.5 * (torch.exp(near_u) * (torch.expm1(-lw) + lw) + (torch.expm1(lm) - lm))
    return torch.where(log_u.abs() <= 1.0, near, far)


def _real_in_open_unit(name: str, param: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"divergence '{name}': param {param} must be a real number, got {value!r}")
    value = float(value)
    if not (0.0 < value < 1.0):
        raise ValueError(f"divergence '{name}': param {param} must be in the open interval (0, 1), got {value}")
    return value


class _AlphaGenerator(torch.autograd.Function):
    """``f(u)`` of the alpha divergence as a function of ``x = log u``: value through ``expm1``,
    gradient from its exact closed form ``f'(x) = exp((1-a) x) * expm1(a x) / a``.

    Autograd of the ``expm1`` value form would give ``(1-a) ((expm1((1-a) x) + 1) - (expm1(x) + 1)) / (a (a-1))``:
    ``expm1(y) + 1`` loses float32 relative precision once ``exp(y)`` is far below 1 (about 1e-4
    relative error, and exactly 0 past ``y < -17``), and the difference cancels near ``x = 0``. The
    closed form is a product of two relatively exact factors (``exp`` and ``expm1``), exactly 0 at
    ``x = 0``. It is evaluated in float64 and rounded to the input's dtype: in float32 the exponent
    ``(1-a) x`` alone would carry an absolute rounding error up to ``|(1-a) x| * 1.2e-7`` (about 1e-5
    relative in the result near the overflow bound), in float64 the float32 gradient is correctly
    rounded wherever it is representable. [B, R] elements: the cost is nil. The backward is written
    in differentiable torch ops, so double backward works too."""

    @staticmethod
    def forward(ctx, log_u: torch.Tensor, alpha: float) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(log_u)
        ctx.alpha = alpha
        one_minus = 1.0 - alpha
        return (torch.expm1(one_minus * log_u) - one_minus * torch.expm1(log_u)) / (alpha * (alpha - 1.0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (log_u,) = ctx.saved_tensors
        a = ctx.alpha
        x = log_u.double()
        return grad * (torch.exp((1.0 - a) * x) * torch.expm1(a * x) / a).to(log_u.dtype), None


def alpha_value(logp: torch.Tensor, anchor_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """``f(u) = (u^(1-alpha) - (1-alpha) u - alpha) / (alpha (alpha-1))``.

    E_anchor[f(u)] = (1 - sum pi^(1-alpha) anchor^alpha) / (alpha (1-alpha)); tends to
    KL(pi||anchor) as alpha -> 0 and KL(anchor||pi) as alpha -> 1. The value is written with ``expm1`` as
    ``(expm1((1-alpha) log u) - (1-alpha) expm1(log u)) / (alpha (alpha-1))`` so the numerator
    does not cancel catastrophically near ``u = 1`` and is exactly 0 (value and gradient) there; the
    gradient with respect to ``log u`` is the closed form ``u^(1-alpha) (u^alpha - 1) / alpha``
    (``_AlphaGenerator``), exact in float32.
    """
    return _AlphaGenerator.apply(_log_u(logp, anchor_logp), float(alpha))


def tv_value(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """``f(u) = 0.5 |u - 1|``; E_anchor[f(u)] = TV(anchor, pi) in [0, 1]."""
    return 0.5 * torch.expm1(_log_u(logp, anchor_logp)).abs()


@register("forward_kl", samples="anchor")
def forward_kl() -> DivergenceFn:
    return forward_kl_value


@register("js", samples="anchor")
def js() -> DivergenceFn:
    return js_value


@register("alpha", samples="anchor")
def alpha(alpha: float = 0.2) -> DivergenceFn:
    a = _real_in_open_unit("alpha", "alpha", alpha)

    def alpha_divergence(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
        return alpha_value(logp, anchor_logp, a)

    return alpha_divergence


@register("tv", samples="anchor")
def tv() -> DivergenceFn:
    return tv_value
