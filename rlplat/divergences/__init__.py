"""Pluggable divergence terms D(pi, anchor): one registry of estimator factories.

Every entry is a *factory*: ``get(name, **params)`` calls it with the params and returns
the estimator ``fn``. Two call shapes exist, told apart by ``info(name)``:

* ``info(name) == "policy"`` (k1, k2, k3, k3_st) and ``"anchor"`` (forward_kl, js, alpha, tv):
  ``fn(logp, anchor_logp) -> values``. ``logp`` and ``anchor_logp`` are log-probabilities (nats)
  of the *sampled* tokens, any shape ``[...]`` (usually ``[B, R]``), equal shapes; ``values`` has
  that same shape, one value per token. "policy" estimators assume the tokens were sampled
  from pi (on-policy rollouts); "anchor" estimators assume they were sampled from the anchor
  (e.g. DPH-RL's stored pi_0 samples).
* ``info(name) == "full"`` (full_forward_kl, full_reverse_kl, full_jsd):
  ``fn(logits, anchor_logits) -> values``, logits ``[..., V]``, values ``[...]``: the exact
  divergence between the two next-token distributions at each position, computed in chunks.
  ``sinkhorn`` (SinKD) has the same call shape but couples the positions: its values are each
  position's share of one batch-wise transport cost (``rlplat/divergences/sinkhorn.py``).
  ``rlplat.divergences.topk`` evaluates the per-position ones against a teacher's top-k.

All estimators are differentiable in their first argument only; the anchor is detached.
Adding one::

    @register("my_div", samples="policy")
    def my_div(scale: float = 1.0):
        def fn(logp, anchor_logp):
            return scale * (logp - anchor_logp.detach()) ** 2
        return fn

Unknown names raise ``KeyError`` listing the registered names; unknown params or bad param
values raise ``ValueError`` naming the param.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlplat.registry import Registry

DivergenceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Factory = Callable[..., DivergenceFn]

# Which samples an estimator assumes; the loss/validation code relies on this.
SAMPLES = ("policy", "anchor", "full")


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    samples: str


_REGISTRY: Registry[_Entry] = Registry("divergence")


def register(name: str, samples: str = "policy") -> Callable[[Factory], Factory]:
    """Decorator adding the factory ``fn(**params) -> estimator`` under ``name``.

    ``samples`` says which samples the estimator assumes: one of ``SAMPLES``.
    A duplicate name raises ``ValueError``. Returns the factory unchanged.
    """
    if samples not in SAMPLES:
        raise ValueError(f"divergence '{name}': samples must be one of {SAMPLES}, got {samples!r}")

    def deco(factory: Factory) -> Factory:
        if not callable(factory):
            raise ValueError(f"divergence '{name}': the registered object must be a factory function")
        _REGISTRY.register(name)(_Entry(factory, samples))
        return factory

    return deco


def get(name: str, **params: Any) -> DivergenceFn:
    """The estimator registered as ``name``, built with ``params`` (factory defaults otherwise)."""
    entry = _REGISTRY.get(name)
    accepted = _param_names(entry.factory)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"divergence '{name}' got unknown param(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) if accepted else '(none)'}"
        )
    return entry.factory(**params)


def names() -> list[str]:
    """All registered divergence names, sorted."""
    return _REGISTRY.names()


def info(name: str) -> str:
    """Which samples the estimator ``name`` assumes: "policy", "anchor" or "full"."""
    return _REGISTRY.get(name).samples


def params(name: str) -> dict[str, Any]:
    """The params the factory of ``name`` accepts, with their defaults (``inspect.Parameter.empty`` if none)."""
    factory = _REGISTRY.get(name).factory
    sig = inspect.signature(factory)
    return {p: sig.parameters[p].default for p in _param_names(factory)}


def _param_names(factory: Factory) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(factory).parameters.values() if p.kind in kinds]


# Imported last: these modules register the built-ins through ``register`` above.
from rlplat.divergences import full, per_token, sinkhorn  # noqa: E402,F401

__all__ = ["DivergenceFn", "SAMPLES", "register", "get", "names", "info", "params"]
