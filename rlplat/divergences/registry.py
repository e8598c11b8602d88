"""The divergence registry itself (``register``, ``get``, ``info``, ``params``, ``names``): its own module
so the estimator modules register into it without importing the package that imports them.
The package docstring (``rlplat.divergences``) describes the call shapes."""
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
