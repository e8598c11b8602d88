"""Reward transformations (rlplat/rewards/transforms.py), the idealised analysis used to choose t
(rlplat/rewards/ctrl_analysis.py) and the graded arithmetic reward: docs/algorithms.md#infalign-ctrl."""
from __future__ import annotations

import math

import pytest
import torch

from rlplat.rewards import resolve_reward, transforms
from rlplat.rewards.calibration import calibrate
from rlplat.rewards.ctrl_analysis import beta_for_kl, best_t, tilted_win_rate_kl

C = torch.tensor([0.0, 0.125, 0.5, 0.875, 1.0])


def test_registered_transformations():
    assert transforms.names() == ["bon", "identity", "won"]


def test_identity_returns_calibration_unchanged():
    ref = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    c = calibrate(torch.tensor([2.0, 3.5]), ref, torch.tensor([0, 0]))
    assert torch.equal(transforms.transform("identity", c), c)


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_transformation_matches_its_formula(t, dtype):
    c = C.to(dtype)
    assert torch.equal(transforms.transform("bon", c, t=t), torch.exp(t * c))
    assert torch.equal(transforms.transform("won", c, t=t), -torch.exp(-t * c))
    assert transforms.transform("bon", c, t=t)[0].item() == 1.0  # exp(0)
    assert transforms.transform("won", c, t=t)[0].item() == -1.0


def test_transformations_are_increasing_in_c():
    c = torch.linspace(0, 1, 101, dtype=torch.float64)
    for name in ("bon", "won"):
        assert bool((transforms.transform(name, c, t=3.0).diff() > 0).all())


@pytest.mark.parametrize("t", [0, -1.0, math.nan, math.inf, True, "2"])
@pytest.mark.parametrize("name", ["bon", "won"])
def test_bad_t_is_refused_by_name(name, t):
    with pytest.raises(ValueError, match=f"'{name}': parameter t must be a finite number > 0"):
        transforms.transform(name, C, t=t)


def test_parameter_errors_name_the_transformation_and_parameter():
    with pytest.raises(ValueError, match="'bon' needs parameter t"):
        transforms.transform("bon", C)
    with pytest.raises(ValueError, match=r"'identity' has no parameter t \(its parameters: none\)"):
        transforms.transform("identity", C, t=2.0)
    with pytest.raises(ValueError, match=r"'won' has no parameter n \(its parameters: t\)"):
        transforms.transform("won", C, t=2.0, n=4)
    with pytest.raises(ValueError, match=r"'bon': c must be calibrated rewards in \[0, 1\]"):
        transforms.transform("bon", torch.tensor([0.5, 1.5]), t=1.0)
    with pytest.raises(ValueError, match="'bon': parameter t=200.0 overflows torch.float32"):
        transforms.transform("bon", torch.tensor([1.0]), t=200.0)
    with pytest.raises(KeyError, match="unknown reward transformation 'boN'; registered: bon, identity, won"):
        transforms.transform("boN", C)


# ----------------------------------------------------------------------------- idealised analysis
@pytest.mark.parametrize("n", [2, 4, 16])
def test_analysis_reproduces_the_best_of_n_policy(n):
    """The best-of-n policy of pi_ref has c-density n u^(n-1) = tilt by Phi = log u at beta = 1/(n-1):
    KL = log n - (n-1)/n and standard win rate n/(n+1) (Beirami et al., arXiv 2401.01879)."""
    win, kl = tilted_win_rate_kl(torch.log, 1.0 / (n - 1), 1)
    assert abs(kl - (math.log(n) - (n - 1) / n)) < 1e-6
    assert abs(win - n / (n + 1)) < 1e-6


@pytest.mark.parametrize("decoder", ["bon", "won"])
def test_no_tilt_has_win_rate_one_half_and_no_kl(decoder):
    for n in (1, 4):
        win, kl = tilted_win_rate_kl(lambda u: u, 1e12, n, decoder)
        assert abs(win - 0.5) < 1e-6 and kl < 1e-9


