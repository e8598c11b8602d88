"""Step programs, one per ``AlgorithmPlan.loop``: each a ``launch.loops.base.Loop``.

A loop calls only the context (generate, score, reward, train, sync); the run driver
(``launch.controller``) owns resume, checkpoints and evaluation. Adding a loop is one ``Loop``
subclass plus one ``@LOOPS.register`` line; importing this package registers the built-in ones.
"""
from launch.loops import ctrl, mirror_prox, pairs, rehearsal, rl  # noqa: F401  (registration)
from launch.loops.base import LOOPS, Loop

__all__ = ["LOOPS", "Loop"]
