"""The step's on-policy batch for the ``rl`` and ``rehearsal`` loops: generated, rewarded, scored.

Without ``algorithm.dynamic_sampling``: one batch of ``data.prompts_per_step`` prompts, whose
reward and scorer log-probs are chained on its generation (``BatchSource``).

With it (DAPO, ``rlplat.sampling``): generate -> reward -> drop the groups whose rewards are all
equal -> another round of ``data.prompts_per_step`` prompts from the same sampler, until
``data.prompts_per_step`` informative groups are held or ``algorithm.max_sampling_rounds`` rounds
ran -> cut the surplus (the last-drawn groups) -> score only the kept groups. Round r samples with
seeds ``step_seed(step, offset=samples drawn in rounds < r)``, group ids continue across rounds,
and the sampler's state advances by every draw, so a resumed run draws the same prompts and samples.
When no informative group is found the step skips its update (the caller gets ``None``).

With ``trainer.max_staleness`` K >= 1 (``BatchSource``), the next K steps' batches are launched
ahead, on the weights the engines hold at launch, so engines, reward worker and scorers work while
the trainer updates; the batch of step t is then trained by weights at most K versions newer than
the ones that sampled it (every row carries its ``weight_version``).
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import torch

from launch.context import StepContext
from launch.faults import fault_point
from launch.metrics import PhaseTimer
from rlplat.batch import Batch
from rlplat.data import PromptSampler
from rlplat.rewards.runner import RewardOutcome
from rlplat.sampling import select_groups, uniform_groups


def dynamic_batch(ctx: StepContext, sampler: PromptSampler, step: int, timer: PhaseTimer) -> Tuple[Optional[Batch], Dict[str, float]]:
    """(batch to train on or None: skip the update, metrics): rounds of generation until enough
    groups have unequal rewards; the batch has rewards and log-probs."""
    wanted, max_rounds = ctx.cfg.data.prompts_per_step, ctx.cfg.algorithm.max_sampling_rounds
    group_size = ctx.plan.group_size
    rounds, outcomes = [], []
    drawn = 0  # prompts drawn in earlier rounds: the group-id offset; drawn * group_size is the seed offset
    while len(rounds) < max_rounds:
        rows = sampler.next_batch()
        with timer.phase("generate"):
            batch = ctx.generate(rows, group_size, group_offset=drawn, seed=ctx.step_seed(step, offset=drawn * group_size))
        fault_point("after_generate", step)
        with timer.phase("reward"):
            outcomes.append(ctx.reward_outcome(batch))
        rounds.append(batch)
        drawn += len(rows)
        choice = select_groups(torch.cat([o.rewards for o in outcomes]), torch.cat([b.group_ids for b in rounds]),
                               wanted, valid=torch.cat([o.valid for o in outcomes]))
        if len(choice.keep) == wanted:
            break
    # Failed rewards are logged and their groups dropped here, over all rounds at once.
    batch, metrics = ctx.apply_rewards(Batch.concat(rounds, pad_id=ctx.pad_id), RewardOutcome.concat(outcomes))
    metrics.update(ctx.batch_metrics(batch, prefix="sampled/"))  # every valid sample: the policy, not the filter
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
    ctx.score(batch, timer)  # scorer passes for the kept groups only
    metrics["sampling/trained_uniform_groups"] = float(len(uniform_groups(batch.rewards, batch.group_ids)))
    return batch, metrics


class BatchSource:
    """The step's batch for the ``rl`` and ``rehearsal`` loops, ``trainer.max_staleness`` K steps ahead.

    Before taking step s's batch, the generation of every step up to ``s + K`` is launched
    (``StepContext.launch_scored``: its reward and scorer log-probs are chained on it and start as
    soon as its samples exist). Engines run calls in order, so step s's was launched earlier and
    comes first; K = 0 is the synchronous loop (step s's batch, launched and awaited in step s).
    With K >= 1 the engines, the reward worker and the scorers work on the next batches while the
    trainer updates on this one, and the weight sync at the end of step s queues behind the
    generations already launched. Metrics: ``async/staleness_mean`` / ``_max`` (trainer version
    minus each row's sampling version), ``async/wait_s`` (the trainer waiting for its batch's
    samples). The sampler state saved in a checkpoint is the one before the first draw not yet
    trained on, so a resumed run draws the same prompts for every step (on the resumed weights).
    With ``algorithm.dynamic_sampling`` (K = 0 only) the step's batch is ``dynamic_batch``'s.
    """

    def __init__(self, ctx: StepContext, sampler: PromptSampler) -> None:
        self.ctx, self.sampler = ctx, sampler
        self.max_staleness = ctx.cfg.trainer.max_staleness
        self.pending: Dict[int, tuple] = {}  # step -> (sampler state before its draw, PendingBatch)
        self.next_launch: Optional[int] = None

    def next(self, step: int, timer: PhaseTimer) -> Tuple[Optional[Batch], Dict[str, float]]:
        ctx = self.ctx
        if ctx.cfg.algorithm.dynamic_sampling:
            return dynamic_batch(ctx, self.sampler, step, timer)
        if self.next_launch is None:
            self.next_launch = step
        last = min(step + self.max_staleness, ctx.cfg.trainer.max_steps - 1)
        while self.next_launch <= last:
            t, state = self.next_launch, self.sampler.state_dict()
            self.pending[t] = (state, ctx.launch_scored(self.sampler.next_batch(), ctx.plan.group_size,
                                                         seed=ctx.step_seed(t)))
            self.next_launch += 1
        pending = self.pending.pop(step)[1]
        t0 = time.perf_counter()
        with timer.phase("generate"):
            batch = ctx.collect(pending.rollout)
        wait = time.perf_counter() - t0
        fault_point("after_generate", step)
        staleness = ctx.weight_version - torch.tensor(batch.meta["weight_version"], dtype=torch.float64)
        if float(staleness.max()) > self.max_staleness:  # the queue's invariant; never a user error
            raise RuntimeError(f"step {step}: batch staleness {float(staleness.max())} > trainer.max_staleness")
        batch, metrics = ctx.finish_scored(batch, pending, timer)
        metrics["sampling/trained_uniform_groups"] = float(len(uniform_groups(batch.rewards, batch.group_ids)))
        metrics.update({"async/staleness_mean": float(staleness.mean()), "async/staleness_max": float(staleness.max()),
                        "async/wait_s": wait})
        return batch, metrics

    def state_dict(self) -> dict:
        return self.pending[min(self.pending)][0] if self.pending else self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.pending, self.next_launch = {}, None
