"""Algorithm registry: ``get(name)`` returns an ``Algorithm`` whose ``plan(cfg)`` drives the runtime.

A new algorithm is one ``Algorithm`` subclass plus one ``@ALGORITHMS.register`` line.
"""
from rlplat.algorithms.base import ANCHOR_ROLES, Algorithm, AlgorithmPlan
from rlplat.algorithms.families import ALGORITHMS


def get(name: str) -> Algorithm:
    return ALGORITHMS.get(name)


def names() -> list:
    return ALGORITHMS.names()


__all__ = ["ALGORITHMS", "ANCHOR_ROLES", "Algorithm", "AlgorithmPlan", "get", "names"]
