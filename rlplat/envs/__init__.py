"""Environments and tools for multi-turn episodes: the pure library (no Ray, vLLM or DeepSpeed).

- ``protocol``: ``Environment`` (``reset(row) -> str``, ``step(turn) -> StepResult``), ``StepResult``,
  the per-step counters ``step_info`` (tool_calls, tool_errors, tool_timeouts, truncated).
- ``registry``: ``ENVIRONMENTS`` / ``TOOLS`` / ``PARSERS``, names ``builtin:<name>`` or
  ``module:Class``; ``make_env``, ``make_tool(s)``, ``make_parser``.
- ``tools``: ``Tool`` (a class with an OpenAI-style function schema), ``Toolbox`` (argument checks,
  errors as observations, output cap), ``ToolCall``, ``ToolResult``; ``schema``: the checks.
- ``parsers``: ``builtin:hermes`` (``<tool_call>{json}</tool_call>``) and ``builtin:tiny``
  (``<calc>38*45</calc>``).
- Tools ``builtin:calc`` (``calc``) and ``builtin:python`` (``python_tool``, in ``sandbox``).
- Environments ``builtin:tools`` (generic) and ``builtin:calc_arithmetic`` (``tool_env``),
  ``builtin:guess_number`` (``guess``).

docs/envs.md: how to write an environment and a tool, and what the sandbox does and does not protect.
"""
from rlplat.envs.protocol import COUNTERS, Environment, StepResult, step_info
from rlplat.envs.registry import ENVIRONMENTS, PARSERS, TOOLS, make_env, make_parser, make_tool, make_tools
from rlplat.envs.tools import Tool, ToolCall, ToolResult, Toolbox
from rlplat.envs import calc, guess, parsers, python_tool, tool_env  # noqa: E402,F401  (register the built-ins)

__all__ = ["COUNTERS", "ENVIRONMENTS", "Environment", "PARSERS", "StepResult", "TOOLS", "Tool", "ToolCall",
           "ToolResult", "Toolbox", "make_env", "make_parser", "make_tool", "make_tools", "step_info"]
