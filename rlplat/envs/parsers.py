"""Tool-call parsers: read the calls out of a model turn, and write the tools' outputs back as text.

A parser has ``parse(turn) -> [ToolCall]`` (in the order written; empty: the turn makes no call, so
it is a final answer; a malformed call is a ``ToolCall`` with ``error`` set, never an exception) and
``format_results(texts) -> str`` (the observation that answers the turn's calls, one text per call).

- ``hermes``: Hermes / Qwen2.5 / Qwen3: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  any number per turn; results as the ``<tool_response>`` blocks those chat templates put in the turn
  that answers (the runtime adds the turn's template glue).
- ``tiny``: the built-in tiny models' compact format, ``<calc>38*45</calc>``: a tag named after the
  tool around the text of its only parameter; results as ``<out>1710</out>``. Every character is
  in the models' character vocabulary (``rlplat.models.tokenizer``), nothing needs escaping inside
  an arithmetic expression, a call costs 2 * (len(name) + 2) + 1 tokens of markup (13 for ``calc``),
  and the result tag is as short as that of the call. Text from the first ``<eos>`` is ignored,
  as ``rlplat.tasks.arithmetic.score`` ignores it.
"""
from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from typing import List, Sequence

from rlplat.envs.registry import PARSERS
from rlplat.envs.tools import ToolCall
from rlplat.tasks.arithmetic import EOS_TEXT


class ToolCallParser(ABC):
    """Base of the built-in parsers; see the module docstring."""

    @abstractmethod
    def parse(self, turn: str) -> List[ToolCall]:
        """The calls written in ``turn``, in order."""

    @abstractmethod
    def format_results(self, texts: Sequence[str]) -> str:
        """The observation answering a turn's calls, given each call's result text."""


def _malformed(message: str) -> ToolCall:
    return ToolCall("", {}, error=message)


@PARSERS.register("hermes")
class Hermes(ToolCallParser):
    CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
    OPEN = "<tool_call>"

    def parse(self, turn: str) -> List[ToolCall]:
        calls, end = [], 0
        for match in self.CALL.finditer(turn):
            calls.append(self._call(match.group(1)))
            end = match.end()
        if self.OPEN in turn[end:]:  # cut off by the length limit, or the model forgot to close it
            calls.append(_malformed("<tool_call> is not closed by </tool_call>"))
        return calls

    @staticmethod
    def _call(body: str) -> ToolCall:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            return _malformed(f"the tool call is not valid JSON ({exc})")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return _malformed('a tool call is a JSON object {"name": "...", "arguments": {...}}')
        arguments = obj.get("arguments", {})
        if not isinstance(arguments, dict):
            return _malformed(f"'arguments' of tool '{obj['name']}' must be a JSON object, got {type(arguments).__name__}")
        return ToolCall(obj["name"], arguments)

    def format_results(self, texts: Sequence[str]) -> str:
        return "\n".join(f"<tool_response>\n{text}\n</tool_response>" for text in texts)


@PARSERS.register("tiny")
class Tiny(ToolCallParser):
    CALL = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>(.*?)</\1>", re.S)
    OPEN = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")

    def parse(self, turn: str) -> List[ToolCall]:
        turn = turn.split(EOS_TEXT, 1)[0]
        calls, end = [], 0
        for match in self.CALL.finditer(turn):
            calls += self._unclosed(turn[end:match.start()])
            calls.append(ToolCall(match.group(1), match.group(2)))
            end = match.end()
        return calls + self._unclosed(turn[end:])

    def _unclosed(self, text: str) -> List[ToolCall]:
        return [_malformed(f"<{m.group(1)}> is not closed by </{m.group(1)}>") for m in self.OPEN.finditer(text)]

    def format_results(self, texts: Sequence[str]) -> str:
        return "".join(f"<out>{text}</out>" for text in texts)


__all__ = ["Hermes", "Tiny", "ToolCallParser"]
