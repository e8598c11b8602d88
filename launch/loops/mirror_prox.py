"""Nash-MP: one outer Mirror-Prox iteration per step (docs/algorithms.md#nash-mp), and its
one-step baseline, online mirror descent (``MirrorDescentLoop``: the half step alone).

From pi_k (held by the trainer, the rollout engines and the snapshot scorer):
1. sample y ~ pi_k, G per prompt; save pi_k's parameters AND optimizer state;
2. half step: opponents are the other samples of pi_k for the same prompt; ``inner_steps``
   updates give pi_{k+1/2}; sync it into the rollout engines;
3. sample opponents o ~ pi_{k+1/2}; restore pi_k (parameters and optimizer state);
4. full step: the same y (on-policy for pi_k again) against o; ``inner_steps`` updates give
   pi_{k+1}; sync it into the engines and refresh the snapshot (exactly once per iteration).
Both proximal steps are anchored at pi_k through the snapshot term of the advantage,
``P(y > opp) - 1/2 - beta sg(log pi/pi_ref) - (beta/eta) sg(log pi/pi_k)``, whose log-ratios the
loss recomputes from the policy being updated at every inner update (at pi = pi_k the last term
is 0: frozen at the sampling policy it would make eta inert). This is not Nash-MD: no step is
taken against a geometric mixture of pi and pi_ref.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from launch.context import StepContext
from launch.loops.base import LOOPS, Loop
from launch.metrics import PhaseTimer
from rlplat.batch import Batch
from rlplat.data import PromptSampler


def _pairs(group_ids: torch.Tensor, other_group_ids: torch.Tensor, exclude_self: bool) -> List[Tuple[int, int]]:
    """(i, j) for every sample i and every opponent j of the same prompt."""
    out = []
    for i, g in enumerate(group_ids.tolist()):
        for j in (other_group_ids == g).nonzero().flatten().tolist():
            if not (exclude_self and i == j):
                out.append((i, j))
    return out


@LOOPS.register("mirror_prox")
class MirrorProxLoop(Loop):
    # Two proximal steps per iteration (the half step, then the full step against pi_{k+1/2});
    # False: only the half step (MirrorDescentLoop).
    extragradient = True

    def __init__(self, ctx: StepContext) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg
        nm = cfg.algorithm.nash_mp
        self.inner_steps = nm.inner_steps  # beta and eta live in the loss (PolicyAdvantage)
        self.sampler = PromptSampler(ctx.rows, cfg.data.prompts_per_step, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)
        self.snapshot_version = 0

    def _win_rates(self, batch: Batch, opponents: Batch, exclude_self: bool) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Float [B]: mean over opponents of P(y_i > o_j); NaN pairs are dropped and counted."""
        pairs = _pairs(batch.group_ids, opponents.group_ids, exclude_self)
        i_idx, j_idx = zip(*pairs)
        m = batch.meta
        probs, metrics, failures = self.ctx.win_probs(
            [m["prompt"][i] for i in i_idx], [m["response_text"][i] for i in i_idx],
            [opponents.meta["response_text"][j] for j in j_idx], [m["answer"][i] for i in i_idx])
        for msg in failures:
            print(f"rlplat: preference failure: {msg}", flush=True)
        i_t = torch.tensor(i_idx)
        ok = ~torch.isnan(probs)
        sums = torch.zeros(len(batch)).index_add_(0, i_t[ok], probs[ok])
        counts = torch.zeros(len(batch)).index_add_(0, i_t[ok], torch.ones(int(ok.sum())))
        if bool((counts == 0).any()):
            raise RuntimeError("a sample has no valid preference against any opponent; see the preference failures above")
        return sums / counts, metrics

    def _proximal_step(self, batch: Batch, win: torch.Tensor, step: int, phase: int, prefix: str) -> Dict[str, float]:
        """``inner_steps`` updates on ``batch`` against fixed win probabilities ``win``. The loss
        recomputes the advantage's log-ratios to pi_ref and pi_k from the policy being updated at
        every update (``PolicyAdvantage``), so the proximal term acts from the second update on."""
        batch.rewards = win
        collected = [self.ctx.train(batch, step, update=phase * self.inner_steps + i) for i in range(self.inner_steps)]
        out = {f"{prefix}/{k}": sum(c[k] for c in collected) / len(collected) for k in collected[0]}
        out[f"{prefix}/win_rate"] = win.mean().item()
        return out

    def step(self, step: int) -> Dict[str, float]:
        ctx, timer = self.ctx, PhaseTimer()
        rows = self.sampler.next_batch()
        with timer.phase("generate"):
            batch = ctx.generate(rows, ctx.plan.group_size, seed=ctx.step_seed(step))
        batch.meta.setdefault("answer", [None] * len(batch))
        with timer.phase("score"):
            batch.logprobs["old"] = ctx.policy_logprobs(batch)
            batch.logprobs.update(ctx.score_roles(batch, ["reference", "snapshot"]))
        with timer.phase("reward"):
            win_half, metrics = self._win_rates(batch, batch, exclude_self=True)
        if not self.extragradient:  # online mirror descent: the half step is the iteration
            with timer.phase("train"):
                metrics.update(self._proximal_step(batch, win_half, step, 0, "half"))
            self._refresh_snapshot(metrics, timer)
            metrics.update({"loss/policy": metrics["half/loss/policy"], "reward/mean": win_half.mean().item()})
            metrics.update(ctx.batch_metrics(batch, prefix="samples/", pass_rate=False))
            return ctx.finish_step(step, metrics, timer, batch)
        with timer.phase("train"):
            ctx.save_policy_state()
            metrics.update(self._proximal_step(batch, win_half, step, 0, "half"))
        with timer.phase("sync"):
            metrics.update({f"half/{k}": v for k, v in ctx.sync().items()})
            half_weights = ctx.policy_weights_ref()
        with timer.phase("generate"):
            opponents = ctx.generate(rows, ctx.plan.group_size, seed=ctx.step_seed(step, "opponents"))
        with timer.phase("reward"):
            win_full, m2 = self._win_rates(batch, opponents, exclude_self=False)
        metrics.update({f"full/{k}": v for k, v in m2.items()})
        with timer.phase("train"):
            ctx.restore_policy_state()
            metrics.update(self._proximal_step(batch, win_full, step, 1, "full"))
        self._refresh_snapshot(metrics, timer)
        metrics.update({
            "nash/half_full_param_l2": ctx.param_distance(half_weights),  # on the trainer: weights stay there
            "loss/policy": metrics["full/loss/policy"],
            "reward/mean": win_full.mean().item(),
        })
        metrics.update(ctx.batch_metrics(batch, prefix="samples/", pass_rate=False))  # rewards are win probabilities
        return ctx.finish_step(step, metrics, timer, batch, opponents)

    def _refresh_snapshot(self, metrics: Dict[str, float], timer: PhaseTimer) -> None:
        """End of an iteration: sync pi_{k+1} into the engines and load it into the snapshot scorer
        (exactly once per iteration), actor to actor."""
        with timer.phase("sync"):
            metrics.update(self.ctx.sync())
            self.ctx.load_scorer_weights("snapshot", self.ctx.policy_weights_ref())
            self.snapshot_version += 1
        metrics["nash/snapshot_version"] = float(self.snapshot_version)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "snapshot_version": self.snapshot_version}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.snapshot_version = state["snapshot_version"]

    def after_resume(self) -> None:
        """The snapshot is pi_k, the policy the restored checkpoint holds."""
        self.ctx.load_scorer_weights("snapshot", self.ctx.policy_weights_ref())


@LOOPS.register("mirror_descent")
class MirrorDescentLoop(MirrorProxLoop):
    """The one-step baseline with the same step size, online mirror descent (``nash_omd``): self-play
    against the current policy. Each iteration is Mirror Prox's half step alone: from pi_k, sample
    y ~ pi_k, win rates against the other samples of pi_k, ``inner_steps`` updates anchored at pi_k
    give pi_{k+1}, which is synced and loaded into the snapshot. No state is saved or restored and
    no opponents are sampled; the step's metrics are logged under ``half/`` (the same update as
    Nash-MP's half step) and there is no ``full/`` or ``nash/half_full_param_l2``."""

    extragradient = False
