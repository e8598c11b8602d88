"""Teacher top-k distributions, and full divergences evaluated on their (top-k + tail) support.

A teacher's whole next-token distribution is ``[n, V]`` per micro-batch, too much to move through
Ray for V ~ 128k. ``TopK`` is the compact form: per position the ``k`` most likely token ids, their
log-probabilities (normalised over the FULL vocabulary, after temperature) and the log of the mass
left outside them (the tail). That is ``2k + 1`` numbers a position instead of ``V``.

``topk_divergence(name, **params)`` evaluates a registered full divergence (``full_forward_kl``,
``full_reverse_kl``, ``full_jsd`` or any other built with ``full.make_full``) between the student's
full logits and such a teacher, on one of two supports:

* ``support="tail"`` (default). Both distributions are coarsened to ``k + 1`` outcomes: the k
  teacher ids and one bucket for the other ``V - k`` tokens::

      T' = (T_id1, ..., T_idk, T_tail)      S' = (S_id1, ..., S_idk, S_tail)

  ``S_tail`` is exact (from the student's full logits), so both are proper distributions and the
  value is ``D(T', S')``. Coarsening is a deterministic channel, so for every f-divergence (both
  KLs, JSD_beta) the data-processing inequality gives ``D(T', S') <= D(T, S)``: the error is
  ``>= 0`` and, by the chain rule, exactly the tail's conditional term::

      KL(T||S) - KL(T'||S') = T_tail KL(T|tail || S|tail)
      KL(S||T) - KL(S'||T') = S_tail KL(S|tail || T|tail)

  ``tail_error_bound`` turns that into numbers computable at training time (see there). The
  value is exact when the tail is empty (``k = V``). The gradient reaches every student logit:
  the bucket moves the student's off-top-k mass as a whole, ``d/dz_v = G_tail S_v / S_tail``
  for tail tokens, without preferring one tail token over another.
* ``support="renorm"``. Both distributions renormalised on the k ids, tail dropped:
  ``D(T_k / sum T_k, S_k / sum S_k)``. No inequality holds (the value can be above or below the
  full one) and it is blind to how much mass the student puts outside the teacher's top-k: a
  student with the right shape on the k ids but 90% of its mass elsewhere scores 0. Its gradient
  reaches only the k logits. Kept for comparison with implementations that do this.

Memory: positions are processed ``chunk_size`` at a time in the forward and the backward (a
custom autograd function that saves the student logits, the ids and the ``[n, k + 1]`` teacher
log-probs, and recomputes each chunk), so beyond the inputs and the ``[n, V]`` gradient, peak
memory is a few ``chunk_size x V`` buffers. Half-precision logits are computed in float32.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch.autograd.function import once_differentiable

import rlplat.divergences.registry as D
from rlplat.divergences.full import _compute_dtype, _resolve_chunk
from rlplat.divergences.checks import positive

SUPPORTS = ("tail", "renorm")
_NEG_INF = float("-inf")


class TopK(NamedTuple):
    """A teacher's next-token distribution in compact form; leading dims ``[...]`` (usually ``[n]``).

    ``logp``: Float ``[..., k]``, log-probabilities (nats) of the k most likely tokens, normalised
    over the full vocabulary, in decreasing order. ``ids``: Long ``[..., k]``, their token ids
    (distinct within a position). ``tail_logp``: Float ``[...]``, ``log(1 - sum exp(logp))``, the log
    mass of the other ``V - k`` tokens (``-inf`` when ``k = V``).
    """

    logp: torch.Tensor
    ids: torch.Tensor
    tail_logp: torch.Tensor


@torch.no_grad()
def teacher_topk(anchor_logits: torch.Tensor, k: int, temperature: float = 1.0,
                 chunk_size: Optional[int] = None) -> TopK:
    """The top-k of ``softmax(anchor_logits / temperature)``; ``anchor_logits`` ``[..., V]``, ``1 <= k <= V``.

    The tail is computed exactly, as the log-sum-exp of the logits outside the top k (not as
    ``1 - sum`` of the top-k probabilities, which float32 cannot resolve below about 1e-7).
    Chunked over positions: one ``chunk_size x V`` buffer at a time. Returns float32 for half
    inputs, the input dtype otherwise.
    """
    k = positive("teacher_topk", "k", k, integer=True)
    temperature = positive("teacher_topk", "temperature", temperature)
    vocab = anchor_logits.shape[-1]
    if k > vocab:
        raise ValueError(f"teacher_topk: k={k} exceeds the vocabulary size {vocab}")
    lead = anchor_logits.shape[:-1]
    z = anchor_logits.reshape(-1, vocab)
    dtype = _compute_dtype(z.dtype)
    n = z.shape[0]
    logp = torch.empty(n, k, dtype=dtype, device=z.device)
    ids = torch.empty(n, k, dtype=torch.long, device=z.device)
    tail = torch.empty(n, dtype=dtype, device=z.device)
    chunk = _resolve_chunk(chunk_size, vocab)
    for lo in range(0, n, chunk):
        zc = z[lo : lo + chunk].to(dtype) / temperature
        lse = torch.logsumexp(zc, -1)
        top = zc.topk(k, dim=-1)
        logp[lo : lo + chunk] = top.values - lse[:, None]
        ids[lo : lo + chunk] = top.indices
        tail[lo : lo + chunk] = torch.logsumexp(zc.scatter_(-1, top.indices, _NEG_INF), -1) - lse
    return TopK(logp.reshape(*lead, k), ids.reshape(*lead, k), tail.reshape(lead))


# --- the reduced (k + 1)-outcome student -----------------------------------------------------


def _student_reduced(z: torch.Tensor, ids: torch.Tensor, tail: bool):
    """Student log-probs on the reduced support: ``[c, k + 1]`` (tail) or ``[c, k]`` (renorm).

    ``z``: one chunk of student logits ``[c, V]`` in the compute dtype, a fresh buffer (it is
    overwritten: the tail's logits are all that is kept of it). Also returns, for the tail
    support, the buffer holding the logits with the top-k set to ``-inf`` and its log-sum-exp.
    """
    top = z.gather(-1, ids)
    if not tail:
        return top - torch.logsumexp(top, -1, keepdim=True), None, None
    lse = torch.logsumexp(z, -1, keepdim=True)
    rest = z.scatter_(-1, ids, _NEG_INF)  # in place: z is this chunk's own buffer
    rest_lse = torch.logsumexp(rest, -1, keepdim=True)  # -inf when the tail is empty (k = V)
    return torch.cat([top - lse, rest_lse - lse], -1), rest, rest_lse


def _reduced_grad(value_fn, grad_fn, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d value / d (reduced logits) ``[c, m]``: the divergence on m outcomes as a softmax of s."""
    if grad_fn is not None:
        return grad_fn(s.clone(), t.clone())  # grad_fn may overwrite its arguments
    with torch.enable_grad():
        r = s.detach().clone().requires_grad_(True)
        v = value_fn(torch.log_softmax(r, -1), t)
        (d,) = torch.autograd.grad(v, r, torch.ones_like(v))
    # Outcomes empty on both sides (the tail when k = V) carry no gradient; autograd would give
    # 0 * inf = NaN through their -inf log-probs.
    return d.masked_fill_((s == _NEG_INF) & (t == _NEG_INF), 0.0)


class _ChunkedTopK(torch.autograd.Function):
    """values[n] = value(student on the reduced support, teacher t[n, m]), chunked; grad to z only."""

    @staticmethod
    def forward(ctx, z, ids, t, value_fn, grad_fn, chunk, tail):  # z [N, V], ids [N, k], t [N, m]
        dtype = _compute_dtype(z.dtype)
        out = torch.empty(z.shape[0], dtype=dtype, device=z.device)
        for lo in range(0, z.shape[0], chunk):
            s, _, _ = _student_reduced(z[lo : lo + chunk].to(dtype, copy=True), ids[lo : lo + chunk], tail)
            out[lo : lo + chunk] = value_fn(s, t[lo : lo + chunk])
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(z, ids, t)
        ctx.value_fn, ctx.grad_fn, ctx.chunk, ctx.tail = value_fn, grad_fn, chunk, tail
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # [N]
        z, ids, t = ctx.saved_tensors
        dtype = _compute_dtype(z.dtype)
        grad = torch.empty_like(z)
        k = ids.shape[-1]
        for lo in range(0, z.shape[0], ctx.chunk):
            idc = ids[lo : lo + ctx.chunk]
            s, rest, rest_lse = _student_reduced(z[lo : lo + ctx.chunk].to(dtype, copy=True), idc, ctx.tail)
            g_red = _reduced_grad(ctx.value_fn, ctx.grad_fn, s, t[lo : lo + ctx.chunk])
            if ctx.tail:
                # Chain rule through the bucket's logit log sum_{v in tail} exp(z_v): each tail
                # token gets G_tail * S_v / S_tail; an empty tail (rest_lse = -inf) gets 0.
                d = rest.sub_(rest_lse.masked_fill(rest_lse == _NEG_INF, 0.0)).exp_().mul_(g_red[:, k:])
            else:
                d = torch.zeros(s.shape[0], z.shape[-1], dtype=dtype, device=z.device)
            d.scatter_(-1, idc, g_red[:, :k])  # the top-k ids are singletons: their own gradient
            grad[lo : lo + ctx.chunk] = d.mul_(grad_out[lo : lo + ctx.chunk].to(dtype).unsqueeze(-1))
        return grad, None, None, None, None, None, None


TopKFn = Callable[[torch.Tensor, TopK], torch.Tensor]


def topk_divergence(name: str, support: str = "tail", chunk_size: Optional[int] = None, **params) -> TopKFn:
    """``fn(logits [..., V], teacher: TopK [...]) -> values [...]``: the registered full divergence
    ``name`` (built with ``params``, e.g. ``beta`` for ``full_jsd``) between ``softmax(logits)``
    (the student, differentiable) and the teacher, on ``support`` ``"tail"`` or ``"renorm"``
    (module docstring). ``logits`` must already be divided by the temperature the teacher's top-k
    was taken at. Values in nats, float32 for half inputs; gradients in the logits' dtype.
    """
    if support not in SUPPORTS:
        raise ValueError(f"topk_divergence: param support must be one of {SUPPORTS}, got {support!r}")
    if chunk_size is not None:
        chunk_size = positive("topk_divergence", "chunk_size", chunk_size, integer=True)
    if D.info(name) != "full":
        raise ValueError(f"topk_divergence: '{name}' is not a full-distribution divergence")
    full_fn = D.get(name, **params)
    value_fn = getattr(full_fn, "value_fn", None)
    if value_fn is None:
        raise ValueError(f"topk_divergence: '{name}' was not built with full.make_full; it has no per-position kernel")
    grad_fn = full_fn.grad_fn
    tail = support == "tail"

    def fn(logits: torch.Tensor, teacher: TopK) -> torch.Tensor:
        vocab, k = logits.shape[-1], teacher.ids.shape[-1]
        lead = logits.shape[:-1]
        shapes_ok = teacher.ids.shape == (*lead, k) == teacher.logp.shape and teacher.tail_logp.shape == lead
        if not shapes_ok:
            raise ValueError(
                f"topk_divergence: logits {tuple(logits.shape)} need teacher logp/ids [..., k] and tail_logp [...] "
                f"with the same leading dims; got {tuple(teacher.logp.shape)}, {tuple(teacher.ids.shape)}, "
                f"{tuple(teacher.tail_logp.shape)}")
        if not 1 <= k <= vocab:
            raise ValueError(f"topk_divergence: k={k} must be in [1, V={vocab}]")
        dtype = _compute_dtype(logits.dtype)
        t = teacher.logp.detach().to(dtype).reshape(-1, k)
        if tail:
            t = torch.cat([t, teacher.tail_logp.detach().to(dtype).reshape(-1, 1)], -1)
        else:
            t = t - torch.logsumexp(t, -1, keepdim=True)
        out = _ChunkedTopK.apply(logits.reshape(-1, vocab), teacher.ids.reshape(-1, k).long(), t,
                                 value_fn, grad_fn, int(_resolve_chunk(chunk_size, vocab)), tail)
        return out.reshape(lead)

    return fn


# --- what the tail bucket can cost -------------------------------------------------------------


def tail_error_bound(name: str, logits: torch.Tensor, teacher: TopK, beta: float = 0.5) -> torch.Tensor:
    """An upper bound ``[...]`` on ``D(T, S) - D(T', S') >= 0`` (full value minus the tail-support
    value) from the student's logits ``[..., V]`` and the teacher's ``TopK`` alone.

    * ``full_jsd`` (0 < beta < 1): with ``M_tail = beta T_tail + (1-beta) S_tail`` and
      ``lam = beta T_tail / M_tail``, the error is ``beta T_tail KL(T|tail||M|tail) + (1-beta) S_tail
      KL(S|tail||M|tail)``; since ``M_v >= beta T_v`` the first KL is ``<= log(M_tail / (beta T_tail))``,
      and likewise the second, so error ``<= M_tail H(lam) <= M_tail log 2`` (H: binary entropy).
    * ``full_forward_kl`` (and ``full_jsd`` at beta 0): the error is ``T_tail KL(T|tail||S|tail)``.
      No tail token is likelier under the teacher than its k-th token (``T_k``), so
      ``sum q log q <= log min(1, T_k / T_tail)``, and the cross-entropy term is at most
      ``log S_tail - min_{v in tail} log S_v``. Loose (it uses the student's least likely tail
      token) but computable.
    * ``full_reverse_kl`` (``full_jsd`` at beta 1): the error ``S_tail KL(S|tail||T|tail)`` grows
      without bound as the teacher's mass on a single tail token goes to 0, which the top-k cannot
      see: no bound exists from this information, so this raises ``ValueError``.
    """
    if name == "full_jsd" and beta in (0, 1):
        name = "full_forward_kl" if beta == 0 else "full_reverse_kl"
    if name == "full_reverse_kl":
        raise ValueError("tail_error_bound: the reverse KL's tail error is not bounded by top-k information")
    vocab = logits.shape[-1]
    z = logits.detach().to(_compute_dtype(logits.dtype))
    lse = torch.logsumexp(z, -1)
    rest = z.scatter(-1, teacher.ids.long(), _NEG_INF)
    s_tail = torch.logsumexp(rest, -1) - lse  # log S_tail
    t_tail = teacher.tail_logp.to(z.dtype)
    if name == "full_jsd":
        pt, ps = beta * t_tail.exp(), (1 - beta) * s_tail.exp()
        m = pt + ps
        lam = torch.where(m > 0, pt / m, torch.zeros_like(m))
        entropy = -(torch.special.xlogy(lam, lam) + torch.special.xlogy(1 - lam, 1 - lam))
        return m * entropy
    if name != "full_forward_kl":
        raise ValueError(f"tail_error_bound: no bound for '{name}'; known: full_forward_kl, full_jsd")
    if teacher.ids.shape[-1] == vocab:
        return torch.zeros_like(lse)
    t_k = teacher.logp.to(z.dtype).min(-1).values  # log T_k, the k-th largest teacher prob
    self_term = torch.clamp(t_k - t_tail, max=0.0)
    min_tail = (rest - lse[..., None]).masked_fill(rest == _NEG_INF, float("inf")).min(-1).values
    return torch.where(t_tail == _NEG_INF, torch.zeros_like(lse), t_tail.exp() * (self_term + s_tail - min_tail))


# --- what a loss term trains with ---------------------------------------------------------------


def topk_term(name: str, chunk_size: Optional[int] = None, **params) -> TopKFn:
    """``fn(logits [n, V], teacher: TopK [n]) -> [n]``: what a full-distribution loss term with
    divergence ``name`` computes against the anchor's top-k. A per-position divergence
    (``full_forward_kl``, ``full_reverse_kl``, ``full_jsd``) is ``topk_divergence(name,
    support="tail")`` (``fn.batchwise`` False); a batch-wise one (``sinkhorn``) gives its own
    ``on_topk`` form (``fn.batchwise`` True: its values couple the n positions, so the caller must
    pass exactly the positions to transport together). Bad params raise ``ValueError``."""
    if D.info(name) != "full":
        raise ValueError(f"topk_term: '{name}' is not a full-distribution divergence")
    built = D.get(name, **params)
    if hasattr(built, "on_topk"):
        if chunk_size is not None:
            raise ValueError(f"'{name}' takes no param chunk_size (it is not chunked over positions)")
        if built.on_topk is None:
            raise ValueError(f"'{name}': param top_k is for the dense call only; a loss term is restricted to the "
                             "top-k the anchor sends (roles.teacher.top_k_logits)")
        return built.on_topk
    fn = topk_divergence(name, support="tail", chunk_size=chunk_size, **params)
    fn.batchwise = False
    return fn
