"""Built-in verifiable tasks: prompt generators with exact answer checkers.

``TASKS`` maps a task name to its class; each class has ``generate(split, n, seed)`` returning
rows ``{"prompt", "answer", ...}`` (preference tasks add ``chosen`` and ``rejected``), and its module
a ``score(response_text, answer) -> float``.
"""
from rlplat.registry import Registry
from rlplat.tasks.arithmetic import ArithmeticPairs, ArithmeticTask, read_jsonl, score, write_jsonl

TASKS: Registry[type] = Registry("task")
TASKS.register("arithmetic")(ArithmeticTask)
TASKS.register("arithmetic_pairs")(ArithmeticPairs)

__all__ = ["TASKS", "ArithmeticPairs", "ArithmeticTask", "read_jsonl", "score", "write_jsonl"]
