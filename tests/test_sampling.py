"""DAPO dynamic sampling's pure part (rlplat.sampling) and the reward outcome of several rounds."""
import math

import pytest
import torch

from rlplat import advantages
from rlplat.rewards.runner import RewardFailure, RewardOutcome
from rlplat.sampling import select_groups, uniform_groups

NAN = math.nan


def test_all_correct_and_all_wrong_groups_are_dropped_mixed_kept():
    # groups 0: all correct, 1: mixed, 2: all wrong, 3: mixed (partial credit)
    rewards = torch.tensor([1., 1., 1., 0., 1., 0., 0., 0., 0.5, 0.25])
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    choice = select_groups(rewards, groups, wanted=4)
    assert choice.keep == [1, 3]
    assert (choice.uniform, choice.invalid, choice.surplus) == (2, 0, 0)
    assert uniform_groups(rewards, groups) == [0, 2]


def test_dropped_groups_are_exactly_those_with_zero_advantage():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (64,), generator=gen).float()
    groups = torch.arange(16).repeat_interleave(4)
    choice = select_groups(rewards, groups, wanted=16)
    for name in ("grpo", "dr_grpo", "rloo"):
        adv = advantages.get(name)(rewards, groups)
        zero = [g for g in range(16) if bool((adv[groups == g] == 0).all())]
        assert sorted(set(range(16)) - set(choice.keep)) == zero, name
    assert 0 < choice.uniform < 16  # the draw has both kinds, so the comparison above means something


def test_surplus_is_cut_to_the_first_wanted_groups_whatever_the_row_order():
    rewards = torch.tensor([0., 1.] * 5)
    groups = torch.tensor([7, 7, 2, 2, 9, 9, 4, 4, 11, 11])
    choice = select_groups(rewards, groups, wanted=3)
    assert choice.keep == [2, 4, 7] and choice.surplus == 2
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert select_groups(rewards[perm], groups[perm], wanted=3) == choice


def test_groups_with_a_failed_reward_are_neither_kept_nor_counted_uniform():
    rewards = torch.tensor([1., NAN, 1., 1., 0., 1.])
    valid = torch.tensor([True, False, True, True, True, True])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    choice = select_groups(rewards, groups, wanted=3, valid=valid)
    assert choice.keep == [2] and choice.uniform == 1 and choice.invalid == 1
    # a NaN reward is never compared: without ``valid`` it still marks its group invalid
    assert select_groups(rewards, groups, wanted=3) == choice


def test_nothing_informative_keeps_nothing():
    choice = select_groups(torch.ones(6), torch.tensor([0, 0, 1, 1, 2, 2]), wanted=2)
    assert choice.keep == [] and choice.uniform == 3
    with pytest.raises(ValueError, match="wanted=0"):
        select_groups(torch.ones(2), torch.tensor([0, 0]), wanted=0)


def test_reward_outcomes_of_rounds_concatenate():
    a = RewardOutcome(torch.tensor([1., NAN]), torch.tensor([True, False]), errors=1,
                      failures=[RewardFailure(1, "error", "x", "boom")], seconds=1.0, call_seconds_mean=0.5, call_seconds_max=0.5)
    b = RewardOutcome(torch.tensor([0., 1., NAN]), torch.tensor([True, True, False]), timeouts=1,
                      failures=[RewardFailure(2, "timeout", "y", "slow")], seconds=2.0, call_seconds_mean=0.2, call_seconds_max=2.0)
    c = RewardOutcome.concat([a, b])
    assert torch.equal(c.valid, torch.tensor([True, False, True, True, False]))
    assert torch.equal(c.rewards[c.valid], torch.tensor([1., 0., 1.]))
    assert [f.index for f in c.failures] == [1, 4]  # indices into the concatenated rows
    assert (c.errors, c.timeouts, c.seconds, c.call_seconds_max) == (1, 1, 3.0, 2.0)
    assert c.call_seconds_mean == pytest.approx((0.5 * 2 + 0.2 * 2) / 4)
    assert c.metrics()["reward/invalid_frac"] == pytest.approx(2 / 5)
    assert torch.equal(c.group_valid(torch.tensor([0, 0, 1, 1, 2])), torch.tensor([False, False, True, True, False]))
