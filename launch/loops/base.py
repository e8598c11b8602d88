"""The loop registry and the ``Loop`` base class every loop derives from.

A loop is built on the run's ``StepContext`` (``Loop(ctx)``); ``step(step)`` runs one training step
(for Nash-MP: one outer Mirror-Prox iteration) and returns its metrics. The hooks below have
defaults, so the run driver (``launch.controller``) calls every one of them on every loop; a loop
overrides only what it has. Kept apart from ``launch/loops/__init__.py`` so that the loop modules
import the registry without importing their own package's ``__init__`` (no import circle).
"""
from __future__ import annotations

from typing import Dict

from launch.context import StepContext
from rlplat.registry import Registry


class Loop:
    """One training step against the ``StepContext``, plus the hooks the run driver calls."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def step(self, step: int) -> Dict[str, float]:
        """Run training step ``step`` (0-based); returns the step's metrics (name -> float)."""
        raise NotImplementedError

    def eval_metrics(self) -> Dict[str, float]:
        """The loop's own held-out measures, added to each evaluation's (f-DPO: pair calibration)."""
        return {}

    def after_resume(self) -> None:
        """Called once after a checkpoint was restored and the engines synced (Nash-MP: reload the snapshot)."""

    def state_dict(self) -> dict:
        """What a checkpoint must carry to continue exactly (the data position, ...)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output."""


LOOPS: Registry = Registry("controller loop")
