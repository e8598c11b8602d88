"""Built-in verifiable tasks: prompt generators with exact answer checkers.

``TASKS`` maps a task name to its class; each class has ``generate(split, n, seed)`` returning
rows ``{"prompt", "answer", ...}`` (preference tasks add ``chosen`` and ``rejected``), and its module
a ``score(response_text, answer) -> float``.
"""
from rlplat.registry import Registry
from rlplat.tasks.arithmetic import (
    ArithmeticBonus, ArithmeticPairs, ArithmeticTask, CarryConvention, read_jsonl, score, write_jsonl,
)

TASKS: Registry[type] = Registry("task")
TASKS.register("arithmetic")(ArithmeticTask)
TASKS.register("arithmetic_pairs")(ArithmeticPairs)
TASKS.register("carry_convention")(CarryConvention)
TASKS.register("arithmetic_bonus")(ArithmeticBonus)

__all__ = ["TASKS", "ArithmeticBonus", "ArithmeticPairs", "ArithmeticTask", "CarryConvention", "read_jsonl", "score", "write_jsonl"]
