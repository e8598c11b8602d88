"""Reward calibration against reference-policy samples (InfAlign-CTRL step 1, docs/algorithms.md#infalign-ctrl).

The calibrated reward of a response ``y`` to prompt ``x`` is the empirical CDF of its raw reward
among the ``m`` reference-policy samples ``z_1..z_m`` of the same prompt, ties counted half:

    c(x, y) = ( #{j: r(x, z_j) < r(x, y)} + 0.5 #{j: r(x, z_j) == r(x, y)} ) / m      in [0, 1]

Why: under pi_ref, ``c`` is (about) Uniform[0, 1] for every prompt and every reward model, so a
transformation of ``c`` means the same thing on every prompt, and ``c`` is unchanged by any
strictly increasing map of the raw reward (the reward model's scale and offset per prompt drop out).
The half-ties rule makes a reference sample's own calibrated value its mid-rank: the m reference
samples of a prompt with distinct rewards get exactly ``(i + 0.5) / m``, i = 0..m-1, whose mean is
1/2, as for Uniform[0, 1]; a prompt whose reference rewards are all equal gives every response with
that reward 1/2 (no signal, as it should).

A reference reward that is NaN stands for a failed reward call (``rlplat.rewards.runner`` marks
those NaN): it is left out, and that prompt's ``m`` is its number of finite reference rewards.

Pure torch, no Ray.
"""
from __future__ import annotations

import torch


def calibrate(rewards: torch.Tensor, reference_rewards: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
    """Calibrated rewards (see the module docstring).

    rewards: Float[B], raw rewards of the responses to calibrate (finite).
    reference_rewards: Float[P, m], raw rewards of m reference-policy samples for each of P prompts;
        NaN marks a failed sample (ignored), +-inf is refused.
    prompt_index: Long[B], the row of ``reference_rewards`` holding each response's prompt.
    Returns Float[B] in [0, 1], in ``rewards``' dtype.

    Comparisons run in float64 after converting both sides, which is exact for float16/32/64 inputs,
    so a response whose reward equals a reference reward (a 0/1 checker, a rule-based reward) is a tie.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if reference_rewards.dim() != 2 or reference_rewards.shape[1] < 1:
        raise ValueError(f"reference_rewards must be 2-D [P, m] with m >= 1, got shape {tuple(reference_rewards.shape)}")
    if tuple(prompt_index.shape) != tuple(rewards.shape):
        raise ValueError(f"prompt_index has shape {tuple(prompt_index.shape)}, rewards has {tuple(rewards.shape)}")
    if prompt_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"prompt_index must be an integer tensor (Long[B]), got {prompt_index.dtype}")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"rewards contain non-finite values at rows {bad} (drop failed samples before calibrating)")
    if torch.isinf(reference_rewards).any():
        bad = torch.isinf(reference_rewards).any(1).nonzero().flatten().tolist()
        raise ValueError(f"reference_rewards contain +-inf in prompts {bad}")
    num_prompts = reference_rewards.shape[0]
    if rewards.numel() and (int(prompt_index.min()) < 0 or int(prompt_index.max()) >= num_prompts):
        bad = ((prompt_index < 0) | (prompt_index >= num_prompts)).nonzero().flatten().tolist()
        raise ValueError(f"prompt_index out of range [0, {num_prompts}) at rows {bad}")
    valid = ~torch.isnan(reference_rewards)  # Bool[P, m]
    counts = valid.sum(1)  # Long[P]: each prompt's m
    used = torch.unique(prompt_index)
    empty = used[counts[used] == 0]
    if empty.numel():
        raise ValueError(f"prompts {empty.tolist()} have no valid reference reward to calibrate against")

    ref = reference_rewards.to(torch.float64)[prompt_index]  # [B, m]
    ok = valid[prompt_index]  # [B, m]
    r = rewards.to(torch.float64).unsqueeze(1)  # [B, 1]
    # NaN compares False both ways, so invalid reference samples fall out of both counts; `ok` is
    # kept anyway to say so explicitly.
    below = ((ref < r) & ok).sum(1).to(torch.float64)
    ties = ((ref == r) & ok).sum(1).to(torch.float64)
    return ((below + 0.5 * ties) / counts[prompt_index].to(torch.float64)).to(rewards.dtype)


__all__ = ["calibrate"]
