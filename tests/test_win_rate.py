"""Best-of-N / worst-of-N win rates (rlplat/win_rate.py) against brute-force enumeration."""
from __future__ import annotations

import itertools

import pytest
import torch

from rlplat.win_rate import decoded_win_rate


def brute_force(x, y, n, decoder):
    """Every ordered N-tuple of draws (with replacement) from each side, equally likely."""
    pick = max if decoder == "bon" else min
    total = count = 0.0
    for a in itertools.product(x, repeat=n):
        for b in itertools.product(y, repeat=n):
            ra, rb = pick(a), pick(b)
            total += 1.0 if ra > rb else 0.5 if ra == rb else 0.0
            count += 1
    return total / count


@pytest.mark.parametrize("decoder", ["bon", "won"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_matches_enumeration_with_ties(decoder, n):
    gen = torch.Generator().manual_seed(n)
    policy = torch.randint(0, 4, (3, 4), generator=gen).double()  # few values: ties happen
    reference = torch.randint(0, 4, (3, 3), generator=gen).double()
    got, used = decoded_win_rate(policy, reference, n, decoder)
    want = sum(brute_force(p.tolist(), r.tolist(), n, decoder) for p, r in zip(policy, reference)) / 3
    assert used == 3
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("decoder", ["bon", "won"])
def test_a_policy_against_itself_wins_half(decoder):
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(0))
    for n in (1, 4, 16):
        assert decoded_win_rate(x, x, n, decoder)[0] == pytest.approx(0.5, abs=1e-12)


def test_best_of_n_rewards_the_top_and_worst_of_n_the_bottom():
    # The policy moves mass from the middle to both ends: more top wins, more bottom losses.
    reference = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    policy = torch.tensor([[0.0, 0.5, 0.5, 1.0]])
    assert decoded_win_rate(policy, reference, 16, "bon")[0] > decoded_win_rate(policy, reference, 1, "bon")[0]
    assert decoded_win_rate(policy, reference, 16, "won")[0] < 0.5


def test_failed_rewards_are_left_out_and_empty_prompts_skipped():
    nan = float("nan")
    policy = torch.tensor([[1.0, nan], [nan, nan]])
    reference = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert decoded_win_rate(policy, reference, 2, "bon") == (1.0, 1)
    with pytest.raises(ValueError, match="no prompt"):
        decoded_win_rate(policy[1:], reference[1:], 2, "bon")


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(2, 3), torch.zeros(3, 3), 1, "bon"), "same P"),
    ((torch.zeros(2, 3), torch.zeros(2, 3), 0, "bon"), "n "),
    ((torch.zeros(2, 3), torch.zeros(2, 3), 1, "median"), "decoder"),
    ((torch.full((1, 2), float("inf")), torch.zeros(1, 2), 1, "bon"), "finite"),
])
def test_bad_inputs_raise(args, match):
    with pytest.raises(ValueError, match=match):
        decoded_win_rate(*args)
