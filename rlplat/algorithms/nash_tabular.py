"""Exact tabular Nash-MP (Mirror Prox) on one prompt with a finite response set.

The reference implementation of the update rule of docs/algorithms.md#nash-mp, used by the tests
to check convergence to the equilibrium of the regularised preference game
``pi*(y) ~ pi_ref(y) exp(P(y > pi*) / beta)``. Shapes: policies are Float[Y] on the simplex,
``pref`` is Float[Y, Y] with ``pref[y, y'] = P(y > y')`` and ``pref + pref.T == 1``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch


def win_prob(pref: torch.Tensor, opponent: torch.Tensor) -> torch.Tensor:
    """Float[Y]: P(y > opponent) = sum_y' opponent(y') P(y > y')."""
    return pref @ opponent


def proximal_step(pi_k: torch.Tensor, pi_ref: torch.Tensor, opponent: torch.Tensor, pref: torch.Tensor,
                  beta: float, eta: float) -> torch.Tensor:
    """argmin_pi -P(pi > opponent)/beta + KL(pi||pi_ref) + (1/eta) KL(pi||pi_k), in closed form:
    pi ~ [pi_ref^eta * pi_k * exp((eta/beta) P(y > opponent))]^(1/(1+eta))."""
    logits = (eta * pi_ref.log() + pi_k.log() + (eta / beta) * win_prob(pref, opponent)) / (1 + eta)
    return torch.softmax(logits, dim=-1)


def mirror_prox(pi_ref: torch.Tensor, pref: torch.Tensor, beta: float, eta: float, iterations: int) -> List[torch.Tensor]:
    """Iterates pi_0 = pi_ref, ..., pi_K: half step against pi_k, full step against pi_{k+1/2},
    both anchored at pi_k."""
    pis = [pi_ref.clone()]
    for _ in range(iterations):
        pi_k = pis[-1]
        half = proximal_step(pi_k, pi_ref, pi_k, pref, beta, eta)
        pis.append(proximal_step(pi_k, pi_ref, half, pref, beta, eta))
    return pis


def mirror_descent(pi_ref: torch.Tensor, pref: torch.Tensor, beta: float, eta: float, iterations: int) -> List[torch.Tensor]:
    """The one-step baseline with the same step size: only the half step, every iteration."""
    pis = [pi_ref.clone()]
    for _ in range(iterations):
        pis.append(proximal_step(pis[-1], pi_ref, pis[-1], pref, beta, eta))
    return pis


def equilibrium(pi_ref: torch.Tensor, pref: torch.Tensor, beta: float, tol: float = 1e-13, max_iter: int = 200) -> Tuple[torch.Tensor, float]:
    """pi* of the regularised game, independent of the Mirror-Prox rule: Newton's method with
    backtracking on F(pi) = pi - softmax(log pi_ref + P(y > pi)/beta) = 0.
    Returns (pi*, max |F(pi*)|)."""

    def residual(pi: torch.Tensor) -> torch.Tensor:
        return pi - torch.softmax(pi_ref.log() + win_prob(pref, pi) / beta, dim=-1)

    pi = pi_ref.clone()
    for _ in range(max_iter):
        f = residual(pi)
        norm = f.abs().max().item()
        if norm < tol:
            return pi, norm
        jac = torch.autograd.functional.jacobian(residual, pi)
        step = torch.linalg.solve(jac, f)
        t = 1.0
        while t > 1e-8:
            cand = pi - t * step
            if bool((cand > 0).all()) and residual(cand).abs().max().item() < norm:
                break
            t *= 0.5
        pi = cand / cand.sum()
    raise RuntimeError(f"equilibrium not reached, residual {norm}")


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p||q) in nats (0 log 0 = 0; inf where p > 0 = q)."""
    return float((torch.xlogy(p, p) - torch.xlogy(p, q)).sum())


def exploitability(pi: torch.Tensor, pi_ref: torch.Tensor, pref: torch.Tensor, beta: float) -> float:
    """e(pi) of the regularised game: ``max_pi' [P(pi' > pi) - beta KL(pi'||pi_ref)] - [P(pi > pi) -
    beta KL(pi||pi_ref)]``, the max being ``beta log sum_y pi_ref(y) exp(P(y > pi) / beta)`` (attained
    by the Gibbs response ``pi'(y) ~ pi_ref(y) exp(P(y > pi) / beta)``). >= 0, and 0 only at the
    equilibrium (rounding may leave it ~1e-16 below 0 there); inf when pi puts mass where pi_ref has none."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    w = win_prob(pref, pi)
    best = beta * float(torch.logsumexp(pi_ref.log() + w / beta, dim=-1))
    return best - (float(pi @ w) - beta * kl(pi, pi_ref))  # P(pi > pi) is 1/2 for an antisymmetric game


def random_preference(num_responses: int, generator: torch.Generator) -> torch.Tensor:
    """A random antisymmetric preference matrix: P = sigmoid(S - S^T) for Gaussian S."""
    s = torch.randn(num_responses, num_responses, generator=generator, dtype=torch.float64) * 2.0
    return torch.sigmoid(s - s.T)
