"""Learning-rate schedules: the multiplier of ``trainer.lr`` at each optimizer update.

A run makes S optimizer updates (``Algorithm.total_updates``: ``trainer.max_steps`` x the
updates one step makes). Update ``s`` (0-based: ``s`` updates came before it) uses the learning
rate ``trainer.lr * LRSchedule(...)(s)``:

- warmup, ``s < W``: ``(s + 1) / W``, so the first update already moves (1/W of the peak, not 0
  as in some libraries) and update ``W - 1`` is at the peak;
- after it, the kind's decay shape at the decay progress ``p = (s - W) / (S - W)`` (0 at the
  first update after warmup, 1 at ``s = S``, clamped to 1 beyond: an update past the planned
  ones stays at the floor), between 1 and the floor ``trainer.min_lr_ratio``.

``W`` is ``trainer.warmup_steps``, or ``floor(trainer.warmup_ratio * S)``. A kind is one decay
function ``fn(progress, floor) -> multiplier`` plus one ``@register("name")`` line; the warmup
is the same for every kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from rlplat.registry import Registry

DecayFn = Callable[[float, float], float]
REGISTRY: Registry[DecayFn] = Registry("learning-rate schedule")

register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


@register("constant")
def constant(progress: float, floor: float) -> float:
    """1 after warmup (the floor does not apply: validation refuses min_lr_ratio with it)."""
    return 1.0


@register("linear")
def linear(progress: float, floor: float) -> float:
    """From 1 at progress 0 straight down to ``floor`` at progress 1."""
    return floor + (1.0 - floor) * (1.0 - progress)


@register("cosine")
def cosine(progress: float, floor: float) -> float:
    """Half a cosine from 1 at progress 0 to ``floor`` at progress 1 (``floor + (1-floor)/2`` mid-way)."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """``schedule(s) -> float``: the multiplier of the base learning rate at update ``s`` (0-based).

    ``kind``: a registered decay; ``total``: S, the updates the run plans; ``warmup``: W updates of
    linear warmup (``0 <= W < S``); ``floor``: the decay's end value, a fraction of the base lr."""

    kind: str = "constant"
    total: int = 1
    warmup: int = 0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in REGISTRY:
            raise ValueError(f"unknown learning-rate schedule '{self.kind}'; registered: {', '.join(names())}")
        if not 0 <= self.warmup < self.total:
            raise ValueError(f"warmup {self.warmup} must be in [0, total updates {self.total})")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor {self.floor} must be in [0, 1]")

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"learning-rate schedule step must be >= 0, got {step}")
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / (self.total - self.warmup))
        return float(get(self.kind)(progress, self.floor))


def warmup_updates(trainer: Any, total: int) -> int:
    """W: ``trainer.warmup_steps`` when set, else ``floor(trainer.warmup_ratio * total)``."""
    return int(trainer.warmup_steps) if trainer.warmup_steps else int(trainer.warmup_ratio * total)


def from_config(cfg: Any) -> LRSchedule:
    """The schedule of a ``RunConfig``: ``trainer.lr_scheduler``, its warmup and ``trainer.min_lr_ratio``
    over the algorithm's S updates (``Algorithm.total_updates``)."""
    from rlplat import algorithms

    total = algorithms.get(cfg.algorithm.name).total_updates(cfg)
    t = cfg.trainer
    return LRSchedule(kind=t.lr_scheduler, total=total, warmup=warmup_updates(t, total), floor=t.min_lr_ratio)
