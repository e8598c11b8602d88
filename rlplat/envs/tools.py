"""Tools: a class carrying an OpenAI-style function schema and a ``run``; the ``Toolbox`` that calls them.

A tool subclasses ``Tool``: class attributes ``name``, ``description``, ``parameters`` (a JSON
schema, ``rlplat.envs.schema``) and ``run(**arguments) -> str | ToolResult``. ``schema()`` is
``{"type": "function", "function": {"name", "description", "parameters"}}``, the form
``tokenizer.apply_chat_template(messages, tools=[...])`` renders for real models.

``Toolbox.call`` never raises for what a model wrote: a malformed call, an unknown tool, missing /
extra / mistyped arguments, or a tool that raises each come back as a ``ToolResult`` with
``error=True`` and a text that says what was wrong (the model sees it). Outputs are cut to
``max_output_chars`` characters, with a note of how many were dropped.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Dict, List, Mapping, Sequence, Union

from rlplat.envs.schema import argument_problems, schema_problems


@dataclass(frozen=True)
class ToolCall:
    """One call as a parser read it. arguments: a dict (JSON formats), or a single text that fills the
    tool's only parameter (compact formats such as the tiny model's). error: non-empty when the text
    was not a well-formed call (then name may be empty)."""

    name: str
    arguments: Union[Dict[str, Any], str]
    error: str = ""


@dataclass(frozen=True)
class ToolResult:
    """text: what the model sees. error: the call failed. timeout: it was stopped for time.
    truncated: ``text`` was cut to the maximum length."""

    text: str
    error: bool = False
    timeout: bool = False
    truncated: bool = False


class Tool(ABC):
    """Base of every tool; see the module docstring."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[Dict[str, Any]]

    def schema(self) -> Dict[str, Any]:
        """The OpenAI-style function schema of this tool (for ``apply_chat_template(tools=...)``)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    @abstractmethod
    def run(self, **arguments: Any) -> Union[str, ToolResult]:
        """Do the call; ``arguments`` have been checked against ``parameters``. Raise on failure."""


def _failed(text: str) -> ToolResult:
    return ToolResult(f"error: {text}", error=True)


class Toolbox:
    """The tools of an environment, by name. ``max_output_chars``: longest tool text the model sees."""

    def __init__(self, tools: Sequence[Tool], max_output_chars: int = 1000) -> None:
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be >= 1, got {max_output_chars}")
        self.max_output_chars = max_output_chars
        self._tools: Dict[str, Tool] = {}
        for tool in tools:
            name = getattr(tool, "name", None)
            problems = schema_problems(name, getattr(tool, "parameters", None))
            if not isinstance(getattr(tool, "description", None), str):
                problems.append("description must be a text")
            if problems:
                raise ValueError(f"tool {type(tool).__name__}: {'; '.join(problems)}")
            if name in self._tools:
                raise ValueError(f"two tools are named '{name}'")
            self._tools[name] = tool

    def names(self) -> List[str]:
        return list(self._tools)

    def schemas(self) -> List[Dict[str, Any]]:
        """Function schemas of the tools, in order: ``apply_chat_template(..., tools=toolbox.schemas())``."""
        return [tool.schema() for tool in self._tools.values()]

    def call(self, call: ToolCall) -> ToolResult:
        """Run one call; every failure is a ``ToolResult`` with ``error=True``."""
        return self._cut(self._run(call))

    def _run(self, call: ToolCall) -> ToolResult:
        if call.error:
            return _failed(call.error)
        tool = self._tools.get(call.name)
        if tool is None:
            return _failed(f"unknown tool '{call.name}'; tools: {', '.join(self._tools)}")
        arguments = self._arguments(tool, call.arguments)
        if isinstance(arguments, ToolResult):
            return arguments
        try:
            out = tool.run(**arguments)
        except Exception as exc:  # the tool's failure is the model's observation, never the worker's crash
            return _failed(f"{type(exc).__name__}: {exc}")
        if isinstance(out, str):
            return ToolResult(out)
        if isinstance(out, ToolResult):
            return out
        return _failed(f"tool '{call.name}' returned {type(out).__name__}, not text")

    @staticmethod
    def _arguments(tool: Tool, arguments: Union[Mapping[str, Any], str]) -> Union[Dict[str, Any], ToolResult]:
        """The keyword arguments of the call, or the error result of bad ones."""
        if isinstance(arguments, str):  # a compact format's single text: the tool's only parameter
            props = list(tool.parameters.get("properties", {}))
            if len(props) != 1:
                return _failed(f"tool '{tool.name}' takes {len(props)} arguments ({', '.join(props)}), not one text")
            arguments = {props[0]: arguments}
        problems = argument_problems(arguments, tool.parameters)
        if problems:
            return _failed(f"tool '{tool.name}': {'; '.join(problems)}")
        return dict(arguments)

    def _cut(self, result: ToolResult) -> ToolResult:
        dropped = len(result.text) - self.max_output_chars
        if dropped <= 0:
            return result
        return replace(result, text=f"{result.text[:self.max_output_chars]}...[{dropped} more characters]", truncated=True)


__all__ = ["Tool", "ToolCall", "ToolResult", "Toolbox"]
