"""Built-in reward functions. ``arithmetic``, ``math`` and ``gsm8k`` return 1.0 (correct) or 0.0 (wrong),
``arithmetic_graded`` a value in [0, 1]; each raises when the
gold answer itself is unusable - a data problem the runner counts as an error, never a 0."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Optional

from rlplat.rewards.registry import REWARDS

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _need_answer(name: str, answer: Optional[str]) -> str:
    if answer is None:
        raise ValueError(f"reward '{name}' needs a gold answer but the prompt row has none (data.answer_key)")
    return answer


@REWARDS.register("arithmetic")
def arithmetic_reward(response: str, answer: Optional[str], prompt: str) -> float:
    """Exact numeric match of the first number in ``response`` (``rlplat.tasks.arithmetic.score``)."""
    from rlplat.tasks.arithmetic import score

    return float(score(response, _need_answer("arithmetic", answer)))


@REWARDS.register("math")
def math_reward(response: str, answer: Optional[str], prompt: str) -> float:
    """math-verify equivalence of ``response`` (its last ``\\boxed{}`` / LaTeX / plain expression)
    with the gold answer: ``\\boxed{1/2}`` matches ``0.5``. An unparsable response scores 0.0;
    an unparsable gold answer raises."""
    # Imported here: math_verify pulls in sympy (~1 s), paid only by processes that score math.
    from math_verify import parse, verify

    gold_text = _need_answer("math", answer)
    gold = parse(gold_text)
    if not gold:
        # Plain answers such as "x^2" only parse as LaTeX when delimited.
        gold = parse(f"${gold_text}$")
    if not gold:
        raise ValueError(f"reward 'math': cannot parse the gold answer {gold_text!r}")
    pred = parse(response)
    if not pred:
        return 0.0
    return 1.0 if verify(gold, pred) else 0.0


def _import_math_verify() -> None:
    import math_verify  # noqa: F401


# Worker processes run this once before their first call, so sympy's import is not timed.
math_reward.warmup = _import_math_verify  # type: ignore[attr-defined]


@REWARDS.register("arithmetic_graded")
def arithmetic_graded_reward(response: str, answer: Optional[str], prompt: str) -> float:
    """1.0 for the exact answer, partial credit in [0, 0.9] by digit agreement and relative error
    otherwise (``rlplat.tasks.arithmetic.graded_score``): a reward with spread, for calibration."""
    from rlplat.tasks.arithmetic import graded_score

    return graded_score(response, _need_answer("arithmetic_graded", answer))


def final_number(text: str) -> Optional[Decimal]:
    """GSM8K's final answer in ``text``: the first number after the last ``####`` when there is one
    (the dataset's own format), else the last number; thousands commas dropped. None: no number."""
    head, sep, tail = text.rpartition("####")
    found = _NUMBER.findall(tail if sep else text)
    if not found:
        return None
    try:
        return Decimal((found[0] if sep else found[-1]).replace(",", ""))
    except InvalidOperation:  # "1,,2"-like fragments
        return None


@REWARDS.register("gsm8k")
def gsm8k_reward(response: str, answer: Optional[str], prompt: str) -> float:
    """1.0 when the response's final number (``final_number``: after ``####``, else its last number)
    equals the gold answer's (GSM8K's ``answer`` column ends in ``#### 72``; a bare ``72`` works
    too), numerically (``72.0`` == ``72``). A gold answer without a number raises."""
    gold = final_number(_need_answer("gsm8k", answer))
    if gold is None:
        raise ValueError(f"reward 'gsm8k': no number in the gold answer {answer[-80:]!r}")
    pred = final_number(response)
    return 1.0 if pred is not None and pred == gold else 0.0


# The row column that carries a multi-turn episode's environment reward to the reward worker
# (``actors.rollout.common.build_rollout_batch`` writes it, ``env`` reads it).
ENV_REWARD_COLUMN = "env_reward"


@REWARDS.register("env")
def env_reward(response: str, answer: Optional[str], prompt: str, **columns) -> float:
    """The environment's reward of a multi-turn episode (``rollout.env``): the sum of its step
    rewards. Raises (a counted reward error, never a 0) on a row that is no episode."""
    if ENV_REWARD_COLUMN not in columns:
        raise ValueError(f"reward 'env' needs the episode's '{ENV_REWARD_COLUMN}' column: set rollout.env, "
                         "or use another reward function")
    return float(columns[ENV_REWARD_COLUMN])
