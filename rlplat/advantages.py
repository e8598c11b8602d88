"""Per-sequence advantage estimators (docs/algorithms.md#advantage-estimators and #nash-mp).

Every estimator has the signature ``fn(rewards: Float[B], group_ids: Long[B], **params) -> Float[B]``;
samples drawn for the same prompt share a group id (ids need not be contiguous or sorted).
The loss broadcasts the result over each sequence's tokens.

Guarantees that the tests check: a group whose rewards are all equal gets advantage exactly 0
(never NaN; ``reinforce_pp`` with ``norm="token"`` re-centres over the batch's tokens, as OpenRLHF and
verl do, so there such a group gets the batch's shift ``-mean * rstd`` instead), and the estimators that
need a within-group baseline (``grpo``, ``rloo``) raise ``ValueError`` naming the group when it has
fewer than 2 samples.

An estimator that declares a ``response_lengths`` keyword (Float[B], response tokens per row) is
given it by ``for_batch``. Adding an estimator is one function plus one ``@register("name")`` line.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional, Tuple

import torch

from rlplat.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
REGISTRY: Registry[AdvantageFn] = Registry("advantage estimator")

register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names

# reinforce_pp's batch statistic (``algorithm.reinforce_pp_norm``): the first is the default, the
# one of the paper's reference implementation (OpenRLHF).
REINFORCE_PP_NORMS = ("token", "sequence")


def takes(name: str, param: str) -> bool:
    """Whether estimator ``name`` has a keyword parameter ``param`` (e.g. ``response_lengths``)."""
    return param in inspect.signature(get(name)).parameters


def for_batch(name: str, batch: Any, params: Mapping[str, Any], **extra: Any) -> torch.Tensor:
    """Float[B]: estimator ``name`` on ``batch``'s rewards and group ids with ``params``, plus
    ``response_lengths`` (``batch.loss_mask.sum(-1)``: the model's tokens, an episode's observations
    excluded) when the estimator declares it."""
    if takes(name, "response_lengths"):
        extra["response_lengths"] = batch.loss_mask.sum(-1)
    return get(name)(batch.rewards, batch.group_ids, **dict(params), **extra)


# ----------------------------------------------------------------------------- helpers
def _check(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if tuple(group_ids.shape) != tuple(rewards.shape):
        raise ValueError(f"group_ids has shape {tuple(group_ids.shape)}, rewards has {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"rewards contain non-finite values at rows {bad}")


def _groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (inverse Long[B] -> group slot, counts Float[G], centred Float[B] = r - group mean).

    ``centred`` is set to exactly 0 in groups whose rewards are all equal: the float mean of
    equal numbers can differ from them in the last bit, and the tests demand exact zeros.
    """
    _check(rewards, group_ids)
    uniq, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    g = uniq.numel()
    r = rewards.to(torch.float64)  # group sums in double keep the baseline exact to float32 precision
    sums = torch.zeros(g, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    mean = sums / counts.to(r.dtype)
    gmax = torch.full((g,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, inverse, r, "amax")
    gmin = torch.full((g,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, inverse, r, "amin")
    centred = torch.where((gmax == gmin)[inverse], torch.zeros_like(r), r - mean[inverse])
    return inverse, counts.to(r.dtype), centred


def _require_pairs(group_ids: torch.Tensor, counts: torch.Tensor, name: str) -> None:
    small = (counts < 2).nonzero().flatten()
    if small.numel():
        ids = torch.unique(group_ids)[small].tolist()
        raise ValueError(f"advantage '{name}' needs at least 2 samples per group (G >= 2); groups {ids} have 1")


def seq_logratio(logp: torch.Tensor, anchor_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Float[B]: sequence log-ratio ``sum_t (logp - anchor_logp) * mask``, detached (the ``sg`` of Nash-MP)."""
    return ((logp.detach() - anchor_logp.detach()) * mask).sum(-1)


# ----------------------------------------------------------------------------- estimators
@register("grpo")
def grpo(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(r - group mean) / (group std + eps)``; std is the unbiased (Bessel, ``/(G-1)``) one, as
    ``torch.std`` in TRL and verl. Needs G >= 2."""
    inverse, counts, centred = _groups(rewards, group_ids)
    _require_pairs(group_ids, counts, "grpo")
    var = torch.zeros_like(counts).index_add_(0, inverse, centred**2) / (counts - 1)
    return (centred / (var.sqrt()[inverse] + eps)).to(rewards.dtype)


@register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: ``r - group mean`` (no std division). A group of one gets 0."""
    return _groups(rewards, group_ids)[2].to(rewards.dtype)


@register("rloo")
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline: ``r_i - mean_{j != i} r_j = G/(G-1) * (r_i - group mean)``. Needs G >= 2."""
    inverse, counts, centred = _groups(rewards, group_ids)
    _require_pairs(group_ids, counts, "rloo")
    return (centred * (counts / (counts - 1))[inverse]).to(rewards.dtype)


@register("reinforce_pp")
def reinforce_pp(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    eps: Optional[float] = None,
    norm: str = "token",
    response_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """REINFORCE++-baseline (Hu et al., arXiv 2501.03262): subtract the group mean, then normalise
    by a statistic of the whole batch, ``norm`` (docs/algorithms.md#reinforce_pp-normalisation):

    * ``"token"`` (default; OpenRLHF ``experience_maker.compute_advantages_and_returns``, the paper's
      reference implementation): whiten the centred values ``c_i`` over the batch's response tokens,
      each row weighing its ``L_i = response_lengths[i]`` tokens:
      ``m = sum L c / sum L``, ``var = sum L (c - m)^2 / sum L`` (population), ``A_i = (c_i - m) / sqrt(max(var, eps))``,
      ``eps`` default 1e-8 (OpenRLHF's ``var.clamp(min=1e-8)``). Re-centred: an all-equal group gets
      ``-m / sqrt(var)``, not 0. Needs ``response_lengths``.
    * ``"sequence"`` (rlplat's earlier statistic; ms-swift's): ``A_i = c_i / (std + eps)``,
      ``std`` the population std of ``c`` over the batch's rows, ``eps`` default 1e-6. ``c`` already
      has mean 0 over rows, so this whitens without re-centring and all-equal groups stay exactly 0.
    """
    centred = _groups(rewards, group_ids)[2]
    if norm == "sequence":
        std = centred.pow(2).mean().sqrt()
        return (centred / (std + (1e-6 if eps is None else eps))).to(rewards.dtype)
    if norm != "token":
        raise ValueError(f"reinforce_pp: norm='{norm}' is not one of {list(REINFORCE_PP_NORMS)}")
    if response_lengths is None:
        raise ValueError("reinforce_pp with norm='token' needs response_lengths (Float[B], response tokens per row)")
    if tuple(response_lengths.shape) != tuple(rewards.shape):
        raise ValueError(f"reinforce_pp: response_lengths has shape {tuple(response_lengths.shape)}, "
                         f"rewards has {tuple(rewards.shape)}")
    lengths = response_lengths.to(device=centred.device, dtype=centred.dtype)
    if (lengths < 0).any():
        raise ValueError("reinforce_pp: response_lengths must be >= 0")
    n = lengths.sum()
    if n <= 0:  # no response token in the batch: nothing to weigh, nothing to train
        return torch.zeros_like(rewards)
    mean = (lengths * centred).sum() / n
    var = (lengths * (centred - mean).pow(2)).sum() / n
    rstd = var.clamp(min=1e-8 if eps is None else eps).rsqrt()
    return ((centred - mean) * rstd).to(rewards.dtype)


@register("nash_mp")
def nash_mp(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    seq_logratio_ref: Optional[torch.Tensor] = None,
    seq_logratio_snapshot: Optional[torch.Tensor] = None,
    beta: float = 0.1,
    eta: float = 1.0,
) -> torch.Tensor:
    """Nash-MP proximal-step advantage (docs/algorithms.md#nash-mp):
    ``A = P(y > y') - 1/2 - beta * sg(log pi/pi_ref) - (beta/eta) * sg(log pi/pi_k)``.

    ``rewards`` Float[B]: each sample's win probability against its opponents, in [0, 1].
    ``seq_logratio_ref`` / ``seq_logratio_snapshot`` Float[B]: sequence log-ratios (nats) of the
    current policy to pi_ref and to the snapshot pi_k (see ``seq_logratio``). ``group_ids`` is unused:
    the 1/2 baseline is exact because P(pi > pi) = 1/2.
    """
    _check(rewards, group_ids)
    for key, value in (("seq_logratio_ref", seq_logratio_ref), ("seq_logratio_snapshot", seq_logratio_snapshot)):
        if value is None:
            raise ValueError(f"advantage 'nash_mp' needs the keyword argument {key} (Float[B])")
        if tuple(value.shape) != tuple(rewards.shape):
            raise ValueError(f"nash_mp: {key} has shape {tuple(value.shape)}, rewards has {tuple(rewards.shape)}")
    if eta <= 0 or beta < 0:
        raise ValueError(f"nash_mp needs beta >= 0 and eta > 0, got beta={beta}, eta={eta}")
    if ((rewards < 0) | (rewards > 1)).any():
        raise ValueError("nash_mp: rewards must be win probabilities in [0, 1]")
    return (
        rewards
        - 0.5
        - beta * seq_logratio_ref.detach().to(rewards.dtype)
        - (beta / eta) * seq_logratio_snapshot.detach().to(rewards.dtype)
    )
