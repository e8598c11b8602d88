"""Step programs of the controller, one per ``AlgorithmPlan.loop``.

A loop is a class built with the controller (``Loop(ctrl)``) whose ``step(step)`` runs one
training step (for Nash-MP: one outer Mirror-Prox iteration) and returns its metrics. Adding a
loop is one class plus one ``@LOOPS.register`` line.
"""
from rlplat.registry import Registry

LOOPS: Registry = Registry("controller loop")

from launch.loops import mirror_prox, rehearsal, rl  # noqa: E402,F401  (registration)
