"""Rollout correction: importance weights between the behaviour policy and the trainer's policy.

Notation (docs/algorithms.md, "Off-policy data: rollout correction and bounded staleness"): ``mu``
is the policy that sampled the tokens (the rollout engine, possibly some weight versions behind, possibly with other numerics),
``pi_prox`` the trainer's policy at the version being updated. Their per-token log-probs are
``batch.logprobs["rollout"]`` (``lp_mu``, reported by the engine at the sampling temperature) and
``batch.logprobs["old"]`` or, under ``old_from_forward``, the training forward's own (``lp_prox``). The log-ratio ``d_t = lp_prox - lp_mu`` (nats) is
``sum_t d_t`` at ``level="sequence"`` (the log of the product of the token ratios, broadcast to the
row's tokens) and ``d_t`` itself at ``level="token"``. With ``r = exp(d)``:

* ``none``: weight 1, nothing masked;
* ``tis`` (truncated IS): weight ``min(r, C)``, nothing masked;
* ``mis`` (masked IS): tokens (or whole rows) with ``r`` outside ``[1/C, C]`` leave the loss and its
  normalisers, the rest get weight 1.

Weights and masks are constants of the batch (no gradient flows through them: both log-probs are
fixed before training), so the loss totals can be computed from the batch before the update, and
a masked token is removed exactly as if its ``loss_mask`` were 0. A new kind is one function
``fn(ratio Float[B, R], C) -> (weight Float[B, R], keep Bool[B, R])`` registered in ``KINDS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

import torch

from rlplat.batch import Batch
from rlplat.registry import Registry

if TYPE_CHECKING:
    from rlplat.config.schema import RolloutCorrectionConfig

BEHAVIOUR_ROLE = "rollout"  # Batch.logprobs key of the engine's log-probs (mu)
PROXIMAL_ROLE = "old"  # Batch.logprobs key of the trainer's log-probs at the version being updated

KindFn = Callable[[torch.Tensor, float], Tuple[torch.Tensor, torch.Tensor]]
KINDS: Registry[KindFn] = Registry("rollout correction kind")
LevelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LEVELS: Registry[LevelFn] = Registry("rollout correction level")


# ============================================================================ levels
@LEVELS.register("token")
def _token_level(log_ratio: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """Each token's own log-ratio."""
    return log_ratio


