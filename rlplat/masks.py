"""Per-sequence masks that choose which rows a divergence term applies to.

Signature: ``fn(rewards: Float[B] | None, group_ids: Long[B], kind: Long[B], **params) -> Float[B]``
with values in {0., 1.}. KDRL's reward-guided masking (docs/algorithms.md#kdrl) is ``incorrect`` (response level)
and ``group_no_correct`` (group level); DPH-RL's rehearsal term uses ``rehearsal`` (docs/algorithms.md#dph-rl).
``Algorithm.plan`` passes ``reward.correct_threshold`` to every mask with a ``correct_threshold``
parameter, unless the term's ``mask_params`` set it.
Adding a mask is one function plus one ``@register("name")`` line.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import torch

from rlplat.batch import DATA_EXPLORE, DATA_REHEARSAL, Batch
from rlplat.registry import Registry

MaskFn = Callable[..., torch.Tensor]
REGISTRY: Registry[MaskFn] = Registry("sequence mask")

register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


def takes(name: str, param: str) -> bool:
    """Whether mask ``name`` has a keyword parameter ``param`` (e.g. ``correct_threshold``)."""
    return param in inspect.signature(get(name)).parameters


def for_batch(name: str, batch: Batch, **params: Any) -> torch.Tensor:
    """Float[B]: mask ``name`` evaluated on ``batch``'s rewards, group ids and kinds."""
    return get(name)(batch.rewards, batch.group_ids, batch.kind, **params)


def _need_rewards(rewards: Optional[torch.Tensor], name: str) -> torch.Tensor:
    if rewards is None:
        raise ValueError(f"mask '{name}' needs rewards, but the batch has none")
    return rewards


@register("all")
def all_rows(rewards: Optional[torch.Tensor], group_ids: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    return torch.ones(kind.shape, dtype=torch.float32, device=kind.device)


@register("explore")
def explore(rewards: Optional[torch.Tensor], group_ids: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """On-policy RL rows."""
    return (kind == DATA_EXPLORE).float()


@register("rehearsal")
def rehearsal(rewards: Optional[torch.Tensor], group_ids: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """Stored pi_0 rows (DPH-RL)."""
    return (kind == DATA_REHEARSAL).float()


@register("incorrect")
def incorrect(
    rewards: Optional[torch.Tensor], group_ids: torch.Tensor, kind: torch.Tensor, correct_threshold: float = 1.0
) -> torch.Tensor:
    """1 where ``reward < correct_threshold`` (the response is wrong): KDRL response-level masking."""
    return (_need_rewards(rewards, "incorrect") < correct_threshold).float()


@register("group_no_correct")
def group_no_correct(
    rewards: Optional[torch.Tensor], group_ids: torch.Tensor, kind: torch.Tensor, correct_threshold: float = 1.0
) -> torch.Tensor:
    """1 on every row of a group in which no response reaches ``correct_threshold``: KDRL group level."""
    correct = (_need_rewards(rewards, "group_no_correct") >= correct_threshold).float()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    any_correct = torch.zeros(int(inverse.max()) + 1 if inverse.numel() else 0, device=correct.device)
    any_correct = any_correct.scatter_reduce(0, inverse, correct, "amax")
    return 1.0 - any_correct[inverse]
