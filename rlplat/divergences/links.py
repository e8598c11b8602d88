"""Reward-policy links of f-divergence constraints: ``f'(u)`` as a function of ``log u``.

Under ``max E[r] - beta D_f(pi || pi_ref)`` with ``D_f(pi || pi_ref) = E_{pi_ref}[f(pi / pi_ref)]``,
the optimum satisfies ``r(x, y) = beta f'(u) + const(x)``, ``u = pi(y|x) / pi_ref(y|x)``
(f-DPO, arXiv 2309.16240), so a Bradley-Terry pair's loss needs only ``f'`` (``rlplat.losses.fdpo_loss``).
Each entry maps ``log u`` (any shape, nats; the sequence log-ratio) to ``f'(u)`` of the same shape,
computed in log space so that it is finite for ``|log u|`` up to 50 in float32:

============  ===============================================  ==============================
name          generator f(u)                                   f'(u)
============  ===============================================  ==============================
reverse_kl    u log u  (DPO)                                   log u + 1
forward_kl    -log u                                           -1/u = -exp(-log u)
js            u log u - (u+1) log((u+1)/2)                     log(2u/(1+u)) = log 2 + logsigmoid(log u)
alpha         (u^(1-a) - (1-a) u - a) / (a (a-1)), 0 < a < 1   (1 - u^(-a)) / a = -expm1(-a log u) / a
                                                                 (its gradient u^(-a) taken from exp)
============  ===============================================  ==============================

Conventions: JS here is the plain generator, without the 0.5 of the per-token ``js`` estimator
(``rlplat.divergences.per_token``; a factor on f' only rescales beta). Additive constants of f'
(reverse KL's +1) are kept: they cancel in a pair's difference. ``alpha -> 0`` tends to reverse
KL's link (log u), ``alpha -> 1`` to forward KL's up to a constant (1 - 1/u).

Adding a link is one function plus one ``@LINKS.register`` line; parameters are keyword arguments.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F

from rlplat.divergences.per_token import _real_in_open_unit
from rlplat.registry import Registry

Link = Callable[..., torch.Tensor]
LINKS: Registry[Link] = Registry("f-DPO divergence")


@LINKS.register("reverse_kl")
def reverse_kl(log_u: torch.Tensor) -> torch.Tensor:
    return log_u + 1.0


@LINKS.register("forward_kl")
def forward_kl(log_u: torch.Tensor) -> torch.Tensor:
    return -torch.exp(-log_u)


@LINKS.register("js")
def js(log_u: torch.Tensor) -> torch.Tensor:
    return math.log(2.0) + F.logsigmoid(log_u)


class _AlphaLink(torch.autograd.Function):
    """``f'(u) = (1 - u^(-a)) / a`` at ``x = log u``: value ``-expm1(-a x) / a`` (exact near
    ``x = 0``), gradient ``exp(-a x)`` from ``exp`` itself. Autograd of the ``expm1`` form would take
    it as ``expm1(-a x) + 1``, which loses float32 precision once ``u^(-a)`` is far below 1 (about
    1e-4 relative error) and is exactly 0 once ``a x > 17``. Evaluated in float64 and rounded to
    the input's dtype, so that the float32 rounding of the exponent ``a x`` (up to ``|a x| * 1.2e-7``
    absolute) does not reach the result: the float32 gradient is correctly rounded."""

    @staticmethod
    def forward(ctx, log_u: torch.Tensor, a: float) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(log_u)
        ctx.a = a
        return -torch.expm1(-a * log_u) / a

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (log_u,) = ctx.saved_tensors
        return grad * torch.exp(-ctx.a * log_u.double()).to(log_u.dtype), None


@LINKS.register("alpha")
def alpha(log_u: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    a = _real_in_open_unit("alpha", "alpha", alpha)
    return _AlphaLink.apply(log_u, a)


def link(name: str, log_u: torch.Tensor, **params: float) -> torch.Tensor:
    """``f'(u)`` of divergence ``name`` at ``log u``; each of ``params`` reaches the link only if
    it declares a parameter of that name (``alpha`` for the alpha link)."""
    fn = LINKS.get(name)
    accepted = inspect.signature(fn).parameters
    return fn(log_u, **{k: v for k, v in params.items() if k in accepted})
