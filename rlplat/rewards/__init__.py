"""Reward functions: ``fn(response: str, answer: str | None, prompt: str) -> float``.

``reward.fn`` is a registered name (``REWARDS.names()``: ``arithmetic``, ``math``) or
``module:function`` (any importable callable with that signature). ``resolve_reward`` checks a
spec completely - import, attribute, callable, signature - so config validation rejects a bad
spec before Ray starts. Running the functions (timeouts, errors) is ``rlplat.rewards.runner``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable, Optional

from rlplat.config.errors import ConfigError
from rlplat.registry import Registry

RewardFn = Callable[[str, Optional[str], str], float]
REWARDS: Registry[RewardFn] = Registry("reward function")

from rlplat.rewards import builtin  # noqa: E402,F401  (registers the built-ins into REWARDS)


def _import_module(spec: str, module_name: str, key: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name != exc.name and not module_name.startswith(exc.name + "."):
            # The module exists but one of its own imports is missing.
            raise ConfigError(
                f"{key}='{spec}': importing module '{module_name}' failed: it needs module '{exc.name}', "
                "which is not installed"
            ) from None
        raise ConfigError(
            f"{key}='{spec}': module '{module_name}' not found (is its directory on PYTHONPATH / sys.path?)"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"{key}='{spec}': importing module '{module_name}' raised {type(exc).__name__}: {exc}"
        ) from None


def resolve_reward(spec: str, key: str = "reward.fn") -> RewardFn:
    """The callable named by ``spec``; raises ``ConfigError`` (a ``ValueError``) naming ``key``,
    the spec and what is wrong: unknown name, module not found, attribute missing, not callable,
    or a signature that cannot take ``(response, answer, prompt)``."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{key} must be a reward name or 'module:function', got {spec!r}")
    if spec in REWARDS:
        return REWARDS.get(spec)
    if ":" not in spec:
        raise ConfigError(
            f"{key}='{spec}' is neither a registered reward ({', '.join(REWARDS.names())}) "
            "nor of the form 'module:function'"
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}='{spec}': expected 'module:function' with both parts non-empty")
    obj = _import_module(spec, module_name, key)
    for part in attr.split("."):  # "module:Class.method" works too
        if not hasattr(obj, part):
            raise ConfigError(f"{key}='{spec}': module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}='{spec}': '{attr}' is a {type(obj).__name__}, not callable")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return obj
    try:
        sig.bind("response", "answer", "prompt")
    except TypeError as exc:
        raise ConfigError(
            f"{key}='{spec}': '{attr}{sig}' cannot be called as fn(response, answer, prompt): {exc}"
        ) from None
    return obj


__all__ = ["REWARDS", "RewardFn", "resolve_reward"]
