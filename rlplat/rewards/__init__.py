"""Reward functions: ``fn(response: str, answer: str | None, prompt: str, **columns) -> float``.

``columns`` are the data row's other fields (``PromptRow.extra``), as TRL and verl pass them: a
function with ``**kwargs`` gets all of them, one with named parameters after ``prompt`` gets those
(``accepted_columns``), one without either gets none. Several weighted functions: ``reward.fns``
(``rlplat.rewards.spec``, ``rlplat.rewards.weighted``).

``reward.fn`` is a registered name (``REWARDS.names()``: ``arithmetic``, ``arithmetic_graded``, ``math``, ``gsm8k``,
``env``: a multi-turn episode's environment reward) or
``module:function`` (any importable callable with that signature). ``resolve_reward`` checks a
spec completely - import, attribute, callable, signature - so config validation rejects a bad
spec before Ray starts. Running the functions (timeouts, errors) is ``rlplat.rewards.runner``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Dict, FrozenSet, Optional, Sequence

from rlplat.config.errors import ConfigError
from rlplat.registry import Registry
from rlplat.rewards import builtin  # noqa: F401  (registers the built-ins into REWARDS)
from rlplat.rewards.registry import REWARDS, RewardFn


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


def _extra_required(sig: inspect.Signature, call_args: Sequence[str]) -> Dict[str, None]:
    """Required parameters after ``call_args`` that can be passed by keyword: data columns."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = list(sig.parameters.values())
    return {p.name: None for i, p in enumerate(params)
            if i >= len(call_args) and p.kind in kinds and p.default is inspect.Parameter.empty}


def resolve_callable(spec: str, key: str, call_args: Sequence[str], registry: Optional[Registry] = None,
                     columns: bool = False) -> Callable:
    """The callable named by ``spec`` (a name in ``registry`` or ``module:function``); raises
    ``ConfigError`` naming ``key``, the spec and what is wrong: unknown name, module not found,
    attribute missing, not callable, or a signature that cannot take ``call_args``. ``columns``:
    further required parameters are allowed when they can be passed by keyword (data columns)."""
    what = f"fn({', '.join(call_args)})"
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{key} must be a registered name or 'module:function', got {spec!r}")
    if registry is not None and spec in registry:
        return registry.get(spec)
    if ":" not in spec:
        known = f"a registered {registry.kind.split()[0]} ({', '.join(registry.names())}) " if registry is not None else ""
        raise ConfigError(f"{key}='{spec}' is neither {known}nor of the form 'module:function'")
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
        sig.bind(*call_args, **(_extra_required(sig, call_args) if columns else {}))
    except TypeError as exc:
        raise ConfigError(f"{key}='{spec}': '{attr}{sig}' cannot be called as {what}: {exc}") from None
    return obj


REWARD_ARGS = ("response", "answer", "prompt")


def resolve_reward(spec: str, key: str = "reward.fn") -> RewardFn:
    """A reward ``fn(response, answer, prompt, **columns) -> float``: a registered name or ``module:function``."""
    return resolve_callable(spec, key, REWARD_ARGS, REWARDS, columns=True)


def accepted_columns(fn: Callable) -> Optional[FrozenSet[str]]:
    """The data columns ``fn`` takes as keywords: None for all of them (``**kwargs``), else the
    names of its parameters after (response, answer, prompt) (empty: it takes none)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature: pass nothing beyond the three
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params[len(REWARD_ARGS):] if p.kind in kinds)


def select_columns(columns: Optional[FrozenSet[str]], extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The keyword arguments a function with ``accepted_columns`` ``columns`` gets from a row's ``extra``."""
    extra = extra or {}
    if columns is None:
        return {k: v for k, v in extra.items() if k not in REWARD_ARGS}  # never a second value for an argument
    return {k: extra[k] for k in columns if k in extra}


def resolve_judge(spec: str, key: str = "algorithm.nash_mp.judge") -> Callable:
    """A pairwise judge ``fn(prompt, response_a, response_b, answer) -> P(a > b)``: a registered name
    (``rlplat.rewards.judges.JUDGES``: ``checker``, ``style_rps``) or ``module:function``."""
    from rlplat.rewards.judges import JUDGES

    return resolve_callable(spec, key, ("prompt", "response_a", "response_b", "answer"), JUDGES)


__all__ = ["REWARDS", "REWARD_ARGS", "RewardFn", "accepted_columns", "resolve_callable", "resolve_judge", "resolve_reward",
           "select_columns"]
