"""Which reward functions a run uses, with their weights: the one reading of ``reward.fn`` / ``reward.fns``.

``reward.fn: F`` is the shorthand of ``reward.fns: [{fn: F, weight: 1}]``. Setting both is refused
(``reward.fn`` must be null when ``reward.fns`` is set) so neither is silently ignored; setting
neither is refused too. The reward of a sample is ``sum_k weight_k * fn_k(...)``
(``rlplat.rewards.weighted``); each function's own value is logged as ``reward/fn/<name>/mean``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, List

from rlplat.config.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a metric-key segment


@dataclass(frozen=True)
class RewardSpec:
    """One weighted reward function: ``name`` (metric label), ``fn`` (registered name or
    ``module:function``), ``weight`` (finite float), ``key`` (the config key, for messages)."""

    name: str
    fn: str
    weight: float
    key: str


def default_name(fn: str) -> str:
    """``module:function`` -> ``function`` (``Class.method`` -> ``method``); a registered name is itself."""
    return fn.rpartition(":")[2].rpartition(".")[2]


def reward_specs(reward_cfg: Any) -> List[RewardSpec]:
    """The run's reward functions from a ``RewardConfig``; raises ``ConfigError`` naming the key
    for both or neither of ``reward.fn`` / ``reward.fns``, a non-finite weight, a bad or repeated
    name. Does not import the functions (``rlplat.rewards.resolve_reward`` does)."""
    fn, fns = reward_cfg.fn, list(reward_cfg.fns)
    if fn and fns:
        raise ConfigError(f"reward.fn='{fn}' and reward.fns are both set; reward.fn is the one-function shorthand "
                          "of reward.fns: set reward.fn=null to use reward.fns, or drop reward.fns")
    if fn:
        return [RewardSpec(default_name(fn), fn, 1.0, "reward.fn")]
    if not fns:
        raise ConfigError("reward.fn is null and reward.fns is empty: set one of them (e.g. reward.fn=arithmetic)")
    specs = []
    for i, item in enumerate(fns):
        key = f"reward.fns[{i}]"
        if not item.fn:
            raise ConfigError(f"{key}.fn is empty; give a registered reward name or 'module:function'")
        if not math.isfinite(item.weight):
            raise ConfigError(f"{key}.weight={item.weight} must be a finite number")
        name = item.name if item.name is not None else default_name(item.fn)
        if not _NAME.match(name):
            raise ConfigError(f"{key}.name='{name}' must be letters, digits, '_', '.', '-' (it names metrics "
                              "reward/fn/<name>/*)")
        specs.append(RewardSpec(name, item.fn, float(item.weight), f"{key}.fn"))
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"reward.fns: names {repeated} repeat; give each entry its own reward.fns[i].name")
    return specs


def describe(specs: List[RewardSpec]) -> str:
    """A stable text of the specs (what stores of rewards are fingerprinted with): ``fn`` alone for
    a single weight-1 function (as before reward.fns existed), else ``w*fn + ...``."""
    if len(specs) == 1 and specs[0].weight == 1.0:
        return specs[0].fn
    return " + ".join(f"{s.weight!r}*{s.fn}" for s in specs)


__all__ = ["RewardSpec", "default_name", "describe", "reward_specs"]
