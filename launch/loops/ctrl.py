"""InfAlign-CTRL: the ``rl`` loop with the reward stage calibrate -> transform.

Before the first update, ``prepare`` samples every training prompt ``algorithm.ctrl.reference_samples``
(m) times with the rollout engines, which hold the initial policy = pi_ref then, rewards the samples
and stores the rewards (``Float[P, m]``, NaN where the reward call failed) in
``algorithm.ctrl.store_path`` (default ``<run_dir>/ctrl_reference.pt``). A later run (a resume,
another training seed with the same sampling seed) reuses the store only when its fingerprint
(``rlplat.rewards.reference_store``) is unchanged. Every step then replaces each sample's raw reward
by ``Phi(c)``, ``c`` its calibrated reward among its prompt's reference rewards
(``rlplat.rewards.calibration``) and ``Phi`` the transformation ``algorithm.ctrl.transform``
(``rlplat.rewards.transforms``), before the advantages; the KL term to the reference is an ordinary
divergence term. Pass rates and ``reward/mean`` stay on the raw reward.
"""
from __future__ import annotations

import os
import time
from typing import Dict

import torch

from launch.context import StepContext
from launch.loops.base import LOOPS
from launch.loops.rl import RLLoop
from launch.loops.store import load_store, save_store
from rlplat.batch import Batch
from rlplat.rewards import reference_store, transforms
from rlplat.rewards.calibration import calibrate
from rlplat.rewards.spec import describe, reward_specs
from rlplat.seeds import PREPARE, check_draw_size


def store_path(ctx: StepContext) -> str:
    return ctx.cfg.algorithm.ctrl.store_path or os.path.join(ctx.run_dir, "ctrl_reference.pt")


def fingerprint(ctx: StepContext) -> dict:
    cfg, r = ctx.cfg, ctx.cfg.rollout
    return reference_store.fingerprint(
        reference=ctx.paths["policy"], tokenizer=ctx.paths.get("tokenizer"), dtype=cfg.model.dtype,
        m=cfg.algorithm.ctrl.reference_samples, rows=[row.index for row in ctx.rows],
        prompt_ids=[ctx.prompt_ids[row.index] for row in ctx.rows],
        sampling={"backend": r.backend, "max_new_tokens": r.max_new_tokens, "temperature": r.temperature,
                  "top_p": r.top_p, "top_k": r.top_k},
        reward=describe(reward_specs(cfg.reward)), seed=cfg.trainer.seed)


def prepare(ctx: StepContext) -> dict:
    """m reference samples of every training prompt, rewarded; returns the store."""
    m = ctx.cfg.algorithm.ctrl.reference_samples
    check_draw_size(len(ctx.rows) * m, PREPARE, "CTRL's reference samples: training prompts * algorithm.ctrl.reference_samples")
    chunk = max(ctx.cfg.data.prompts_per_step * 4, 1)
    rewards = []
    for start in range(0, len(ctx.rows), chunk):
        rows = ctx.rows[start:start + chunk]
        batch = ctx.generate(rows, m, group_offset=start, seed=ctx.step_seed(0, "prepare", offset=start * m))
        outcome = ctx.reward_outcome(batch)
        rewards.append(torch.where(outcome.valid, outcome.rewards.double(), torch.nan).view(len(rows), m))
    store = {"fingerprint": fingerprint(ctx), "rows": [row.index for row in ctx.rows],
             "rewards": torch.cat(rewards).to(torch.float64)}
    failed = int(torch.isnan(store["rewards"]).sum())
    if failed:
        print(f"rlplat: CTRL: {failed} of {store['rewards'].numel()} reference rewards failed; calibrating "
              "against the others (reward_failures.jsonl)", flush=True)
    save_store(store_path(ctx), store)
    return store


@LOOPS.register("ctrl")
class CTRLLoop(RLLoop):
    """``RLLoop`` whose rewards are calibrated against stored pi_ref rewards and transformed."""

    def __init__(self, ctx: StepContext) -> None:
        t0 = time.perf_counter()
        store = load_store(store_path(ctx), fingerprint(ctx)) or prepare(ctx)
        self.prepare_seconds = time.perf_counter() - t0
        super().__init__(ctx)
        self.reference_rewards = store["rewards"]  # Float64[P, m]
        self.store_row = {index: i for i, index in enumerate(store["rows"])}
        c = ctx.cfg.algorithm.ctrl
        self.transform, self.params = c.transform, ({} if c.t is None else {"t": c.t})

    def shape_rewards(self, batch: Batch) -> Dict[str, float]:
        raw = batch.rewards
        prompt_index = torch.tensor([self.store_row[i] for i in batch.meta["row_index"]], dtype=torch.long)
        calibrated = calibrate(raw.double(), self.reference_rewards, prompt_index)
        batch.rewards = transforms.transform(self.transform, calibrated, **self.params).to(raw.dtype)
        return {"reward/raw_mean": raw.mean().item(), "reward/calibrated_mean": calibrated.mean().item(),
                "reward/transformed_mean": batch.rewards.mean().item()}

    def step_metrics(self) -> Dict[str, float]:
        return {"ctrl/prepare_seconds": self.prepare_seconds}

    def state_dict(self) -> dict:
        return super().state_dict()
