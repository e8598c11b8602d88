"""Names of environments, tools and tool-call parsers: ``builtin:<name>`` or ``module:Class``.

``builtin:<name>`` is a class registered in ``ENVIRONMENTS`` / ``TOOLS`` / ``PARSERS`` (the
``rlplat.registry.Registry`` every other component uses); ``module:Class`` any importable class,
resolved by ``rlplat.rewards.resolve_callable`` as ``module:function`` rewards are (module, attribute
and signature checked, each failure a ``ConfigError`` naming the key). ``make`` builds the instance
from ``params`` (keyword arguments of the class), so config validation fails on a bad name, a class
without the needed methods, or params the class does not take, before anything runs.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence

from rlplat.config.errors import ConfigError
from rlplat.registry import Registry
from rlplat.rewards import resolve_callable

BUILTIN = "builtin:"

ENVIRONMENTS: Registry[type] = Registry("environment")
TOOLS: Registry[type] = Registry("tool")
PARSERS: Registry[type] = Registry("tool-call parser")

# The methods an object of each registry must have.
METHODS = {ENVIRONMENTS: ("reset", "step"), TOOLS: ("run", "schema"), PARSERS: ("parse", "format_results")}


def resolve(spec: str, key: str, registry: Registry) -> type:
    """The class ``spec`` names: ``builtin:<name>`` in ``registry``, or ``module:Class``."""
    builtins = ", ".join(BUILTIN + name for name in registry.names())
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{key} must be 'builtin:<name>' ({builtins}) or 'module:Class', got {spec!r}")
    if spec.startswith(BUILTIN):
        name = spec[len(BUILTIN):]
        if name not in registry:
            raise ConfigError(f"{key}='{spec}': no built-in {registry.kind} '{name}'; built-in: {builtins}")
        return registry.get(name)
    if ":" not in spec:
        raise ConfigError(f"{key}='{spec}' is neither 'builtin:<name>' ({builtins}) nor 'module:Class'")
    cls = resolve_callable(spec, key, (), columns=True)
    if not isinstance(cls, type):
        raise ConfigError(f"{key}='{spec}' is a {type(cls).__name__}, not a class")
    return cls


def make(spec: str, params: Optional[Mapping[str, Any]], key: str, registry: Registry) -> Any:
    """An instance of the class ``spec`` names, built as ``Class(**params)``."""
    cls = resolve(spec, key, registry)
    lacking = [m for m in METHODS[registry] if not callable(getattr(cls, m, None))]
    if lacking:
        raise ConfigError(f"{key}='{spec}': {cls.__name__} has no {' or '.join(lacking)} method, so it is not a "
                          f"{registry.kind} (needs {', '.join(METHODS[registry])})")
    params = dict(params or {})
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as exc:
        raise ConfigError(f"{key}='{spec}': {cls.__name__} does not take params {sorted(params)}: {exc}") from None
    try:
        return cls(**params)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{key}='{spec}' with params {params}: {exc}") from None


def make_env(spec: str, params: Optional[Mapping[str, Any]] = None, key: str = "rollout.env") -> Any:
    """The environment ``spec`` names, built with ``params``."""
    return make(spec, params, key, ENVIRONMENTS)


def env_params(params: Optional[Mapping[str, Any]], tools: Sequence[Any]) -> dict:
    """A run's environment params: ``rollout.env.params`` plus ``tools=rollout.tools`` when tools are
    given (the environment must take them). Both places naming the tools is a ``ConfigError``."""
    out = dict(params or {})
    if tools:
        if "tools" in out:
            raise ConfigError("rollout.tools and rollout.env.params.tools are both set; give the tools once")
        out["tools"] = list(tools)
    return out


def make_tool(entry: Any, key: str = "rollout.tools") -> Any:
    """A tool from ``"builtin:calc"`` or ``{"name": "builtin:python", "params": {...}}``."""
    if isinstance(entry, str):
        return make(entry, None, key, TOOLS)
    if isinstance(entry, Mapping) and set(entry) <= {"name", "params"} and "name" in entry:
        return make(entry["name"], entry.get("params"), f"{key}.name", TOOLS)
    raise ConfigError(f"{key} must be a tool name or {{name: ..., params: {{...}}}}, got {entry!r}")


def make_tools(entries: Sequence[Any], key: str = "rollout.tools") -> list:
    return [make_tool(entry, f"{key}[{i}]") for i, entry in enumerate(entries)]


def make_parser(spec: str, key: str = "parser") -> Any:
    return make(spec, None, key, PARSERS)


__all__ = ["BUILTIN", "ENVIRONMENTS", "env_params", "PARSERS", "TOOLS", "make", "make_env", "make_parser", "make_tool", "make_tools", "resolve"]
