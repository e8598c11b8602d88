"""SinKD (arXiv 2402.17110): the batch-wise Sinkhorn distance between student and teacher.

Unlike every other divergence here, the value is not per position: it couples all n positions of
a batch. With ``p_s,i = softmax(z_s,i / T)`` (student, differentiable) and ``p_t,j =
softmax(z_t,j / T)`` (teacher, detached), ``i, j = 1..n``:

    W_ij = || p_s,i - p_t,j ||_1                       cost, [n, n], in [0, 2]
    K    = exp(-W / epsilon)                           (kept as log K = -W / epsilon)
    a = b = 1/n                                        uniform marginals
    L times:  v = b / (K^T u),  u = a / (K v)          log space, starting from u = 1
    P    = diag(u) K diag(v)                           rows sum to a exactly, columns to b at convergence
    loss = <P, W> = sum_ij P_ij W_ij

differentiated through the L unrolled iterations (no implicit/envelope gradient). ``epsilon`` is
POT's ``reg`` (``K = exp(-M / reg)``), so at convergence the loss is ``ot.sinkhorn2(a, b, W,
epsilon)``, the transport cost of the entropic plan without its entropy term.

The n values returned are the row sums of ``P * W``: value i is what moving student position
i's mass 1/n to the teacher positions costs. They sum to the batch's distance, so a
mask-and-sum of them is meaningful only when the mask was applied before the call (pass only
the positions to transport; padding would be transported too). The value is >= 0 and, because
of the entropic blur, not 0 when student and teacher are equal (mass also moves between
different positions at cost W_ij > 0; small when those costs are large against epsilon).

Differences from the reference code (github 2018cx/SinKD, ``loss.py``): it normalises the kernel
to row and column sums 1 (total mass n, not 1), ends with a column normalisation, works with K
directly (not in log space) and multiplies the loss by 0.002. So its value is about n times
this one; the weight belongs in the coefficient schedule here.

Large vocabularies: ``top_k=k`` restricts both distributions, for each pair (i, j), to the
teacher position j's top-k ids plus one bucket for the rest::

    W_ij ~ sum_{v in top_k(j)} |p_s,i,v - p_t,j,v| + |S_tail,ij - T_tail,j|

Merging coordinates can only lower an L1 distance (triangle inequality); the error is at most
``2 min(S_tail,ij, T_tail,j)``, and 0 when k = V. The cost then takes ``n x n x k`` memory
instead of ``n x n x V``.

As a loss term (``sinkhorn_term``, reached through ``rlplat.divergences.topk.topk_term``): the n
positions are one micro-batch's masked response positions, the teacher arrives as a ``TopK`` at
the rollout temperature and is softened by ``temperature`` with ``soften_topk`` (an approximation
on the tail), and value i is ``n`` times row i's cost (mean over positions = ``<P, W>``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from rlplat.divergences.registry import DivergenceFn, register
from rlplat.divergences.full import _compute_dtype
from rlplat.divergences.checks import positive
from rlplat.divergences.topk import TopK, teacher_topk


def l1_cost(student_p: torch.Tensor, teacher_p: torch.Tensor) -> torch.Tensor:
    """``W_ij = ||student_p[i] - teacher_p[j]||_1``: probabilities ``[n, V]`` and ``[m, V]`` -> ``[n, m]``."""
    return torch.cdist(student_p, teacher_p, p=1)


def l1_cost_topk(student_logp: torch.Tensor, teacher: TopK) -> torch.Tensor:
    """``W_ij`` on teacher j's top-k ids plus a tail bucket: student log-probs ``[n, V]``, teacher
    ``TopK`` with ``logp``/``ids`` ``[m, k]``, ``tail_logp`` ``[m]`` -> ``[n, m]``. Memory ``n x m x k``."""
    m, k = teacher.ids.shape
    ps = student_logp.index_select(-1, teacher.ids.reshape(-1)).exp().reshape(-1, m, k)  # [n, m, k]
    pt = teacher.logp.detach().to(ps.dtype).exp()  # [m, k]
    s_tail = 1.0 - ps.sum(-1)  # [n, m]: the student's mass outside teacher j's top-k
    t_tail = teacher.tail_logp.detach().to(ps.dtype).exp()  # [m]
    return (ps - pt).abs().sum(-1) + (s_tail - t_tail).abs()


def sinkhorn_plan(cost: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """The entropic transport plan ``P`` ``[n, m]`` after ``iters`` log-space Sinkhorn rounds, uniform
    marginals; differentiable in ``cost`` ``[n, m]`` through every round."""
    if iters < 1:
        raise ValueError(f"sinkhorn_plan: iters must be >= 1, got {iters}")
    n, m = cost.shape
    log_k = cost / -epsilon
    log_a, log_b = -math.log(n), -math.log(m)
    log_u = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    for _ in range(iters):
        # Why log space: with epsilon = 0.1 and costs up to 2, K reaches e^-20 and products of
        # such scalings underflow in float32.
        log_v = log_b - torch.logsumexp(log_k + log_u[:, None], dim=0)
        log_u = log_a - torch.logsumexp(log_k + log_v[None, :], dim=1)
    return torch.exp(log_u[:, None] + log_k + log_v[None, :])


def sinkhorn_rows(cost: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Row sums of ``P * W``, ``[n]``: they sum to the Sinkhorn distance ``<P, W>``."""
    if cost.shape[0] == 0 or cost.shape[1] == 0:
        return cost.sum(-1)
    return (sinkhorn_plan(cost, epsilon, iters) * cost).sum(-1)


