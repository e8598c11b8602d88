"""The generic tool environment: a task row, tools, a call format and a final-answer reward.

``builtin:tools`` covers the common case with no environment class of its own: the first observation
is the row's prompt; a model turn that makes tool calls gets their outputs as the observation
(reward 0, not done); the first turn without a call is the final answer, rewarded by a reward
function of ``rlplat.rewards`` (``fn(turn, answer, prompt, **columns)``, a registered name or
``module:function``) and ending the episode. How many turns an episode may take is the runtime's
cap (``rollout.max_turns``), not the environment's.

``builtin:calc_arithmetic`` is the built-in tool task: ``calc``, the tiny format and the
``arithmetic`` reward, for rows such as ``rlplat.tasks.ArithmeticTask(ops=("*",))``'s
(``"38*45="`` -> ``"1710"``), products the tiny policy cannot work out in its head.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from rlplat.envs.protocol import Environment, Row, StepResult, step_info
from rlplat.envs.registry import ENVIRONMENTS, make_parser, make_tools
from rlplat.envs.tools import Toolbox
from rlplat.rewards import accepted_columns, resolve_reward, select_columns


@ENVIRONMENTS.register("tools")
class ToolEnv(Environment):
    """tools: tool names or ``{name, params}`` (``rlplat.envs.registry.make_tool``); parser: a parser
    name; reward: a reward function's name; max_output_chars: longest tool output the model sees."""

    def __init__(self, tools: Sequence[Any] = ("builtin:calc",), parser: str = "builtin:hermes",
                 reward: str = "arithmetic", max_output_chars: int = 1000) -> None:
        self.toolbox = Toolbox(make_tools(tools, "params.tools"), max_output_chars)
        self.parser = make_parser(parser, "params.parser")
        self.reward_fn = resolve_reward(reward, "params.reward")
        self._columns = accepted_columns(self.reward_fn)
        self._row: Optional[Mapping[str, Any]] = None

    def reset(self, row: Row) -> str:
        if "prompt" not in row:
            raise KeyError(f"{type(self).__name__}.reset: the row has no 'prompt' (keys: {sorted(row)})")
        self._row = row
        return str(row["prompt"])

    def step(self, model_turn: str) -> StepResult:
        if self._row is None:
            raise RuntimeError(f"{type(self).__name__}.step before reset")
        calls = self.parser.parse(model_turn)
        if not calls:
            row = self._row
            columns = select_columns(self._columns, {k: v for k, v in row.items() if k not in ("prompt", "answer")})
            reward = self.reward_fn(model_turn, row.get("answer"), str(row["prompt"]), **columns)
            return StepResult("", float(reward), True, step_info())
        results = [self.toolbox.call(call) for call in calls]
        info = step_info(tool_calls=len(results), tool_errors=sum(r.error for r in results),
                         tool_timeouts=sum(r.timeout for r in results), truncated=sum(r.truncated for r in results))
        return StepResult(self.parser.format_results([r.text for r in results]), 0.0, False, info)


@ENVIRONMENTS.register("calc_arithmetic")
class CalcArithmetic(ToolEnv):
    """The tool task of the built-in models (module docstring)."""

    def __init__(self, max_output_chars: int = 32) -> None:
        super().__init__(tools=("builtin:calc",), parser="builtin:tiny", reward="arithmetic",
                         max_output_chars=max_output_chars)


__all__ = ["CalcArithmetic", "ToolEnv"]
