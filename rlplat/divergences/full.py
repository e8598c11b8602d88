"""Full-distribution divergences between two next-token distributions, computed in chunks.

Every estimator here maps ``(logits, anchor_logits)`` -> ``values``: ``logits`` and
``anchor_logits`` are ``[..., V]`` (same shape, unnormalised, any float dtype), ``values`` is
``[...]``: the exact divergence at each position, in nats. Policy = S = softmax(logits)
(the student), anchor = T = softmax(anchor_logits) (the teacher / reference).

Memory: the leading dims are flattened to ``N`` positions, which are processed ``chunk_size``
at a time, in the forward *and* in the backward (a custom autograd.Function that saves only
its two inputs and recomputes each chunk's softmaxes in the backward). Beyond the inputs and
the ``[N, V]`` gradient the caller asks for, peak memory is a few ``chunk_size x V`` buffers,
instead of the several ``N x V`` intermediates autograd would keep for the naive formula.
Half-precision inputs are computed in float32; values come back in float32, gradients in
the logits' dtype. Anchor logits may hold ``-inf`` (e.g. outside a teacher's top-k): zero-
probability terms contribute exactly 0 instead of ``0 * log 0`` NaNs.

A new full divergence is a function ``value(s, t) -> [n]`` of log-probs ``s, t`` ``[n, V]``
(optionally with its analytic gradient with respect to the policy logits) wrapped by
``make_full`` and registered with ``samples="full"``.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch
from torch.autograd.function import once_differentiable

from rlplat.divergences.registry import DivergenceFn, register
from rlplat.divergences.checks import positive

# Elements of one [chunk, V] buffer when chunk_size is not given: 4 Mi elements (16 MiB in
# float32) is large enough for full-speed kernels and keeps the working set a few such buffers.
AUTO_CHUNK_ELEMENTS = 1 << 22

ValueFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 softmax sums over 100k+ entries lose too much precision.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _resolve_chunk(chunk_size: Optional[int], vocab: int) -> int:
    return chunk_size if chunk_size is not None else max(1, AUTO_CHUNK_ELEMENTS // max(vocab, 1))


def _plogdiff(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``p * (a - b)`` with the convention ``0 * anything = 0`` (no ``0 * inf`` NaN).

    In place on one fresh buffer: these run on [chunk, V] blocks, where every temporary counts.
    """
    out = torch.sub(a, b).mul_(p)
    return out.masked_fill_(p == 0, 0.0)


def _log_softmax_pair(z: torch.Tensor, za: torch.Tensor, dtype: torch.dtype):
    return torch.log_softmax(z.to(dtype), dim=-1), torch.log_softmax(za.to(dtype), dim=-1)


class _ChunkedFull(torch.autograd.Function):
    """values[n] = value(log_softmax(z[n]), log_softmax(za[n])), chunked over n; grad to z only."""

    @staticmethod
    def forward(ctx, z, za, value_fn, grad_fn, chunk):  # z, za: [N, V]
        dtype = _compute_dtype(z.dtype)
        out = torch.empty(z.shape[0], dtype=dtype, device=z.device)
        for lo in range(0, z.shape[0], chunk):
            s, t = _log_softmax_pair(z[lo : lo + chunk], za[lo : lo + chunk], dtype)
            out[lo : lo + chunk] = value_fn(s, t)
        if ctx.needs_input_grad[0]:
            # Only the inputs are kept; each chunk is recomputed in the backward.
            ctx.save_for_backward(z, za)
        ctx.value_fn, ctx.grad_fn, ctx.chunk = value_fn, grad_fn, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # grad_out: [N]
        z, za = ctx.saved_tensors
        dtype = _compute_dtype(z.dtype)
        grad = torch.empty_like(z)
        chunk = ctx.chunk
        for lo in range(0, z.shape[0], chunk):
            g = grad_out[lo : lo + chunk].to(dtype).unsqueeze(-1)
            if ctx.grad_fn is not None:
                s, t = _log_softmax_pair(z[lo : lo + chunk], za[lo : lo + chunk], dtype)
                d = ctx.grad_fn(s, t)
            else:
                with torch.enable_grad():
                    zc = z[lo : lo + chunk].detach().to(dtype).requires_grad_(True)
                    t = torch.log_softmax(za[lo : lo + chunk].to(dtype), dim=-1)
                    v = ctx.value_fn(torch.log_softmax(zc, dim=-1), t)
                    (d,) = torch.autograd.grad(v, zc, torch.ones_like(v))
            grad[lo : lo + chunk] = d.mul_(g)  # d is a fresh buffer: scale it in place
        return grad, None, None, None, None


