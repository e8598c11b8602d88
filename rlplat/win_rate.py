"""Inference-time win rates: best-of-N / worst-of-N decoding of one policy against another.

Best-of-N (``bon``) decodes a prompt by drawing N responses and returning the one with the highest
reward; worst-of-N (``won``, best-of-N jailbreaking) returns the lowest. The win rate of policy X
against policy Y under decoder D is

    W_D(N) = E_x [ P(r(D_N(X)) > r(D_N(Y))) + 1/2 P(r(D_N(X)) = r(D_N(Y))) ]      (ties half)

N = 1 is the standard win rate. Estimated from ``n`` sampled rewards per prompt of each policy by
the plug-in estimator: the N draws are taken with replacement from the n samples' empirical
distribution, which gives a closed form on the sorted union ``v_1 < ... < v_K`` of the prompt's
reward values. With ``F_X`` the empirical CDF, the best of N has ``P(max <= v) = F_X(v)^N``, so

    bon:  W = sum_k [F_X(v_k)^N - F_X(v_{k-1})^N] [F_Y(v_{k-1})^N + 1/2 (F_Y(v_k)^N - F_Y(v_{k-1})^N)]

and worst-of-N is best-of-N on negated rewards, seen from the other side: ``W_won(X, Y) =
1 - W_bon(-X, -Y)``. The estimator is consistent as n grows; for N close to n it leans towards ties
(the same sample may be drawn twice), so n should be a few times N. Pure torch, no Ray.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

import torch

DECODERS = ("bon", "won")


def _bon_one_prompt(x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    values = torch.unique(torch.cat([x, y]))  # sorted
    fx = (x.unsqueeze(0) <= values.unsqueeze(1)).double().mean(1) ** n  # P(best of X <= v_k)
    fy = (y.unsqueeze(0) <= values.unsqueeze(1)).double().mean(1) ** n
    fx_left = torch.cat([fx.new_zeros(1), fx[:-1]])
    fy_left = torch.cat([fy.new_zeros(1), fy[:-1]])
    return float(((fx - fx_left) * (fy_left + 0.5 * (fy - fy_left))).sum())


def decoded_win_rate(policy: torch.Tensor, reference: torch.Tensor, n: int, decoder: str = "bon") -> Tuple[float, int]:
    """(win rate of ``policy`` against ``reference``, prompts used) under ``decoder`` over ``n`` draws.

    policy: Float[P, a], reference: Float[P, b]: sampled rewards of each prompt (rows aligned);
    NaN marks a failed reward and is left out; a prompt with no finite reward on either side is
    skipped (not counted in the prompts used)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per decoding) must be an int >= 1, got {n!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if policy.dim() != 2 or reference.dim() != 2 or policy.shape[0] != reference.shape[0]:
        raise ValueError(f"policy and reference must be [P, samples] with the same P, got "
                         f"{tuple(policy.shape)} and {tuple(reference.shape)}")
    if torch.isinf(policy).any() or torch.isinf(reference).any():
        raise ValueError("rewards must be finite (NaN marks a failed reward)")
    sign = 1.0 if decoder == "bon" else -1.0
    wins = []
    for x, y in zip(policy.double(), reference.double()):
        x, y = sign * x[~torch.isnan(x)], sign * y[~torch.isnan(y)]
        if len(x) and len(y):
            w = _bon_one_prompt(x, y, n)  # on negated rewards for won: W_won(X, Y) = 1 - W_bon(-X, -Y)
            wins.append(w if decoder == "bon" else 1.0 - w)
    if not wins:
        raise ValueError("no prompt has a finite reward on both sides")
    return sum(wins) / len(wins), len(wins)


__all__ = ["DECODERS", "decoded_win_rate"]


def win_rate_metrics(records: Sequence[Dict[str, Any]], baseline: Sequence[Dict[str, Any]],
                     ns: Sequence[int]) -> Dict[str, float]:
    """``eval/{bon,won}@{N}_win_rate`` of the sampled rewards in ``records`` against ``baseline``'s
    (``evaluate(..., keep_samples=True)`` records of the same prompts, in the same order)."""
    if [r["index"] for r in records] != [r["index"] for r in baseline]:
        raise ValueError("win rates need the same prompts, in the same order, on both sides")
    def rewards(recs):
        return torch.tensor([[math.nan if x is None else x for x in r["rewards"]] for r in recs], dtype=torch.float64)

    mine, theirs = rewards(records), rewards(baseline)
    return {f"eval/{d}@{n}_win_rate": decoded_win_rate(mine, theirs, n, d)[0] for d in DECODERS for n in ns}