@LEVELS.register("sequence")
def _sequence_level(log_ratio: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """The row's summed log-ratio (log of the product of its token ratios) on every token."""
    return (log_ratio * tok).sum(-1, keepdim=True).expand_as(log_ratio)


# ============================================================================ kinds
@KINDS.register("none")
def _none(ratio: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(ratio), torch.ones_like(ratio, dtype=torch.bool)


@KINDS.register("tis")
def _tis(ratio: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``min(r, C)``: exactly C above it (an overflowed ``r = inf`` included)."""
    return ratio.clamp(max=threshold), torch.ones_like(ratio, dtype=torch.bool)


@KINDS.register("mis")
def _mis(ratio: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep ``1/C <= r <= C`` with weight 1; an underflowed 0 or overflowed inf is outside."""
    keep = (ratio >= 1.0 / threshold) & (ratio <= threshold)
    return torch.ones_like(ratio), keep


# ============================================================================ config
@dataclass(frozen=True)
class RolloutCorrection:
    """``kind`` in ``KINDS``, ``level`` in ``LEVELS``, ``threshold`` C > 1 (the TIS cap; the MIS
    band is ``[1/C, C]``). The default is no correction."""

    kind: str = "none"
    level: str = "token"
    threshold: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"rollout correction kind '{self.kind}' is not registered; choose one of {KINDS.names()}")
        if self.level not in LEVELS:
            raise ValueError(f"rollout correction level '{self.level}' is not registered; choose one of {LEVELS.names()}")
        if not self.threshold > 1:
            raise ValueError(f"rollout correction threshold must be > 1, got {self.threshold}")

    @property
    def masks(self) -> bool:
        """Whether the correction takes tokens out of the loss, so the normalisers depend on pi_prox
        and must be counted before the forward (then "old" cannot come from the forward itself)."""
        return self.kind == "mis"

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @classmethod
    def from_config(cls, cfg: "RolloutCorrectionConfig") -> "RolloutCorrection":
        """From an ``rlplat.config.RolloutCorrectionConfig`` (or anything with its attributes)."""
        return cls(kind=cfg.kind, level=cfg.level, threshold=float(cfg.threshold))


# ============================================================================ weights
@dataclass
class CorrectionWeights:
    """Per-token results on the exploration tokens ``tok`` Float[B, R] they were computed for
    (all Float[B, R], 0 outside ``tok``): ``weight`` multiplies the surrogate (detached), ``keep``
    is 1 where the token stays in the loss and its normalisers, ``log_ratio`` is ``lp_prox - lp_mu``."""

    weight: torch.Tensor
    keep: torch.Tensor
    log_ratio: torch.Tensor


def _role(batch: Batch, role: str, like: torch.Tensor) -> torch.Tensor:
    if role not in batch.logprobs:
        raise ValueError(f"rollout correction: batch.logprobs has no '{role}' role (has {sorted(batch.logprobs)})")
    return batch.logprobs[role].to(device=like.device, dtype=like.dtype)


def weights(batch: Batch, corr: RolloutCorrection, tok: torch.Tensor,
            proximal: Optional[torch.Tensor] = None) -> CorrectionWeights:
    """The correction's weights and keep-mask on the token mask ``tok`` Float[B, R] (the
    exploration tokens). ``proximal`` Float[B, R]: pi_prox's log-probs (default
    ``batch.logprobs["old"]``; the loss passes its own forward's under ``old_from_forward``). Needs
    ``["rollout"]`` unless ``corr.kind`` is "none" (then the log-ratio is 0 where it is absent)."""
    on = tok > 0
    zeros = torch.zeros_like(tok)
    if not corr.active and BEHAVIOUR_ROLE not in batch.logprobs:
        log_ratio = zeros
    else:
        # where(): a padding position may hold anything (an infinite stored log-prob) and must not
        # reach exp() or a sequence sum.
        prox = _role(batch, PROXIMAL_ROLE, tok) if proximal is None else proximal.to(tok.dtype)
        log_ratio = torch.where(on, prox - _role(batch, BEHAVIOUR_ROLE, tok), zeros)
    log_ratio = log_ratio.detach()
    ratio = LEVELS.get(corr.level)(log_ratio, tok).exp()
    weight, keep = KINDS.get(corr.kind)(ratio, corr.threshold)
    if weight.shape != tok.shape or keep.shape != tok.shape:
        raise ValueError(f"rollout correction kind '{corr.kind}' returned shapes {tuple(weight.shape)}, "
                         f"{tuple(keep.shape)}; expected {tuple(tok.shape)}")
    keep = keep.to(tok.dtype) * tok
    return CorrectionWeights(weight=torch.where(on, weight, zeros).detach(), keep=keep, log_ratio=log_ratio)


def keep_mask(batch: Batch, corr: Optional[RolloutCorrection], tok: torch.Tensor) -> torch.Tensor:
    """``tok`` without the tokens the correction masks out (``tok`` itself when nothing can be masked)."""
    if corr is None or not corr.masks:
        return tok
    return weights(batch, corr, tok).keep


def metrics(w: CorrectionWeights, corr: RolloutCorrection, tok: torch.Tensor) -> Dict[str, float]:
    """Means over the exploration tokens ``tok`` (non-empty): ``rollout/logprob_abs_diff_mean``
    (|lp_prox - lp_mu|, nats), and with a correction ``rollout/is_weight_mean`` (the factor each
    token's surrogate is multiplied by, 0 for a masked token) and for "mis" ``rollout/masked_frac``."""
    n = tok.sum()
    out = {"rollout/logprob_abs_diff_mean": float((w.log_ratio.abs() * tok).sum() / n)}
    if corr.active:
        out["rollout/is_weight_mean"] = float((w.weight * w.keep).sum() / n)
    if corr.kind == "mis":
        out["rollout/masked_frac"] = float((tok - w.keep).sum() / n)
    return out