def make_full(value_fn: ValueFn, grad_fn: Optional[GradFn] = None, chunk_size: Optional[int] = None) -> DivergenceFn:
    """Wrap a per-position divergence into a chunked ``fn(logits[..., V], anchor_logits[..., V]) -> [...]``.

    ``value_fn(s, t) -> [n]`` and the optional ``grad_fn(s, t) -> [n, V]`` (d value / d policy
    logits) take log-probs ``s`` (policy) and ``t`` (anchor), ``[n, V]``, fresh per-chunk buffers
    that ``grad_fn`` may overwrite (``value_fn`` must not). Without ``grad_fn`` the backward
    differentiates ``value_fn`` with autograd, one chunk at a time.
    ``chunk_size``: positions per chunk (default: about ``AUTO_CHUNK_ELEMENTS / V``).
    """
    if chunk_size is not None:
        chunk_size = positive("full divergence", "chunk_size", chunk_size, integer=True)

    def full_divergence(logits: torch.Tensor, anchor_logits: torch.Tensor) -> torch.Tensor:
        shape = tuple(logits.shape)
        if logits.shape != anchor_logits.shape:
            other = tuple(anchor_logits.shape)
            raise ValueError(f"full divergence: logits shape {shape} != anchor_logits shape {other}")
        if logits.dim() == 0 or logits.shape[-1] == 0:
            raise ValueError(f"full divergence: logits need a non-empty vocab dim [..., V], got shape {shape}")
        vocab = logits.shape[-1]
        lead = logits.shape[:-1]
        chunk = _resolve_chunk(chunk_size, vocab)
        out = _ChunkedFull.apply(
            logits.reshape(-1, vocab), anchor_logits.detach().reshape(-1, vocab), value_fn, grad_fn, int(chunk)
        )
        return out.reshape(lead)

    # The kernels travel with the estimator, so the same registered divergence can be evaluated
    # on another support (rlplat.divergences.topk: the teacher's top-k plus a tail bucket).
    full_divergence.value_fn, full_divergence.grad_fn = value_fn, grad_fn
    return full_divergence


# --- the kernels: s = log pi (policy / student), t = log anchor (teacher), [n, V] -----------


def forward_kl_value(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """KL(anchor||pi) = sum_v T (t - s)."""
    return _plogdiff(t.exp(), t, s).sum(-1)


def forward_kl_grad(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d KL(T||S) / d logits = S - T."""
    return s.exp_().sub_(t.exp_())  # in place: s and t are this chunk's own buffers


def reverse_kl_value(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """KL(pi||anchor) = sum_v S (s - t)."""
    return _plogdiff(s.exp(), s, t).sum(-1)


def reverse_kl_grad(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d KL(S||T) / d logits = S (s - t - KL(S||T))."""
    p = s.exp()
    kl = _plogdiff(p, s, t).sum(-1, keepdim=True)
    return _plogdiff(p, s, t.add_(kl))  # t is this chunk's own buffer


def _log_mixture(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """log M, M = beta T + (1 - beta) S, for 0 < beta < 1."""
    return torch.logaddexp(t + math.log(beta), s + math.log1p(-beta))


def jsd_value(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD_beta(T, S) = beta KL(T||M) + (1-beta) KL(S||M); beta 0 / 1 give KL(T||S) / KL(S||T)."""
    if beta == 0.0:
        return forward_kl_value(s, t)
    if beta == 1.0:
        return reverse_kl_value(s, t)
    m = _log_mixture(s, t, beta)
    return beta * _plogdiff(t.exp(), t, m).sum(-1) + (1.0 - beta) * _plogdiff(s.exp(), s, m).sum(-1)


def jsd_grad(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """d JSD_beta / d logits = (1-beta) S (s - m - KL(S||M)).

    Why: JSD_beta = sum [beta T log T + (1-beta) S log S - M log M], so d/dS_v = (1-beta)(s_v - m_v);
    the softmax Jacobian turns g into S (g - sum S g).
    """
    if beta == 0.0:
        return forward_kl_grad(s, t)
    if beta == 1.0:
        return reverse_kl_grad(s, t)
    m = _log_mixture(s, t, beta)
    p = s.exp()
    kl_sm = _plogdiff(p, s, m).sum(-1, keepdim=True)
    return _plogdiff(p, s, m.add_(kl_sm)).mul_(1.0 - beta)


def _beta(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"divergence 'full_jsd': param beta must be a real number, got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"divergence 'full_jsd': param beta must be in [0, 1], got {value}")
    return value


@register("full_forward_kl", samples="full")
def full_forward_kl(chunk_size: Optional[int] = None) -> DivergenceFn:
    """KL(anchor||pi) per position."""
    return make_full(forward_kl_value, forward_kl_grad, chunk_size)


@register("full_reverse_kl", samples="full")
def full_reverse_kl(chunk_size: Optional[int] = None) -> DivergenceFn:
    """KL(pi||anchor) per position."""
    return make_full(reverse_kl_value, reverse_kl_grad, chunk_size)


@register("full_jsd", samples="full")
def full_jsd(beta: float = 0.5, chunk_size: Optional[int] = None) -> DivergenceFn:
    """Generalised JSD_beta(anchor, pi) per position (GKD, arXiv 2306.13649).

    The endpoints follow the GKD/TRL convention: beta = 0 is KL(anchor||pi) and beta = 1 is
    KL(pi||anchor) exactly. The mixture formula itself vanishes at both endpoints; near them it
    behaves like beta KL(T||S) and (1-beta) KL(S||T), so values are continuous only up to that scale.
    """
    b = _beta(beta)

    def value(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return jsd_value(s, t, b)

    def grad(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return jsd_grad(s, t, b)

    return make_full(value, grad, chunk_size)
