"""``builtin:guess_number``: a guessing game without tools, where the observations carry the information.

The row's ``answer`` is the secret integer, its ``prompt`` what the model sees first. Each model
turn's first integer is a guess (text from the first ``<eos>`` on is ignored): the observation is
``"higher"`` when the secret is above it, ``"lower"`` when below, ``"a number"`` when the turn has
none. Naming the secret ends the episode with reward 1.0; every other step has reward 0. Binary
search finds a secret of 0-99 in 7 guesses; the runtime's turn cap ends unsuccessful episodes.
"""
from __future__ import annotations

import re
from typing import Optional

from rlplat.envs.protocol import Environment, Row, StepResult, step_info
from rlplat.envs.registry import ENVIRONMENTS
from rlplat.tasks.arithmetic import EOS_TEXT

_INTEGER = re.compile(r"-?\d+")
HINTS = {True: "higher", False: "lower"}  # secret > guess -> "higher"
NO_GUESS = "a number"


@ENVIRONMENTS.register("guess_number")
class GuessNumber(Environment):
    def __init__(self) -> None:
        self._secret: Optional[int] = None

    def reset(self, row: Row) -> str:
        answer = str(row.get("answer", "")).strip()
        if not re.fullmatch(r"-?\d+", answer):
            raise ValueError(f"GuessNumber.reset: the row's answer must be the secret integer, got {row.get('answer')!r}")
        self._secret = int(answer)
        return str(row["prompt"])

    def step(self, model_turn: str) -> StepResult:
        if self._secret is None:
            raise RuntimeError("GuessNumber.step before reset")
        match = _INTEGER.search(model_turn.split(EOS_TEXT, 1)[0])
        if match is None:
            return StepResult(NO_GUESS, 0.0, False, step_info())
        guess = int(match.group())
        if guess == self._secret:
            return StepResult("", 1.0, True, step_info())
        return StepResult(HINTS[self._secret > guess], 0.0, False, step_info())


__all__ = ["GuessNumber", "HINTS", "NO_GUESS"]
