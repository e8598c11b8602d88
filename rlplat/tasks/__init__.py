"""Built-in verifiable tasks: prompt generators with exact answer checkers.

``TASKS`` maps a task name to its class; each class has ``generate(split, n, seed)`` returning
rows ``{"prompt", "answer"}``, and its module a ``score(response_text, answer) -> float``.
"""
from rlplat.registry import Registry
from rlplat.tasks.arithmetic import ArithmeticTask, read_jsonl, score, write_jsonl

TASKS: Registry[type] = Registry("task")
TASKS.register("arithmetic")(ArithmeticTask)

__all__ = ["TASKS", "ArithmeticTask", "read_jsonl", "score", "write_jsonl"]
