"""DPH-RL: RL on exploration prompts plus a mass-covering divergence on stored pi_0 samples.

Before the first step, ``prepare`` samples every training prompt k times with the initial policy
(the rollout engines hold pi_0 then), sends prompts solved in all k samples to the rehearsal set
and stores their responses with per-token log-probs from the trainer's own forward pass (the same
numerics the loss uses) in ``algorithm.dph_rl.store_path`` (default ``<run_dir>/dph_rehearsal.pt``).
A later run reuses the store only when its ``fingerprint`` (model, dtype, rendered prompts, sampling
settings, k, reward and threshold, seed) is unchanged. Each step then mixes ``rehearsal_per_step`` stored
rows (kind DATA_REHEARSAL: divergence only) into the on-policy exploration batch (kind
DATA_EXPLORE: clipped surrogate only). No reference model is started.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict, List, Mapping, Sequence

import torch

from launch.context import StepContext
from launch.loops.base import LOOPS
from launch.loops.rl import RLLoop
from launch.loops.store import load_store, save_store
from rlplat.batch import DATA_REHEARSAL, Batch
from rlplat.data import PromptRow
from rlplat.rewards.spec import describe, reward_specs
from rlplat.seeds import PREPARE, check_draw_size

STORE_VERSION = 2  # 2: the fingerprint covers sampling settings, dtype, threshold and rendering


def store_path(ctx) -> str:
    return ctx.cfg.algorithm.dph_rl.store_path or os.path.join(ctx.run_dir, "dph_rehearsal.pt")


def fingerprint(cfg, paths: Mapping[str, str], rows: Sequence[PromptRow], prompt_ids: Mapping[int, Sequence[int]]) -> dict:
    """What the stored split, samples and log-probs depend on; a store made under another
    fingerprint is not reused. ``prompt_ids`` maps a row index to its rendered prompt token ids:
    their hash (in row order) stands for the whole rendering (tokenizer, ``data.chat_template``,
    ``data.system_prompt``, ``data.max_prompt_tokens``), so any change to it invalidates the store."""
    r = cfg.rollout
    rendered = json.dumps([list(map(int, prompt_ids[row.index])) for row in rows], separators=(",", ":"))
    return {
        "version": STORE_VERSION, "policy": paths["policy"], "tokenizer": paths.get("tokenizer"),
        "dtype": cfg.model.dtype, "k": cfg.algorithm.dph_rl.samples_per_prompt, "rows": [row.index for row in rows],
        "prompt_ids_sha256": hashlib.sha256(rendered.encode()).hexdigest(),
        "backend": r.backend, "max_new_tokens": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p,
        "top_k": r.top_k, "reward": describe(reward_specs(cfg.reward)), "correct_threshold": cfg.reward.correct_threshold,
        "seed": cfg.trainer.seed,
    }


def _fingerprint(ctx) -> dict:
    return fingerprint(ctx.cfg, ctx.paths, ctx.rows, ctx.prompt_ids)


def prepare(ctx) -> dict:
    """Split the training prompts with pi_0 and store the rehearsal samples; returns the store."""
    cfg = ctx.cfg
    k = cfg.algorithm.dph_rl.samples_per_prompt
    chunk = max(cfg.data.prompts_per_step * 4, 1)
    rehearsal: List[Batch] = []
    exploration: List[int] = []
    check_draw_size(len(ctx.rows) * k, PREPARE, "DPH-RL's pi_0 split: training prompts * algorithm.dph_rl.samples_per_prompt")
    for start in range(0, len(ctx.rows), chunk):
        rows = ctx.rows[start:start + chunk]
        # One stream for the whole split: chunk `start` begins at sample start * k.
        batch = ctx.generate(rows, k, group_offset=start, seed=ctx.step_seed(0, "prepare", offset=start * k))
        outcome = ctx.reward_outcome(batch)
        correct = (outcome.rewards >= cfg.reward.correct_threshold) & outcome.valid
        for g, row in enumerate(rows):
            in_group = batch.group_ids == start + g
            if bool(correct[in_group].all()):
                rehearsal.append(batch.select(in_group.nonzero().flatten()))
            else:
                exploration.append(row.index)
    store = {"fingerprint": _fingerprint(ctx), "exploration_rows": exploration, "rehearsal": None}
    if rehearsal:
        stored = Batch.concat(rehearsal, pad_id=ctx.pad_id)
        stored.logprobs = {"initial": ctx.policy_logprobs(stored), "rollout": stored.logprobs["rollout"]}
        stored.rewards = torch.ones(len(stored))
        stored.kind = torch.full((len(stored),), DATA_REHEARSAL, dtype=torch.long)
        store["rehearsal"] = stored.to_dict()
    save_store(store_path(ctx), store)
    return store


def load_or_prepare(ctx) -> dict:
    store = load_store(store_path(ctx), _fingerprint(ctx))
    return store if store is not None else prepare(ctx)


def check_exploration_pool(num_prompts: int, num_explore: int, prompts_per_step: int, k: int) -> None:
    """Raise a ``ValueError`` naming the keys to change when pi_0 leaves fewer exploration prompts
    (not solved in all ``k`` samples) than one step draws. The pi_0 split is already on disk and
    does not depend on ``data.prompts_per_step``: a rerun with a lower one reuses it."""
    if num_explore < prompts_per_step:
        raise ValueError(
            f"DPH-RL: pi_0 solves {num_prompts - num_explore} of {num_prompts} training prompts in all {k} samples, "
            f"leaving {num_explore} to explore, fewer than data.prompts_per_step={prompts_per_step}; lower "
            "data.prompts_per_step, raise algorithm.dph_rl.samples_per_prompt or add training prompts")


@LOOPS.register("rehearsal")
class RehearsalLoop(RLLoop):
    """``RLLoop`` on the exploration prompts, with stored pi_0 rows appended to every trained batch."""

    def __init__(self, ctx: StepContext) -> None:
        cfg = ctx.cfg
        t0 = time.perf_counter()
        store = load_or_prepare(ctx)
        self.prepare_seconds = time.perf_counter() - t0
        by_index = {r.index: r for r in ctx.rows}
        explore_rows = [by_index[i] for i in store["exploration_rows"]] or list(ctx.rows)
        check_exploration_pool(len(ctx.rows), len(explore_rows), cfg.data.prompts_per_step,
                               cfg.algorithm.dph_rl.samples_per_prompt)
        super().__init__(ctx, explore_rows)
        self.stored = Batch.from_dict(store["rehearsal"]) if store["rehearsal"] is not None else None
        self.num_rehearsal_prompts = len(ctx.rows) - len(store["exploration_rows"])
        if self.stored is None:
            print("rlplat: DPH-RL found no prompt that pi_0 solves in every sample; training without rehearsal", flush=True)

    def _rehearsal_rows(self, step: int, group_offset: int, with_old: bool) -> Batch:
        n = self.ctx.cfg.algorithm.dph_rl.rehearsal_per_step
        gen = torch.Generator().manual_seed(self.ctx.cfg.trainer.seed * 7919 + step)
        idx = torch.randperm(len(self.stored), generator=gen)[:n]
        rows = self.stored.select(idx.sort().values)
        rows.group_ids = group_offset + torch.arange(len(rows))  # not a group: no baseline across them
        if with_old:  # the roles of the rows they join; unused: the surrogate skips rehearsal rows
            rows.logprobs["old"] = rows.logprobs["initial"]
        rows.advantages = torch.zeros(len(rows))
        return rows

    def training_batch(self, batch: Batch, step: int) -> Batch:
        if self.stored is None:
            return batch
        batch.logprobs["initial"] = torch.zeros_like(batch.response_mask)  # masked out for explore rows
        rehearsal = self._rehearsal_rows(step, int(batch.group_ids.max()) + 1, with_old="old" in batch.logprobs)
        # Stored rows lack what this step's rows carry beyond the rollout's own fields (per-function
        # rewards; data columns in a store made before they travelled): None there, so the rows concat.
        rehearsal.meta = {k: rehearsal.meta.get(k, [None] * len(rehearsal)) for k in batch.meta}
        return Batch.concat([batch, rehearsal], pad_id=self.ctx.pad_id)

    def step_metrics(self) -> Dict[str, float]:
        return {"dph/rehearsal_prompts": float(self.num_rehearsal_prompts), "dph/prepare_seconds": self.prepare_seconds}

    def state_dict(self) -> dict:
        return super().state_dict()
