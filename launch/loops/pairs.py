"""Offline preference optimisation (f-DPO): optimizer steps over stored pairs, no sampling.

Before the first step every training pair (and every held-out pair, for the calibration
metrics) is scored once by the reference scorers and stored with its token ids in
``algorithm.fdpo.store_path`` (default ``<run_dir>/fdpo_reference.pt``); a later run (a resume,
another seed) reuses the store only when its ``fingerprint`` (reference model, dtype, the pairs'
token ids) is unchanged. Each step then trains ``data.prompts_per_step`` pairs, drawn epoch by
epoch in a seeded order (``PromptSampler``), with ``rlplat.pairs.PairLoss`` on the trainer ranks.
The rollout engines only serve held-out evaluation: they receive the weights when the run driver
evaluates (``StepContext.sync_if_behind``), not after every step.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict

import torch

from launch.context import StepContext
from launch.faults import fault_point
from launch.loops.base import LOOPS, Loop
from launch.loops.store import load_store, save_store
from launch.metrics import PhaseTimer
from rlplat.batch import Batch
from rlplat.data import PromptSampler
from rlplat.pairs import pair_batch, pair_calibration

STORE_VERSION = 1


def fingerprint(cfg, paths, batches: Dict[str, Batch]) -> dict:
    """What the stored reference log-probs depend on: the reference model and dtype, and every
    token the scorer saw (prompts and responses of each split, in order)."""
    def digest(b: Batch) -> str:
        h = hashlib.sha256()
        for t in (b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask.long()):
            h.update(json.dumps(t.tolist(), separators=(",", ":")).encode())
        return h.hexdigest()

    return {"version": STORE_VERSION, "reference": paths["reference"], "dtype": cfg.model.dtype,
            **{f"{split}_sha256": digest(b) for split, b in sorted(batches.items())}}


@LOOPS.register("pairs")
class PairLoop(Loop):
    """train ``data.prompts_per_step`` stored pairs -> metrics; evaluation adds held-out pair calibration."""

    def __init__(self, ctx: StepContext) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg
        self.loss = ctx.plan.pair_loss
        t0 = time.perf_counter()
        batches = {"train": self._pairs(ctx.rows, [ctx.prompt_ids[r.index] for r in ctx.rows])}
        if cfg.trainer.eval_every:
            batches["eval"] = self._pairs(ctx.eval_rows, ctx.eval_ids)
        self.store = self._load_or_score(batches)
        self.prepare_seconds = time.perf_counter() - t0
        self.sampler = PromptSampler(list(range(len(ctx.rows))), cfg.data.prompts_per_step,
                                     seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)

    def _pairs(self, rows, prompt_ids) -> Batch:
        tok = self.ctx.tok
        return pair_batch(rows, prompt_ids, lambda text: tok(text, add_special_tokens=False)["input_ids"],
                          tok.eos_token_id, self.ctx.pad_id)

    def store_path(self) -> str:
        return self.ctx.cfg.algorithm.fdpo.store_path or os.path.join(self.ctx.run_dir, "fdpo_reference.pt")

    def _load_or_score(self, batches: Dict[str, Batch]) -> Dict[str, Batch]:
        """``batches`` with ``logprobs["reference"]``, from the store when its fingerprint matches."""
        path, expected = self.store_path(), fingerprint(self.ctx.cfg, self.ctx.paths, batches)
        stored = load_store(path, expected)
        if stored is not None:
            return {k: Batch.from_dict(v) for k, v in stored["batches"].items()}
        for batch in batches.values():
            batch.logprobs["reference"] = self.ctx.score_roles(batch, ["reference"])["reference"]
        save_store(path, {"fingerprint": expected, "batches": {k: b.to_dict() for k, b in batches.items()}})
        return batches

    def step(self, step: int) -> Dict[str, float]:
        ctx, timer = self.ctx, PhaseTimer()
        pairs = torch.tensor(self.sampler.next_batch())
        rows = torch.stack([2 * pairs, 2 * pairs + 1], 1).flatten()
        batch = self.store["train"].select(rows)
        with timer.phase("train"):
            metrics = ctx.train(batch, step, loss=self.loss)
        fault_point("after_train", step)
        epoch = self.sampler.epoch + self.sampler.position / len(self.sampler.rows)
        metrics.update({"data/epoch": epoch, "pairs/prepare_seconds": self.prepare_seconds, "samples": float(len(batch))})
        return ctx.finish_step(step, metrics, timer, batch)

    def eval_metrics(self) -> Dict[str, float]:
        """Held-out pairs under the current policy: ``eval/pairs_accuracy``, ``eval/pairs_preference_prob``
        and ``eval/pairs_ece`` (``rlplat.pairs.pair_calibration``)."""
        batch = self.store.get("eval")
        if batch is None:
            return {}
        logp = self.ctx.policy_logprobs(batch, temperature=1.0)
        probs = self.loss.preference_probs(logp, batch)
        return {f"eval/pairs_{k}": v for k, v in pair_calibration(probs).items()}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])

