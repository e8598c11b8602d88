"""Advantage estimators (docs/algorithms.md#advantage-estimators and #nash-mp)."""
import math

import pytest
import torch

from rlplat import advantages

GROUP_ZERO_SUM = ["grpo", "dr_grpo", "rloo", "reinforce_pp"]


def test_registered_names():
    assert set(advantages.names()) >= {"grpo", "dr_grpo", "rloo", "reinforce_pp", "nash_mp"}
    with pytest.raises(KeyError, match="unknown advantage estimator 'nope'"):
        advantages.get("nope")


def test_hand_computed_group():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    g = torch.zeros(4, dtype=torch.long)
    # mean 0.25; unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    torch.testing.assert_close(advantages.get("grpo")(r, g, eps=0.0), torch.tensor([1.5, -0.5, -0.5, -0.5]))
    torch.testing.assert_close(advantages.get("dr_grpo")(r, g), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # leave-one-out: 1 - mean(0,0,0) = 1; 0 - mean(1,0,0) = -1/3
    torch.testing.assert_close(advantages.get("rloo")(r, g), torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    # single group: centred values divided by their population std sqrt(0.1875)
    expect = torch.tensor([0.75, -0.25, -0.25, -0.25]) / math.sqrt(0.1875)
    torch.testing.assert_close(advantages.get("reinforce_pp")(r, g, eps=0.0), expect)


def test_grpo_eps_default_is_small():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    a = advantages.get("grpo")(r, torch.zeros(4, dtype=torch.long))
    assert 1.5 * (1 - 1e-5) < a[0].item() < 1.5


@pytest.mark.parametrize("name", GROUP_ZERO_SUM)
def test_group_sums_are_zero(name):
    torch.manual_seed(0)
    r = torch.rand(24)
    g = torch.arange(24) % 3 * 7  # non-contiguous, interleaved ids 0, 7, 14
    a = advantages.get(name)(r, g)
    for gid in (0, 7, 14):
        assert abs(a[g == gid].sum().item()) < 1e-5
    assert a.abs().max() > 0.1  # not trivially zero


@pytest.mark.parametrize("name", GROUP_ZERO_SUM)
def test_identical_rewards_give_exact_zero(name):
    # the float32 mean of six copies of 1/997 differs from 1/997 in the last bit, so a naive
    # r - mean is not exactly 0 there
    same = torch.full((6,), 1 / 997)
    assert (same - same.mean() != 0).any()
    r = torch.cat([same, torch.tensor([1.0, 0.0, 0.7, 0.7, 0.7])])
    g = torch.tensor([0] * 6 + [1, 1, 2, 2, 2])
    a = advantages.get(name)(r, g)
    assert not torch.isnan(a).any()
    assert (a[g == 0] == 0).all() and (a[g == 2] == 0).all()
    assert (a[g == 1] != 0).all()


@pytest.mark.parametrize("name", GROUP_ZERO_SUM)
def test_whole_batch_identical_no_nan(name):
    a = advantages.get(name)(torch.ones(6), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert (a == 0).all()


def test_rloo_is_scaled_dr_grpo():
    torch.manual_seed(1)
    r = torch.rand(12)
    g = torch.arange(12) // 4
    torch.testing.assert_close(advantages.get("rloo")(r, g), advantages.get("dr_grpo")(r, g) * 4 / 3)


def test_estimators_are_permutation_equivariant():
    torch.manual_seed(2)
    r, g = torch.rand(12), torch.arange(12) // 3
    perm = torch.randperm(12)
    for name in GROUP_ZERO_SUM:
        fn = advantages.get(name)
        torch.testing.assert_close(fn(r, g)[perm], fn(r[perm], g[perm]))


def test_reinforce_pp_whitens_across_batch():
    torch.manual_seed(3)
    r = torch.rand(32)
    g = torch.arange(32) // 4
    a = advantages.get("reinforce_pp")(r, g, eps=0.0)
    assert abs(a.mean().item()) < 1e-6
    assert abs(a.pow(2).mean().sqrt().item() - 1.0) < 1e-5


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_singleton_group_raises(name):
    with pytest.raises(ValueError, match=r"G >= 2.*\[5\]"):
        advantages.get(name)(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([3, 3, 5]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="non-finite"):
        advantages.get("grpo")(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="group_ids has shape"):
        advantages.get("dr_grpo")(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0]))


def test_nash_mp_hand_computed():
    win = torch.tensor([0.8, 0.3, 0.5])
    ref = torch.tensor([1.0, -2.0, 0.0], requires_grad=True)
    snap = torch.tensor([0.5, -1.0, 0.0], requires_grad=True)
    a = advantages.get("nash_mp")(win, torch.zeros(3, dtype=torch.long), seq_logratio_ref=ref,
                                  seq_logratio_snapshot=snap, beta=0.1, eta=0.5)
    # A = P - 1/2 - beta * ref - (beta / eta) * snap, beta / eta = 0.2
    # row 0: 0.8 - 0.5 - 0.1 - 0.1 = 0.1; row 1: 0.3 - 0.5 + 0.2 + 0.2 = 0.2; row 2: 0
    torch.testing.assert_close(a, torch.tensor([0.1, 0.2, 0.0]))
    assert not a.requires_grad  # both log-ratios are stop-gradient


def test_nash_mp_checks_arguments():
    fn = advantages.get("nash_mp")
    r, g = torch.tensor([0.5, 0.5]), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="seq_logratio_snapshot"):
        fn(r, g, seq_logratio_ref=torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(torch.tensor([1.5, 0.0]), g, seq_logratio_ref=torch.zeros(2), seq_logratio_snapshot=torch.zeros(2))
    with pytest.raises(ValueError, match="eta > 0"):
        fn(r, g, seq_logratio_ref=torch.zeros(2), seq_logratio_snapshot=torch.zeros(2), eta=0.0)


def test_seq_logratio():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 9.0]], requires_grad=True)
    anchor = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = advantages.seq_logratio(lp, anchor, mask)
    torch.testing.assert_close(out, torch.tensor([0.5 - 1.0 - 3.0, 1.0]))
    assert not out.requires_grad
