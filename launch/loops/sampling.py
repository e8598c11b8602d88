"""The step's on-policy batch for the ``rl`` and ``rehearsal`` loops: generated, rewarded, scored.

Without ``algorithm.dynamic_sampling``: one batch of ``data.prompts_per_step`` prompts; rewards run
on the reward worker while the scorers and the trainer compute log-probs.

With it (DAPO, ``rlplat.sampling``): generate -> reward -> drop the groups whose rewards are all
equal -> another round of ``data.prompts_per_step`` prompts from the same sampler, until
``data.prompts_per_step`` informative groups are held or ``algorithm.max_sampling_rounds`` rounds
ran -> cut the surplus (the last-drawn groups) -> score only the kept groups. Round r samples with
seeds ``step_seed(step, offset=samples drawn in rounds < r)``, group ids continue across rounds,
and the sampler's state advances by every draw, so a resumed run draws the same prompts and samples.
When no informative group is found the step skips its update (the caller gets ``None``).

With ``trainer.max_staleness`` K >= 1 (``BatchSource``), the generation of the next K steps is
submitted ahead, on the weights the engines hold at submission, so the engines sample while the
trainer updates; the batch of step t is then trained by weights at most K versions newer than the
ones that sampled it (every row carries its ``weight_version``).
"""
from __future__ import annotations

import time
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
            batch = ctrl.generate(rows, group_size, group_offset=drawn, seed=ctrl.step_seed(step, offset=drawn * group_size))
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


class BatchSource:
    """The step's batch for the ``rl`` and ``rehearsal`` loops, ``trainer.max_staleness`` K steps ahead.

    K = 0: ``sample_batch`` at the start of the step, on the current weights (synchronous).
    K >= 1: before taking step s's batch, the generation of every step up to ``s + K`` is submitted
    (engines run calls in order, so step s's was submitted earlier and comes first); reward and
    scoring of step s then run while the engines sample the next batches, and the weight sync at
    the end of step s queues behind them. Metrics: ``async/staleness_mean`` / ``_max`` (trainer
    version minus each row's sampling version), ``async/wait_s`` (the trainer waiting for its batch).
    The sampler state saved in a checkpoint is the one before the first draw not yet trained on, so a
    resumed run draws the same prompts for every step (on the resumed weights).
    """

    def __init__(self, ctrl, sampler: PromptSampler) -> None:
        self.ctrl, self.sampler = ctrl, sampler
        self.max_staleness = ctrl.cfg.trainer.max_staleness
        self.pending: Dict[int, tuple] = {}  # step -> (sampler state before its draw, PendingRollout)
        self.next_launch: Optional[int] = None

    def next(self, step: int, timer: PhaseTimer) -> Tuple[Optional[Batch], Dict[str, float]]:
        if self.max_staleness == 0:
            return sample_batch(self.ctrl, self.sampler, step, timer)
        ctrl = self.ctrl
        if self.next_launch is None:
            self.next_launch = step
        last = min(step + self.max_staleness, ctrl.cfg.trainer.max_steps - 1)
        while self.next_launch <= last:
            t, state = self.next_launch, self.sampler.state_dict()
            self.pending[t] = (state, ctrl.launch_generate(self.sampler.next_batch(), ctrl.plan.group_size,
                                                           seed=ctrl.step_seed(t)))
            self.next_launch += 1
        t0 = time.perf_counter()
        with timer.phase("generate"):
            batch = ctrl.collect(self.pending.pop(step)[1])
        wait = time.perf_counter() - t0
        fault_point("after_generate", step)
        staleness = ctrl.weight_version - torch.tensor(batch.meta["weight_version"], dtype=torch.float64)
        if float(staleness.max()) > self.max_staleness:  # the queue's invariant; never a user error
            raise RuntimeError(f"step {step}: batch staleness {float(staleness.max())} > trainer.max_staleness")
        batch, metrics = ctrl.score_and_reward(batch, timer)
        metrics.update({"async/staleness_mean": float(staleness.mean()), "async/staleness_max": float(staleness.max()),
                        "async/wait_s": wait, "sampling/trained_uniform_groups":
                        float(len(uniform_groups(batch.rewards, batch.group_ids)))})
        return batch, metrics

    def state_dict(self) -> dict:
        return self.pending[min(self.pending)][0] if self.pending else self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.pending, self.next_launch = {}, None
