"""GRPO-shaped RL step (GRPO, KDRL, and any algorithm that is surrogate + divergence terms)."""
from __future__ import annotations

from typing import Dict, List, Optional

from launch.context import StepContext
from launch.loops.base import LOOPS, Loop
from launch.loops.sampling import BatchSource
from launch.metrics import PhaseTimer
from rlplat.batch import Batch
from rlplat.data import PromptRow, PromptSampler


@LOOPS.register("rl")
class RLLoop(Loop):
    """sample (``BatchSource``: generate, reward, score) -> advantages -> train -> sync.

    A variant overrides ``shape_rewards`` (the reward stage between the raw rewards and the
    advantages), ``training_batch`` (what is trained besides the on-policy batch) and
    ``step_metrics`` (metrics of every step, skipped or not); ``rows`` are the prompts it samples."""

    def __init__(self, ctx: StepContext, rows: Optional[List[PromptRow]] = None) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg
        self.source = BatchSource(ctx, PromptSampler(ctx.rows if rows is None else rows, cfg.data.prompts_per_step,
                                                     seed=cfg.trainer.seed, shuffle=cfg.data.shuffle))

    def step(self, step: int) -> Dict[str, float]:
        ctx, timer = self.ctx, PhaseTimer()
        batch, metrics = self.source.next(step, timer)
        metrics.update(self.step_metrics())
        if batch is None:  # dynamic sampling found no group with unequal rewards: nothing to learn from
            return ctx.finish_step(step, metrics, timer)
        metrics.update(ctx.batch_metrics(batch))
        metrics.update(self.shape_rewards(batch))
        ctx.compute_advantages(batch)
        batch = self.training_batch(batch, step)
        with timer.phase("train"):
            metrics.update(ctx.train(batch, step))
        with timer.phase("sync"):
            metrics.update(ctx.sync())
        return ctx.finish_step(step, metrics, timer, batch)

    def shape_rewards(self, batch: Batch) -> Dict[str, float]:
        """Replace ``batch.rewards`` (raw, one per row) by what the advantages are computed from
        (CTRL: calibrated and transformed); returns its metrics. Default: the raw rewards."""
        return {}

    def training_batch(self, batch: Batch, step: int) -> Batch:
        """The rows trained at ``step``, from the on-policy ``batch`` (with advantages)."""
        return batch

    def step_metrics(self) -> Dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {"sampler": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["sampler"])