def test_identity_is_optimal_for_the_standard_win_rate():
    """N = 1: the win rate of pi against pi_ref is E_pi[c], so maximising E[c] - beta KL (identity) is
    the best win rate at its KL: no exponential t does better at the same KL."""
    kl = 0.5
    identity = tilted_win_rate_kl(lambda u: u, beta_for_kl(lambda u: u, kl), 1)[0]
    for name in ("bon", "won"):
        for t in (1.0, 5.0, 20.0):
            phi = lambda u, t=t, name=name: transforms.get(name)(u, t=t)  # noqa: E731
            assert tilted_win_rate_kl(phi, beta_for_kl(phi, kl), 1)[0] <= identity + 1e-7
    assert best_t("bon", 1, kl) == 0.5 and best_t("won", 1, kl) == 0.5  # the smallest candidate: nearest identity


def test_exponential_beats_identity_for_best_of_4_at_equal_kl():
    """The claim CTRL rests on, in the idealised model: for best-of-4 decoding, exp(t c) with rlplat's
    chosen t beats calibration alone at the same KL (0.5 nats)."""
    kl, n = 0.5, 4
    identity = tilted_win_rate_kl(lambda u: u, beta_for_kl(lambda u: u, kl), n)[0]
    t = best_t("bon", n, kl)
    phi = lambda u: transforms.bon(u, t=t)  # noqa: E731
    win = tilted_win_rate_kl(phi, beta_for_kl(phi, kl), n)[0]
    assert t == 12.0 and win > identity + 0.05, (t, win, identity)
    assert abs(tilted_win_rate_kl(phi, beta_for_kl(phi, kl), 1)[1] - kl) < 1e-6  # at the requested KL


def test_analysis_refuses_bad_arguments():
    with pytest.raises(ValueError, match="n .* must be an int >= 1"):
        tilted_win_rate_kl(lambda u: u, 1.0, 0)
    with pytest.raises(ValueError, match="decoder must be one of"):
        tilted_win_rate_kl(lambda u: u, 1.0, 1, "median")
    with pytest.raises(ValueError, match="beta must be"):
        tilted_win_rate_kl(lambda u: u, 0.0, 1)
    with pytest.raises(ValueError, match="kl must be in"):
        beta_for_kl(lambda u: u, 0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        best_t("identity", 4, 0.5)


# ----------------------------------------------------------------------------- graded reward
@pytest.mark.parametrize(
    "response, answer, expected",
    [
        (" 83", "83", 1.0),
        (" 083.0<eos>junk", "83", 1.0),
        (" 73", "83", 0.9 * (0.25 + 0.5 * 73 / 83)),  # the carry-dropping error: units agree, 10 off
        (" 84", "83", 0.9 * (0.25 + 0.5 * 82 / 83)),
        (" 93", "83", 0.9 * (0.25 + 0.5 * 73 / 83)),  # as far as 73: same credit
        (" 3", "103", 0.9 * (0.5 / 3 + 0.5 * 3 / 103)),  # one of three digit positions agrees
        (" 0", "83", 0.0),
        (" 200", "83", 0.0),
        ("no number", "83", 0.0),
        ("", "83", 0.0),
        (" 1", "0", 0.0),  # gold 0: error measured against 1
        (" 8.5", "8", 0.9 * 0.5 * (1 - 0.5 / 8)),  # not an integer: no digit credit
    ],
)
def test_graded_reward_values(response, answer, expected):
    fn = resolve_reward("arithmetic_graded")
    assert fn(response, answer, "") == pytest.approx(expected, abs=1e-12)


def test_graded_reward_orders_answers_and_refuses_bad_gold():
    fn = resolve_reward("arithmetic_graded")
    values = [fn(f" {v}", "83", "38+45=") for v in range(0, 200)]
    assert all(0.0 <= v <= 1.0 for v in values) and values.count(1.0) == 1
    assert max(v for v in values if v < 1.0) <= 0.9
    assert len(set(values)) > 50  # spread: many distinct values among wrong answers
    with pytest.raises(ValueError, match="needs a gold answer"):
        fn(" 1", None, "")
    with pytest.raises(ValueError, match="is not a number"):
        fn(" 1", "abc", "")
