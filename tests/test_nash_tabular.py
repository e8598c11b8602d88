"""Exact tabular Nash-MP (docs/algorithms.md#nash-mp): the Mirror-Prox update rule converges
linearly to the regularised equilibrium and beats one-step mirror descent at the same step size."""
import pytest
import torch

from rlplat.algorithms.nash_tabular import (
    equilibrium, kl, mirror_descent, mirror_prox, proximal_step, random_preference, win_prob,
)

BETA, ETA, ITERS = 0.1, 1.0, 20
SEEDS = range(8)


def game(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    pref = random_preference(n, g)
    pi_ref = torch.softmax(torch.randn(n, generator=g, dtype=torch.float64), -1)
    return pref, pi_ref


def test_preference_matrix_is_a_valid_game():
    pref, pi_ref = game(0)
    assert torch.allclose(pref + pref.T, torch.ones_like(pref))
    assert float(pi_ref @ win_prob(pref, pi_ref)) == pytest.approx(0.5, abs=1e-15)  # P(pi > pi) = 1/2


def test_uniform_preferences_keep_every_iterate_at_the_reference():
    _, pi_ref = game(1)
    half = torch.full((6, 6), 0.5, dtype=torch.float64)
    for pi in mirror_prox(pi_ref, half, BETA, ETA, 10):
        assert torch.allclose(pi, pi_ref, atol=1e-15)


def test_proximal_step_is_the_argmin_of_its_objective():
    pref, pi_ref = game(2)
    pi_k = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64), -1)

    def objective(pi):
        return -float(pi @ win_prob(pref, pi_k)) / BETA + kl(pi, pi_ref) + kl(pi, pi_k) / ETA

    best = proximal_step(pi_k, pi_ref, pi_k, pref, BETA, ETA)
    gen = torch.Generator().manual_seed(4)
    for _ in range(200):  # every nearby point on the simplex is worse
        other = torch.softmax(best.log() + 0.05 * torch.randn(6, generator=gen, dtype=torch.float64), -1)
        assert objective(other) >= objective(best) - 1e-12


def test_equilibrium_solves_the_fixed_point_equation():
    pref, pi_ref = game(5)
    star, residual = equilibrium(pi_ref, pref, BETA)
    assert residual < 1e-12
    assert torch.allclose(star, torch.softmax(pi_ref.log() + win_prob(pref, star) / BETA, -1), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_mirror_prox_converges_linearly(seed):
    pref, pi_ref = game(seed)
    star, _ = equilibrium(pi_ref, pref, BETA)
    gaps = [kl(star, pi) for pi in mirror_prox(pi_ref, pref, BETA, ETA, ITERS)]
    for a, b in zip(gaps[::5], gaps[5::5]):
        assert b < 0.25 * a, gaps  # a constant contraction per 5 iterations: linear convergence
    assert gaps[-1] < 1e-3 * gaps[0]  # orders of magnitude within 20 iterations


def test_mirror_prox_beats_one_step_mirror_descent():
    stalled = 0
    for seed in SEEDS:
        pref, pi_ref = game(seed)
        star, _ = equilibrium(pi_ref, pref, BETA)
        mp = kl(star, mirror_prox(pi_ref, pref, BETA, ETA, ITERS)[-1])
        md = kl(star, mirror_descent(pi_ref, pref, BETA, ETA, ITERS)[-1])
        assert mp <= 2 * md + 1e-12, (seed, mp, md)  # never meaningfully worse
        stalled += md > 1e3 * mp
    # Measured: on 7 of these 8 games mirror descent is >= 1000x further from pi* after 20 steps
    # (on 4 it stalls between 1e-1 and 1e-3); on seed 4 both reach ~2e-13.
    assert stalled >= 7
