"""Transformations of calibrated rewards (InfAlign-CTRL step 2, docs/algorithms.md#infalign-ctrl).

Every transformation has the signature ``fn(c: Float[...], **params) -> Float[...]`` (elementwise),
where ``c`` is a calibrated reward in [0, 1] (``rlplat.rewards.calibration.calibrate``). The result
is the reward the KL-regularised RL step maximises: ``E[Phi(c)] - beta KL(pi || pi_ref)``.

| name | Phi(c) | meant for decoding with |
|---|---|---|
| ``identity`` | ``c`` | plain sampling (calibration-only RL) |
| ``bon`` | ``exp(t c)`` | best-of-N: the response with the highest reward of N |
| ``won`` | ``-exp(-t c)`` | worst-of-N (best-of-N jailbreaking): the lowest reward of N counts |

Both exponentials are strictly increasing in ``c``: ``bon`` rewards the top of the reference
distribution more than proportionally (what a best-of-N decoder picks), ``won`` penalises the bottom
(what a worst-of-N adversary finds).

``t > 0`` is an explicit parameter with no default. InfAlign (arXiv 2412.19792) gives a rule for
choosing t from N (its section 4); that text could not be read when this was written, so the rule is
NOT implemented here and no value of it is claimed. ``rlplat.rewards.ctrl_analysis.best_t`` computes
a stated substitute (the t whose KL-regularised optimum has the highest best/worst-of-N win rate at a
given KL, in the idealised model where c is exactly Uniform[0, 1] under pi_ref).

Adding a transformation is one function plus one ``@register("name")`` line.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

from rlplat.registry import Registry

TransformFn = Callable[..., torch.Tensor]
REGISTRY: Registry[TransformFn] = Registry("reward transformation")

register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


def _check_t(t: float, name: str) -> float:
    # bool is an int: `t=True` is a config mistake, not t = 1.
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"reward transformation '{name}': parameter t must be a finite number > 0, got {t!r}")
    return float(t)


def _finite(out: torch.Tensor, name: str, t: float) -> torch.Tensor:
    if not torch.isfinite(out).all():
        raise ValueError(f"reward transformation '{name}': parameter t={t} overflows {out.dtype}; lower t")
    return out


@register("identity")
def identity(c: torch.Tensor) -> torch.Tensor:
    """``Phi(c) = c``: the calibrated reward itself."""
    return c


@register("bon")
def bon(c: torch.Tensor, t: float) -> torch.Tensor:
    """Best-of-N: ``Phi(c) = exp(t c)``, in [1, exp(t)]."""
    t = _check_t(t, "bon")
    return _finite(torch.exp(t * c), "bon", t)


@register("won")
def won(c: torch.Tensor, t: float) -> torch.Tensor:
    """Worst-of-N (best-of-N jailbreaking): ``Phi(c) = -exp(-t c)``, in [-1, -exp(-t)]."""
    t = _check_t(t, "won")
    return -torch.exp(-t * c)


def check_params(name: str, params: dict) -> None:
    """Raise ``ValueError`` unless ``params`` are exactly the transformation's parameters, with
    values it accepts on the whole of [0, 1] (in float32); every error names the transformation and the parameter."""
    fn = get(name)
    signature = inspect.signature(fn).parameters
    accepted = [p for p in signature if p != "c"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"reward transformation '{name}' has no parameter {', '.join(unknown)} "
                         f"(its parameters: {', '.join(accepted) or 'none'})")
    missing = [p for p in accepted if p not in params and signature[p].default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"reward transformation '{name}' needs parameter {', '.join(missing)}")
    fn(torch.tensor([0.0, 1.0]), **params)  # the parameter's own checks, and overflow at c = 1


def transform(name: str, c: torch.Tensor, **params) -> torch.Tensor:
    """``Phi_name(c; params)`` after checking ``c`` (finite, in [0, 1]) and ``params`` (``check_params``)."""
    if not torch.is_floating_point(c):
        raise ValueError(f"reward transformation '{name}': c must be a float tensor, got {c.dtype}")
    if not torch.isfinite(c).all() or bool(((c < 0) | (c > 1)).any()):
        raise ValueError(f"reward transformation '{name}': c must be calibrated rewards in [0, 1], got values "
                         f"in [{c.min().item()}, {c.max().item()}]")
    check_params(name, params)
    return get(name)(c, **params)


__all__ = ["REGISTRY", "bon", "check_params", "get", "identity", "names", "register", "transform", "won"]