def sinkhorn_topk(logits: torch.Tensor, teacher: TopK, epsilon: float = 0.1, iters: int = 20,
                  temperature: float = 2.0) -> torch.Tensor:
    """SinKD values ``[n]`` from student logits ``[n, V]`` and a teacher ``TopK`` ``[n]`` that was taken
    at the same ``temperature`` (e.g. ``teacher_topk(anchor_logits, k, temperature)``)."""
    dtype = _compute_dtype(logits.dtype)
    student = torch.log_softmax(logits.to(dtype) / temperature, -1)
    return sinkhorn_rows(l1_cost_topk(student, teacher), epsilon, iters)


def soften_topk(teacher: TopK, temperature: float) -> TopK:
    """The teacher ``TopK`` ``[n]`` softened by ``temperature``: its k + 1 log-masses (the k ids and
    the tail bucket) divided by ``temperature`` and renormalised over those k + 1 outcomes.

    Exact on the k ids (``softmax(z / tau)`` restricted to them, raised to ``1 / T`` and
    renormalised, is ``softmax(z / (tau T))``) up to the tail's share: the tail is softened as
    one token, ``T_tail^(1/T)``, while the true softened tail is ``sum_{v in tail} T_v^(1/T)``,
    larger for ``T > 1`` (``x -> x^(1/T)`` is subadditive). So for ``T > 1`` the tail mass is
    under-estimated and the k ids' masses over-estimated; exact when the tail is empty (k = V)."""
    k = teacher.ids.shape[-1]
    lp = torch.cat([teacher.logp, teacher.tail_logp.unsqueeze(-1)], -1) / temperature
    lp = lp - torch.logsumexp(lp, -1, keepdim=True)  # -inf (empty tail) stays -inf
    return TopK(lp[..., :k], teacher.ids, lp[..., k])


def sinkhorn_term(epsilon: float = 0.1, iters: int = 20, temperature: float = 2.0):
    """SinKD as a loss term: ``fn(logits [n, V], teacher: TopK [n]) -> [n]``.

    ``logits``: the student's, at the n positions transported together (a micro-batch's masked
    response positions), already divided by the rollout temperature; ``teacher``: its top-k +
    tail at those positions, taken at the rollout temperature (what the teacher scorer sends).
    Both are softened by ``temperature`` here: the student exactly (``logits / temperature``),
    the teacher with ``soften_topk`` (an approximation on the tail, see there).

    Value i is ``n x`` the row sum ``sum_j P_ij W_ij``: the mean cost of moving position i's
    mass (``W`` in [0, 2], so values in [0, 2]); their mean is the distance ``<P, W>`` of the n
    positions. Why ``n x`` the registered function's split: then a term's token mean is the
    distance, independent of n, as for per-position terms (a sum-to-distance split would make
    the loss shrink as ``1 / n``, i.e. depend on the micro-batch size)."""
    def fn(logits: torch.Tensor, teacher: TopK) -> torch.Tensor:
        n = logits.shape[0]
        if logits.dim() != 2 or teacher.ids.shape[0] != n:
            raise ValueError(f"sinkhorn term: logits [n, V] and a TopK [n, k] needed, got {tuple(logits.shape)} "
                             f"and {tuple(teacher.ids.shape)}")
        soft = soften_topk(teacher, temperature)
        dtype = _compute_dtype(logits.dtype)
        soft = TopK(soft.logp.to(dtype), soft.ids.long(), soft.tail_logp.to(dtype))
        return sinkhorn_topk(logits, soft, epsilon, iters, temperature) * n

    fn.batchwise = True  # the values couple the n positions: the caller gathers what to transport
    return fn


@register("sinkhorn", samples="full")
def sinkhorn(epsilon: float = 0.1, iters: int = 20, temperature: float = 2.0,
             top_k: Optional[int] = None) -> DivergenceFn:
    """Batch-wise Sinkhorn distance (SinKD): ``fn(logits [n, V], anchor_logits [n, V]) -> [n]``,
    values summing to ``<P, W>`` (nats-free: W is an L1 distance between probabilities, in [0, 2]).
    Leading dims ``[..., V]`` are flattened to n positions, all transported together.
    ``top_k``: restrict the cost to each teacher position's top-k ids plus a tail bucket."""
    owner = "divergence 'sinkhorn'"
    eps, temp = positive(owner, "epsilon", epsilon), positive(owner, "temperature", temperature)
    n_iters = positive(owner, "iters", iters, integer=True)
    k = None if top_k is None else positive(owner, "top_k", top_k, integer=True)

    def fn(logits: torch.Tensor, anchor_logits: torch.Tensor) -> torch.Tensor:
        if logits.shape != anchor_logits.shape or logits.dim() == 0:
            raise ValueError(f"sinkhorn: logits shape {tuple(logits.shape)} != anchor_logits shape "
                             f"{tuple(anchor_logits.shape)}, or no vocab dim")
        vocab, lead = logits.shape[-1], logits.shape[:-1]
        z, za = logits.reshape(-1, vocab), anchor_logits.detach().reshape(-1, vocab)
        dtype = _compute_dtype(z.dtype)
        if k is None or k >= vocab:
            student = torch.softmax(z.to(dtype) / temp, -1)
            teacher = torch.softmax(za.to(dtype) / temp, -1)
            values = sinkhorn_rows(l1_cost(student, teacher), eps, n_iters)
        else:
            values = sinkhorn_topk(z, teacher_topk(za, k, temp), eps, n_iters, temp)
        return values.reshape(lead)

    # How a loss term trains it against a teacher's TopK (rlplat.divergences.topk.topk_term).
    fn.on_topk = None if k is not None else sinkhorn_term(eps, n_iters, temp)
    return fn
