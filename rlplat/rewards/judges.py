"""Rule-based pairwise judges for Nash-MP: ``judge(prompt, response_a, response_b, answer) -> P(a > b)``.

A judge must be antisymmetric: ``judge(x, a, b) + judge(x, b, a) == 1`` (so ``judge(x, a, a) == 0.5``).
``algorithm.nash_mp.judge`` names one registered here (``JUDGES.names()``: ``checker``,
``style_rps``) or any ``module:function`` with that signature (``rlplat.rewards.resolve_judge``).
"""
from __future__ import annotations

from typing import Callable, Optional

from rlplat.registry import Registry

Judge = Callable[[str, str, str, Optional[str]], float]
JUDGES: Registry[Judge] = Registry("judge")


@JUDGES.register("checker")
def checker_judge(prompt: str, response_a: str, response_b: str, answer: Optional[str]) -> float:
    """Preference derived from the arithmetic checker: a correct response beats an incorrect one,
    ties are 1/2."""
    from rlplat.tasks.arithmetic import score

    return 0.5 + 0.5 * (score(response_a, answer) - score(response_b, answer))


@JUDGES.register("style_rps")
def style_judge(prompt: str, response_a: str, response_b: str, answer: Optional[str]) -> float:
    """A cyclic preference (``rlplat.tasks.styles``): a correct response beats an incorrect one (1 / 0)
    and two incorrect ones tie (1/2); between two correct ones, rock-paper-scissors over their answer
    styles (``styles.BEATS``: tenths beats plain, hundredths beats tenths, plain beats hundredths), 1/2 for
    the same style. A correct response without a style (``style_of`` None, e.g. ``47 apples``) loses
    to a correct styled one and ties with another unstyled one."""
    from rlplat.tasks.arithmetic import score
    from rlplat.tasks.styles import BEATS, style_of

    ca, cb = score(response_a, answer) == 1.0, score(response_b, answer) == 1.0
    if ca != cb:
        return 1.0 if ca else 0.0
    if not ca:
        return 0.5
    sa, sb = style_of(response_a), style_of(response_b)
    if sa == sb:
        return 0.5
    if sa is None or sb is None:
        return 0.0 if sa is None else 1.0
    return 1.0 if BEATS[sa] == sb else 0.0
