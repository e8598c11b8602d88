"""Rule-based pairwise judges for Nash-MP: ``judge(prompt, response_a, response_b, answer) -> P(a > b)``.

A judge must be antisymmetric: ``judge(x, a, b) + judge(x, b, a) == 1`` (so ``judge(x, a, a) == 0.5``).
"""
from __future__ import annotations

from typing import Optional


def checker_judge(prompt: str, response_a: str, response_b: str, answer: Optional[str]) -> float:
    """Preference derived from the arithmetic checker: a correct response beats an incorrect one,
    ties are 1/2."""
    from rlplat.tasks.arithmetic import score

    return 0.5 + 0.5 * (score(response_a, answer) - score(response_b, answer))
