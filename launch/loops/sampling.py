"""The step's on-policy batch for the ``rl`` and ``rehearsal`` loops: generated, rewarded, scored.

Without ``algorithm.dynamic_sampling``: one batch of ``data.prompts_per_step`` prompts; rewards run
on the reward worker while the scorers and the trainer compute log-probs.

With it (DAPO, ``rlplat.sampling``): generate -> reward -> drop the groups whose rewards are all
equal -> another round of ``data.prompts_per_step`` prompts from the same sampler, until
``data.prompts_per_step`` informative groups are held or ``algorithm.max_sampling_rounds`` rounds
ran -> cut the surplus (the last-drawn groups) -> score only the kept groups. Round r samples with
seeds ``step_seed(step) + (samples drawn in rounds < r) + i``, group ids continue across rounds,
and the sampler's state advances by every draw, so a resumed run draws the same prompts and samples.
When no informative group is found the step skips its update (the caller gets ``None``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from launch.faults import fault_point
from launch.metrics import PhaseTimer
from rlplat.batch import Batch
from rlplat.data import PromptSampler
from rlplat.rewards.runner import RewardOutcome
from rlplat.sampling import select_groups, uniform_groups


def sample_batch(ctrl, sampler: PromptSampler, step: int, timer: PhaseTimer) -> Tuple[Optional[Batch], Dict[str, float]]:
    """(batch to train on or None: skip the update, metrics). The batch has rewards and log-probs;
    ``sampling/trained_uniform_groups`` counts its groups with all-equal rewards (0 with dynamic sampling)."""
    if ctrl.cfg.algorithm.dynamic_sampling:
        batch, metrics = _dynamic_batch(ctrl, sampler, step, timer)
    else:
        with timer.phase("generate"):
            batch = ctrl.generate(sampler.next_batch(), ctrl.plan.group_size, seed=ctrl.step_seed(step))
        fault_point("after_generate", step)
        batch, metrics = ctrl.score_and_reward(batch, timer)
    if batch is not None:
        metrics["sampling/trained_uniform_groups"] = float(len(uniform_groups(batch.rewards, batch.group_ids)))
    return batch, metrics


def _dynamic_batch(ctrl, sampler: PromptSampler, step: int, timer: PhaseTimer) -> Tuple[Optional[Batch], Dict[str, float]]:
    wanted, max_rounds = ctrl.cfg.data.prompts_per_step, ctrl.cfg.algorithm.max_sampling_rounds
    group_size = ctrl.plan.group_size
    rounds, outcomes = [], []
    drawn = 0  # prompts drawn in earlier rounds: the group-id offset; drawn * group_size is the seed offset
    while len(rounds) < max_rounds:
        rows = sampler.next_batch()
        with timer.phase("generate"):
            batch = ctrl.generate(rows, group_size, group_offset=drawn, seed=ctrl.step_seed(step) + drawn * group_size)
        fault_point("after_generate", step)
        with timer.phase("reward"):
            outcomes.append(ctrl.reward_outcome(batch))
        rounds.append(batch)
        drawn += len(rows)
        choice = select_groups(torch.cat([o.rewards for o in outcomes]), torch.cat([b.group_ids for b in rounds]),
                               wanted, valid=torch.cat([o.valid for o in outcomes]))
        if len(choice.keep) == wanted:
            break
    # Failed rewards are logged and their groups dropped here, over all rounds at once.
    batch, metrics = ctrl.apply_rewards(Batch.concat(rounds, pad_id=ctrl.pad_id), RewardOutcome.concat(outcomes))
    metrics.update(ctrl.batch_metrics(batch, prefix="sampled/"))  # every valid sample: the policy, not the filter
    kept = len(choice.keep)
    metrics.update({"sampling/rounds": float(len(rounds)), "sampling/dropped_groups": float(choice.uniform),
                    "sampling/surplus_groups": float(choice.surplus), "sampling/informative_groups": float(kept),
                    "sampling/bound_hit": float(kept < wanted), "sampling/skipped_update": float(kept == 0)})
    if kept < wanted:
        what = "no informative group: the update is skipped" if kept == 0 else f"training on {kept} of {wanted}"
        print(f"rlplat: step {step}: dynamic sampling found {kept} of {wanted} groups with unequal rewards in "
              f"{len(rounds)} rounds (algorithm.max_sampling_rounds={max_rounds}); {what}", flush=True)
    if kept == 0:
        metrics["samples"] = 0.0
        return None, metrics
    batch = batch.select(torch.isin(batch.group_ids, torch.tensor(choice.keep)).nonzero().flatten())
    ctrl.score(batch, timer)  # scorer passes for the kept groups only
    return batch, metrics
