"""GRPO-shaped RL step (GRPO, KDRL, and any algorithm that is surrogate + divergence terms)."""
from __future__ import annotations

from typing import Dict

from launch.loops import LOOPS
from launch.loops.sampling import BatchSource
from launch.metrics import PhaseTimer
from rlplat.data import PromptSampler


@LOOPS.register("rl")
class RLLoop:
    def __init__(self, ctrl) -> None:
        self.ctrl = ctrl
        cfg = ctrl.cfg
        self.source = BatchSource(ctrl, PromptSampler(ctrl.rows, cfg.data.prompts_per_step, seed=cfg.trainer.seed,
                                                      shuffle=cfg.data.shuffle))

    def step(self, step: int) -> Dict[str, float]:
        ctrl, timer = self.ctrl, PhaseTimer()
        batch, metrics = self.source.next(step, timer)
        if batch is None:  # dynamic sampling found no group with unequal rewards: nothing to learn from
            return ctrl.finish_step(step, metrics, timer)
        ctrl.compute_advantages(batch)
        with timer.phase("train"):
            metrics.update(ctrl.train(batch, step))
        with timer.phase("sync"):
            metrics.update(ctrl.sync_weights())
        metrics.update(ctrl.batch_metrics(batch))
        return ctrl.finish_step(step, metrics, timer, batch)

    def state_dict(self) -> dict:
        return {"sampler": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["sampler"])
