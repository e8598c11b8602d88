"""The ``python`` tool: runs a program the model wrote in ``rlplat.envs.sandbox`` and returns what it printed.

The program runs as ``python -I -c CODE`` with this interpreter (its standard library and installed
packages readable, nothing of the caller's environment), under the ``Limits`` given as params
(``{"name": "builtin:python", "params": {"wall_s": 5, "memory_mb": 256}}``). The text is stdout,
then stderr, then, when the program was stopped, which limits it hit, or its exit status when not 0. A non-zero exit or a limit
makes the call an error; the wall-clock and CPU limits make it a timeout too.
"""
from __future__ import annotations

import sys
from dataclasses import fields
from typing import Any

from rlplat.envs.registry import TOOLS
from rlplat.envs.sandbox import Limits, Sandbox
from rlplat.envs.tools import Tool, ToolResult

TIME_LIMITS = frozenset({"timeout", "cpu"})


@TOOLS.register("python")
class Python(Tool):
    """Params: the fields of ``rlplat.envs.sandbox.Limits``."""

    name = "python"
    description = "Run a Python 3 program and return what it prints (stdout, then stderr). No network, no input."
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "a complete program; print the results you need"}},
        "required": ["code"],
    }

    def __init__(self, **limits: Any) -> None:
        unknown = sorted(set(limits) - {f.name for f in fields(Limits)})
        if unknown:
            raise ValueError(f"unknown sandbox limits {unknown}; limits: {', '.join(f.name for f in fields(Limits))}")
        self.sandbox = Sandbox(Limits(**limits))

    def run(self, code: str) -> ToolResult:
        # The interpreter's prefixes may sit under a directory closed to the sandbox's uid (/root).
        result = self.sandbox.run([sys.executable, "-I", "-c", code], expose=(sys.base_prefix, sys.prefix))
        parts = [result.stdout.rstrip("\n"), result.stderr.rstrip("\n")]
        if result.error:
            parts.append(f"error: {result.error}")
        elif result.limits:
            parts.append(f"error: stopped at the {' and '.join(result.limits)} limit")
        elif result.exit_code != 0:
            parts.append(f"error: exit status {result.exit_code}")
        text = "\n".join(part for part in parts if part) or "(no output)"
        return ToolResult(text, error=not result.ok, timeout=bool(TIME_LIMITS & set(result.limits)))


__all__ = ["Python"]
