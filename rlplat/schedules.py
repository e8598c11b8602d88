"""Coefficient schedules ``beta_t`` for divergence terms (KDRL's linear annealing, docs/algorithms.md#kdrl).

A schedule kind is a function ``fn(step, *, value, start, slope, floor, **params) -> float`` that
takes the fields it needs and ignores the rest; adding a kind is one function plus one
``@register("name")`` line. The fields mirror ``rlplat.config.CoefConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict

from rlplat.registry import Registry

if TYPE_CHECKING:
    from rlplat.config.schema import CoefConfig

ScheduleFn = Callable[..., float]
REGISTRY: Registry[ScheduleFn] = Registry("coefficient schedule")

register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


@register("constant")
def constant(step: int, *, value: float, **_: Any) -> float:
    return value


@register("linear")
def linear(step: int, *, start: float, slope: float, floor: float, **_: Any) -> float:
    """``max(start - slope * step, floor)``; KDRL: start 5e-3, slope 5e-5, floor 1e-3 (floor at step 80)."""
    return max(start - slope * step, floor)


@dataclass
class CoefSchedule:
    """``sched(step) -> float``. ``params`` carries extra fields for kinds registered elsewhere."""

    kind: str = "constant"
    value: float = 0.0
    start: float = 0.0
    slope: float = 0.0
    floor: float = 0.0
    params: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in REGISTRY:
            raise ValueError(f"unknown coefficient schedule kind '{self.kind}'; registered: {', '.join(names())}")
        self(0)  # a missing parameter fails here, at construction, not mid-training

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"schedule step must be >= 0, got {step}")
        fields = dict(value=self.value, start=self.start, slope=self.slope, floor=self.floor, **self.params)
        try:
            return float(get(self.kind)(step, **fields))
        except TypeError as exc:
            raise ValueError(f"coefficient schedule '{self.kind}': {exc}") from None

    @classmethod
    def from_config(cls, cfg: Any) -> "CoefSchedule":
        """From a ``CoefConfig``, a dict, or anything with those attributes; missing ones take defaults."""
        if not isinstance(cfg, dict):
            cfg = _coef_fields(cfg)
        get_ = cfg.get
        return cls(
            kind=get_("kind", "constant"),
            value=float(get_("value", 0.0)),
            start=float(get_("start", 0.0)),
            slope=float(get_("slope", 0.0)),
            floor=float(get_("floor", 0.0)),
            params=dict(get_("params", {}) or {}),
        )


def _coef_fields(coef: "CoefConfig") -> Dict[str, Any]:
    """The ``CoefConfig`` fields ``coef`` has, each read by name (tests/test_config_keys.py sees the reads)."""
    fields = {"kind": getattr(coef, "kind", None), "value": getattr(coef, "value", None),
              "start": getattr(coef, "start", None), "slope": getattr(coef, "slope", None),
              "floor": getattr(coef, "floor", None), "params": getattr(coef, "params", None)}
    return {k: v for k, v in fields.items() if v is not None}
