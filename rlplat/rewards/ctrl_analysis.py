"""Exact best/worst-of-N win rate and KL of CTRL's optimum in the idealised calibrated model.

Model: under pi_ref the calibrated reward ``c`` is exactly Uniform[0, 1] (continuous rewards, m -> inf).
The maximiser of ``E_pi[Phi(c)] - beta KL(pi || pi_ref)`` is ``pi_ref`` tilted by ``exp(Phi(c) / beta)``,
so on the c axis the aligned policy has density ``p(u) = exp(Phi(u) / beta) / Z`` on [0, 1], and both
its KL to pi_ref and its inference-time win rates depend only on ``Phi``, ``beta`` and ``N``: not on the
prompt, the reward model or the base policy. This is what makes a per-N choice of the transformation's
parameter possible before any training.

Win rates (ties have probability 0 here):
- ``bon``: P(max of N draws of p > max of N draws of Uniform) = integral d(F(u)^N) u^N;
- ``won``: P(min of N draws of p > min of N draws of Uniform) = integral d(1 - (1 - F(u))^N) (1 - (1 - u)^N),
where F is p's CDF. N = 1 is the standard win rate ``E_p[c]``.

Computed on a midpoint grid of ``grid`` cells in float64 (error O(grid^-2): under 3e-8 measured at the default for
smooth p). ``best_t`` is rlplat's rule for choosing t from N, NOT the paper's (see
``rlplat.rewards.transforms``): the t of a candidate set whose optimum, at the given KL, has the
highest win rate under the matching decoder.

Pure torch, no Ray.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple

import torch

DECODERS = ("bon", "won")
DEFAULT_TS: Tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per decoding) must be an int >= 1, got {n!r}")
    return n


def tilted_win_rate_kl(phi: Callable[[torch.Tensor], torch.Tensor], beta: float, n: int, decoder: str = "bon",
                       grid: int = 20_000) -> Tuple[float, float]:
    """(win rate, KL in nats) of the policy with c-density ``exp(phi(u) / beta) / Z`` against pi_ref,
    both decoded with ``decoder`` ("bon" or "won") over ``n`` samples. ``phi`` maps Float64[grid] -> Float64[grid]."""
    n = _check_n(n)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    logw = phi(u).to(torch.float64) / beta
    mass = torch.softmax(logw, 0)  # each cell's probability under p
    # KL(p || Uniform) = sum mass * log(density), density = mass * grid; log_softmax keeps the tails exact.
    kl = float((mass * (torch.log_softmax(logw, 0) + math.log(grid))).sum())
    cdf = torch.cumsum(mass, 0).clamp(max=1.0)
    cdf_left = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    if decoder == "bon":
        win = ((cdf**n - cdf_left**n) * u**n).sum()
    else:
        win = (((1 - cdf_left) ** n - (1 - cdf) ** n) * (1 - (1 - u) ** n)).sum()
    return float(win), max(kl, 0.0)


def beta_for_kl(phi: Callable[[torch.Tensor], torch.Tensor], kl: float, grid: int = 20_000, iters: int = 100) -> float:
    """The beta at which the tilt by ``phi`` has KL ``kl`` to pi_ref (bisection in log beta; KL falls
    as beta grows). Raises when ``kl`` is out of reach on this grid."""
    if not (isinstance(kl, (int, float)) and 0 < kl < math.log(grid) / 2):
        raise ValueError(f"kl must be in (0, {math.log(grid) / 2:.2f}) nats, got {kl!r}")
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    span = float(phi(u).max() - phi(u).min())
    if not span > 0:
        raise ValueError("phi is constant on [0, 1]: no beta moves the policy")
    lo, hi = math.log(span) - 700.0, math.log(span) + 20.0  # log beta; a steep exponential needs beta << span
    kl_at = lambda log_beta: tilted_win_rate_kl(phi, math.exp(log_beta), 1, "bon", grid)[1]  # noqa: E731
    if kl_at(lo) < kl:
        raise ValueError(f"kl={kl} is beyond the reach of this transformation on a grid of {grid}")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kl_at(mid) > kl else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def best_t(kind: str, n: int, kl: float, ts: Sequence[float] = DEFAULT_TS, grid: int = 20_000) -> float:
    """rlplat's rule (not the paper's): the t in ``ts`` whose ``kind`` transformation ("bon":
    ``exp(t c)``, "won": ``-exp(-t c)``), at the beta giving KL ``kl``, has the highest ``kind``-of-``n``
    win rate against pi_ref. The first of equal candidates wins."""
    from rlplat.rewards import transforms

    if kind not in DECODERS:
        raise ValueError(f"kind must be one of {DECODERS}, got {kind!r}")
    _check_n(n)
    if not ts:
        raise ValueError("ts (candidate values of t) is empty")
    best, best_win = None, -1.0
    for t in ts:
        phi = lambda u, t=t: transforms.get(kind)(u, t=t)  # noqa: E731
        win = tilted_win_rate_kl(phi, beta_for_kl(phi, kl, grid), n, kind, grid)[0]
        if win > best_win + 1e-12:
            best, best_win = float(t), win
    return best


__all__ = ["DECODERS", "DEFAULT_TS", "best_t", "beta_for_kl", "tilted_win_rate_kl"]
