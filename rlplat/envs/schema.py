"""The JSON-schema subset of tool parameters, and the check of a call's arguments against it.

A tool's ``parameters`` is ``{"type": "object", "properties": {name: {"type": T, "description":
..., "enum": [...]}}, "required": [names]}`` with T one of ``JSON_TYPES`` (or a list of them), as
OpenAI-style function schemas and chat templates' ``tools=`` have it. Arguments are checked at the
top level only: required present, no other names (unless ``"additionalProperties": true``), each
value of its type and in its ``enum``. Nested objects and arrays are checked for their own type, not
their contents.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

# JSON type -> Python types of a decoded JSON value. bool is an int subclass, hence _NOT_BOOL.
JSON_TYPES: Dict[str, Tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}
_NOT_BOOL = {"integer", "number"}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's function-name rule


def schema_problems(name: str, parameters: Any) -> List[str]:
    """What is wrong with a tool's ``name`` and ``parameters`` (empty: nothing)."""
    problems = [] if isinstance(name, str) and _NAME.match(name) else [f"name {name!r} is not 1-64 of [A-Za-z0-9_-]"]
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        return problems + ['parameters must be {"type": "object", "properties": {...}}']
    props = parameters.get("properties", {})
    if not isinstance(props, Mapping):
        return problems + ["parameters.properties must be an object"]
    for prop, spec in props.items():
        types = _types(spec)
        if not types or not set(types) <= set(JSON_TYPES):
            problems.append(f"parameters.properties.{prop}.type must be one of {sorted(JSON_TYPES)}, got {spec!r}")
    unknown = [r for r in parameters.get("required", []) if r not in props]
    if unknown:
        problems.append(f"parameters.required names {unknown}, which are not in properties")
    return problems


def argument_problems(arguments: Mapping[str, Any], parameters: Mapping[str, Any]) -> List[str]:
    """What is wrong with ``arguments`` of a call for a tool with ``parameters`` (empty: nothing)."""
    props = parameters.get("properties", {})
    problems = [f"missing argument '{r}'" for r in parameters.get("required", []) if r not in arguments]
    if not parameters.get("additionalProperties", False):
        problems += [f"unexpected argument '{a}' (takes {', '.join(props) or 'none'})" for a in arguments if a not in props]
    for arg, value in arguments.items():
        if arg not in props:
            continue
        types = _types(props[arg])
        if not any(_is(value, t) for t in types):
            problems.append(f"argument '{arg}' must be {' or '.join(types)}, got {type(value).__name__} {value!r:.40}")
        elif "enum" in props[arg] and value not in props[arg]["enum"]:
            problems.append(f"argument '{arg}' must be one of {props[arg]['enum']}, got {value!r:.40}")
    return problems


def _types(spec: Any) -> List[str]:
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    return [kind] if isinstance(kind, str) else list(kind or [])


def _is(value: Any, json_type: str) -> bool:
    if json_type in _NOT_BOOL and isinstance(value, bool):
        return False
    return isinstance(value, JSON_TYPES[json_type])


__all__ = ["JSON_TYPES", "argument_problems", "schema_problems"]
