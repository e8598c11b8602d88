"""DAPO dynamic sampling (arXiv 2503.14476): which groups of a step carry a learning signal.

A group (the samples of one prompt, sharing a ``group_ids`` entry) whose rewards are all equal gets
group-relative advantage exactly 0 on every sample (``rlplat.advantages``): it adds no gradient,
only tokens to the loss normalisers. Dynamic sampling drops such groups and draws more prompts
until the step holds the wanted number of informative groups. This module is the pure part: given
the rewards drawn so far, which groups to train on. The rounds themselves run in
``launch.loops.sampling``.

Shapes: ``rewards`` Float [B] (NaN allowed where ``valid`` is False), ``group_ids`` Long [B],
``valid`` Bool [B] (the reward call returned a finite number).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass(frozen=True)
class GroupSelection:
    """The outcome of one selection.

    keep       group ids to train on, ascending (= sampling order: later rounds get larger ids)
    uniform    valid groups dropped because their rewards are all equal
    invalid    groups dropped because a reward of theirs failed
    surplus    informative groups cut because ``wanted`` were already kept
    """

    keep: List[int]
    uniform: int
    invalid: int
    surplus: int


def group_status(rewards: torch.Tensor, group_ids: torch.Tensor, valid: Optional[torch.Tensor] = None):
    """Return (ids Long [G] ascending, uniform Bool [G], invalid Bool [G]) per distinct group id.

    ``uniform``: every reward of the group is valid and they are all equal (compared exactly, in
    float64: the same test that gives a group advantage exactly 0 in ``rlplat.advantages``).
    ``invalid``: some reward of the group failed; such a group is neither uniform nor informative."""
    if rewards.dim() != 1 or tuple(group_ids.shape) != tuple(rewards.shape):
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must both be [B]")
    valid = torch.isfinite(rewards) if valid is None else valid.bool() & torch.isfinite(rewards)
    ids, inverse = torch.unique(group_ids, return_inverse=True)
    n = ids.numel()
    r = torch.where(valid, rewards.to(torch.float64), torch.zeros((), dtype=torch.float64))
    hi = torch.full((n,), -torch.inf, dtype=torch.float64).scatter_reduce(0, inverse, r, "amax")
    lo = torch.full((n,), torch.inf, dtype=torch.float64).scatter_reduce(0, inverse, r, "amin")
    invalid = torch.zeros(n, dtype=torch.bool).index_fill_(0, inverse[~valid], True)
    return ids, (hi == lo) & ~invalid, invalid


def uniform_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> List[int]:
    """Group ids (ascending) whose rewards are all equal: the groups that carry no signal."""
    ids, uniform, _ = group_status(rewards, group_ids)
    return ids[uniform].tolist()


def select_groups(rewards: torch.Tensor, group_ids: torch.Tensor, wanted: int,
                  valid: Optional[torch.Tensor] = None) -> GroupSelection:
    """Keep the first ``wanted`` informative groups in ascending group id; count the rest.

    Deterministic: the result depends only on the values, not on the row order."""
    if wanted < 1:
        raise ValueError(f"wanted={wanted} must be >= 1")
    ids, uniform, invalid = group_status(rewards, group_ids, valid)
    informative = ids[~uniform & ~invalid].tolist()
    return GroupSelection(keep=informative[:wanted], uniform=int(uniform.sum()), invalid=int(invalid.sum()),
                          surplus=max(len(informative) - wanted, 0))
