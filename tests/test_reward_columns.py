"""Data columns reach reward functions that take them; several reward functions combine by weight."""
import math

import pytest
import torch

from rlplat.config.errors import ConfigError
from rlplat.config.schema import RewardConfig, RewardFnConfig
from rlplat.rewards import accepted_columns, resolve_reward, select_columns
from rlplat.rewards.runner import RewardFailure, RewardOutcome
from rlplat.rewards.spec import RewardSpec, describe, reward_specs
from rlplat.rewards.weighted import WeightedRewardRunner, combine
from tests import reward_helpers as h

H = "tests.reward_helpers"


def test_accepted_columns_follow_the_signature():
    assert accepted_columns(h.takes_all) is None  # **kwargs: every column
    assert accepted_columns(h.uses_bonus) == {"bonus"}
    assert accepted_columns(h.takes_none) == frozenset()
    extra = {"bonus": 2, "level": "hard", "prompt": "never twice"}
    assert select_columns(None, extra) == {"bonus": 2, "level": "hard"}
    assert select_columns(frozenset({"bonus"}), extra) == {"bonus": 2}
    assert select_columns(frozenset(), extra) == {}


def test_resolve_reward_accepts_a_required_column_parameter():
    assert resolve_reward(f"{H}:uses_bonus") is h.uses_bonus
    with pytest.raises(ConfigError, match=r"reward.fns\[1\].fn"):
        resolve_reward(f"{H}:no_such_fn", "reward.fns[1].fn")


def test_columns_reach_the_functions_that_take_them():
    specs = [RewardSpec("bonus", f"{H}:uses_bonus", 1.0, "k"), RewardSpec("all", f"{H}:takes_all", 1.0, "k"),
             RewardSpec("none", f"{H}:takes_none", 1.0, "k")]
    calls = [("a", "1", "p", {"bonus": 3.0, "level": "x"}), ("b", "1", "p", {"bonus": 0.5})]
    with WeightedRewardRunner(specs, timeout_s=20.0) as runner:
        out = runner.score(calls)
    assert out.valid.all() and out.errors == 0  # takes_none would raise on an unexpected keyword
    assert out.components["bonus"].tolist() == [3.0, 0.5]
    assert out.components["all"].tolist() == [2.0, 1.0]
    assert out.components["none"].tolist() == [1.0, 1.0]


def test_weights_combine_exactly_and_failures_are_counted_not_zeroed():
    specs = [RewardSpec("len", f"{H}:length", 0.25, "k"), RewardSpec("ok", f"{H}:fails_on_x", -2.0, "k")]
    with WeightedRewardRunner(specs, timeout_s=20.0) as runner:
        out = runner.score([("abcd", None, "p"), ("x", None, "p"), ("ab", None, "p")])
    assert out.rewards[0].item() == 0.25 * 4 - 2.0 and out.rewards[2].item() == 0.25 * 2 - 2.0
    assert math.isnan(out.rewards[1].item()) and out.valid.tolist() == [True, False, True]
    assert out.errors == 1 and [(f.index, f.fn) for f in out.failures] == [(1, "ok")]
    m = out.metrics()
    assert m["reward/fn/ok/errors"] == 1 and m["reward/fn/len/errors"] == 0
    assert m["reward/fn/len/mean"] == pytest.approx((4 + 1 + 2) / 3) and m["reward/fn/ok/mean"] == 1.0
    assert m["reward/invalid_frac"] == pytest.approx(1 / 3)


def test_combine_and_concat_keep_components_and_names():
    a = RewardOutcome(torch.tensor([1.0, 2.0]), torch.tensor([True, True]))
    b = RewardOutcome(torch.tensor([math.nan, 4.0]), torch.tensor([False, True]), errors=1,
                      failures=[RewardFailure(0, "error", "r", "boom")])
    out = combine({"a": a, "b": b}, {"a": 3.0, "b": 0.5})
    assert math.isnan(out.rewards[0].item()) and out.rewards[1].item() == 3.0 * 2 + 0.5 * 4
    both = RewardOutcome.concat([out, out])
    assert both.components["a"].tolist() == [1.0, 2.0, 1.0, 2.0]
    assert [(f.index, f.fn) for f in both.failures] == [(0, "b"), (2, "b")]


def test_reward_specs_one_rule_for_fn_and_fns():
    assert reward_specs(RewardConfig()) == [RewardSpec("arithmetic", "arithmetic", 1.0, "reward.fn")]
    two = RewardConfig(fn=None, fns=[RewardFnConfig(fn=f"{H}:length", weight=0.5), RewardFnConfig(fn="math", name="m")])
    assert [(s.name, s.weight, s.key) for s in reward_specs(two)] == [("length", 0.5, "reward.fns[0].fn"),
                                                                         ("m", 1.0, "reward.fns[1].fn")]
    assert describe(reward_specs(RewardConfig())) == "arithmetic"
    with pytest.raises(ConfigError, match="reward.fn='arithmetic' and reward.fns are both set"):
        reward_specs(RewardConfig(fns=[RewardFnConfig(fn="math")]))
    with pytest.raises(ConfigError, match="reward.fn is null and reward.fns is empty"):
        reward_specs(RewardConfig(fn=None))
    with pytest.raises(ConfigError, match=r"reward.fns\[0\].weight=nan"):
        reward_specs(RewardConfig(fn=None, fns=[RewardFnConfig(fn="math", weight=float("nan"))]))
    with pytest.raises(ConfigError, match=r"names \['math'\] repeat"):
        reward_specs(RewardConfig(fn=None, fns=[RewardFnConfig(fn="math"), RewardFnConfig(fn="math")]))
