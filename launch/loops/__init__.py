"""Step programs, one per ``AlgorithmPlan.loop``.

A loop is a class built on the run's ``StepContext`` (``Loop(ctx)``) whose ``step(step)`` runs
one training step (for Nash-MP: one outer Mirror-Prox iteration) and returns its metrics, with
``state_dict`` / ``load_state_dict`` for what a checkpoint must carry (the data position, ...).
It calls only the context (generate, score, reward, train, sync); the run driver
(``launch.controller``) owns resume, checkpoints and evaluation. Adding a loop is one class plus
one ``@LOOPS.register`` line.
"""
from rlplat.registry import Registry

LOOPS: Registry = Registry("controller loop")

from launch.loops import ctrl, mirror_prox, pairs, rehearsal, rl  # noqa: E402,F401  (registration)
