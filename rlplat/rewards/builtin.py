"""Built-in reward functions. ``arithmetic`` and ``math`` return 1.0 (correct) or 0.0 (wrong),
``arithmetic_graded`` a value in [0, 1]; each raises when the
gold answer itself is unusable - a data problem the runner counts as an error, never a 0."""
from __future__ import annotations

from typing import Optional

from rlplat.rewards import REWARDS


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
