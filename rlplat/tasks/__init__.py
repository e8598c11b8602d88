"""Built-in verifiable tasks: prompt generators with exact answer checkers.

``TASKS`` maps a task name to its class; each class has ``generate(split, n, seed)`` returning
rows ``{"prompt", "answer", ...}`` (preference tasks add ``chosen`` and ``rejected``), and its module
a ``score(response_text, answer) -> float``.
"""
from rlplat.registry import Registry
from rlplat.tasks.episodes import GuessNumber, Multiplication
from rlplat.tasks.arithmetic import (
    ArithmeticBonus, ArithmeticPairs, ArithmeticTask, CarryConvention, read_jsonl, score, write_jsonl,
)

TASKS: Registry[type] = Registry("task")
TASKS.register("arithmetic")(ArithmeticTask)
TASKS.register("arithmetic_pairs")(ArithmeticPairs)
TASKS.register("carry_convention")(CarryConvention)
TASKS.register("arithmetic_bonus")(ArithmeticBonus)
TASKS.register("multiplication")(Multiplication)  # rlplat.envs' calc_arithmetic tool task
TASKS.register("guess_number")(GuessNumber)  # rlplat.envs' guess_number game

__all__ = ["TASKS", "ArithmeticBonus", "GuessNumber", "Multiplication", "ArithmeticPairs", "ArithmeticTask", "CarryConvention", "read_jsonl", "score", "write_jsonl"]
