"""The environment protocol, in the style of gym and SkyRL-gym: an episode is ``reset`` then ``step``s.

``reset(row)`` takes a data row (``{"prompt": str, "answer": str | None, **columns}``, the rows of
``rlplat.tasks``) and returns the first observation, the text the model sees first. ``step(turn)``
takes one model turn (decoded text) and returns a ``StepResult``. An environment instance runs one
episode at a time; ``reset`` starts the next one.

Every ``info`` holds the counters of ``COUNTERS`` (``step_info``), so per-step metrics can sum them
over a batch whatever the environment; an environment may add keys of its own.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping

Row = Mapping[str, Any]

# tool_calls: calls the turn made (malformed ones included); tool_errors: those that failed (bad
# syntax, unknown tool, bad arguments, the tool raised or exited non-zero, a limit); tool_timeouts:
# those stopped for time (wall clock or CPU); truncated: tool outputs cut to the maximum length.
COUNTERS = ("tool_calls", "tool_errors", "tool_timeouts", "truncated")


def step_info(**counts: int) -> Dict[str, int]:
    """``{counter: count}`` for every name in ``COUNTERS``, 0 where not given; an unknown name raises."""
    unknown = sorted(set(counts) - set(COUNTERS))
    if unknown:
        raise TypeError(f"unknown step counters {unknown}; counters: {', '.join(COUNTERS)}")
    return {name: int(counts.get(name, 0)) for name in COUNTERS}


@dataclass(frozen=True)
class StepResult:
    """What one model turn led to. observation: the text appended for the model's next turn ("" when
    done); reward: this step's reward (the episode's reward is on its last step); done: the episode is
    over; info: ``step_info`` counters plus anything the environment adds."""

    observation: str
    reward: float
    done: bool
    info: Dict[str, Any] = field(default_factory=step_info)


class Environment(ABC):
    """Base of the built-in environments. A ``module:Class`` environment need not subclass it:
    any class with ``reset`` and ``step`` of these signatures will do."""

    @abstractmethod
    def reset(self, row: Row) -> str:
        """Start an episode on ``row``; returns the first observation."""

    @abstractmethod
    def step(self, model_turn: str) -> StepResult:
        """Apply one model turn (text) and return what follows."""


__all__ = ["COUNTERS", "Environment", "Row", "StepResult", "step_info"]
