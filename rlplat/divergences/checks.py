"""Checks of divergence params, shared by the factories.

Params written in a config arrive as floats (``DivergenceTermConfig.params`` is ``Dict[str, float]``),
so an integer param written ``16`` arrives as ``16.0``: a whole float is accepted as that integer.
"""
from __future__ import annotations

import math
import numbers
from typing import Union


def positive(owner: str, name: str, value: object, integer: bool = False) -> Union[int, float]:
    """``value`` as a positive ``int`` (``integer``) or finite ``float``; ``ValueError`` naming
    ``owner`` and ``name`` otherwise."""
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
    if not ok or not (value > 0 and math.isfinite(value)):
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{owner}: param {name} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)
