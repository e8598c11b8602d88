"""``StepContext``: the actors of one run, and all that a loop (``launch.loops``) may do with them.

A step reads as the list of what it does::

    pending = ctx.launch_scored(rows, group_size, seed=ctx.step_seed(step))  # engines, then reward + scorers
    batch = ctx.collect(pending.rollout)
    batch, metrics = ctx.finish_scored(batch, pending, timer)
    ctx.compute_advantages(batch)
    metrics.update(ctx.train(batch, step))                            # trainer ranks
    metrics.update(ctx.sync())                                        # trainer -> engines
    return ctx.finish_step(step, metrics, timer, batch)

Every call goes to a pool that owns its actors, their placement and their recovery
(``EnginePool``, ``ScorerPool``, ``RestartingActor`` for the reward worker, ``TrainerGroup``);
no loop holds an actor handle or calls ``.remote``. Resume, checkpoints, evaluation and metrics
files are the run driver's (``launch.controller``), not the step's.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import ray
import torch

from actors.preference import PreferenceWorker
from actors.recovery import PendingCall, RestartingActor
from actors.reward_worker import RewardWorker
from actors.rollout.pool import EnginePool, PendingRollout
from actors.scorer_pool import PendingRowScores, ScorerPool
from actors.trainer.group import TrainerGroup
from launch.metrics import PhaseTimer
from launch.placement import colocated_group, scorer_counts
from launch.preflight import RunData
from launch.rollout_log import RolloutLog
from rlplat import advantages, seeds
from rlplat.algorithms import AlgorithmPlan
from rlplat.batch import Batch, minibatch_seed
from rlplat.config.schema import RunConfig
from rlplat.data import PromptRow
from rlplat.episodes import episode_metrics
from rlplat.rewards.runner import RewardOutcome


@dataclasses.dataclass
class PendingBatch:
    """A launched batch: its generation, and the reward and per-role scores chained on it."""

    rollout: PendingRollout
    reward: PendingCall
    scores: Dict[str, PendingRowScores]


class StepContext:
    """``paths`` maps role ("policy", "tokenizer", "reference", "teacher", ...) to a path or hub id.

    Read-only for loops: ``cfg``, ``plan``, ``paths``, ``run_dir``, ``tok`` (the policy's tokenizer),
    ``rows`` (the training prompts, or preference pairs when ``plan.pairs``), ``prompt_ids`` (row
    index -> rendered token ids), ``eval_rows`` / ``eval_ids`` (the held-out rows and their ids, in
    order; empty without evaluation), ``pad_id``, ``weight_version``. ``data`` is what
    ``launch.preflight`` read and rendered, every row of it, before Ray started.
    """

    def __init__(self, cfg: RunConfig, plan: AlgorithmPlan, paths: Dict[str, str], run_dir: str, tokenizer,
                 data: RunData) -> None:
        self.cfg, self.plan, self.paths, self.run_dir, self.tok = cfg, plan, paths, run_dir, tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.rows = data.rows
        self.prompt_ids = dict(zip((r.index for r in self.rows), data.prompt_ids))
        self.eval_rows, self.eval_ids = data.eval_rows, data.eval_ids
        res = cfg.resources
        self.engines = EnginePool(cfg, paths["policy"], paths["tokenizer"], self.prompt_ids, self.pad_id)
        counts = scorer_counts(cfg, plan)
        roles = list(counts)
        self.placement = colocated_group(res, cfg.trainer.num_ranks, [r for r in roles for _ in range(counts[r])])
        self.trainer = TrainerGroup(cfg, paths["policy"], cfg.trainer.num_ranks, res, placement_group=self.placement)
        firsts = itertools.accumulate([0] + [counts[r] for r in roles])  # a pool's first actor's global index
        self.scorers = {role: self._start_scorer(role, counts[role], first) for role, first in zip(roles, firsts)}
        self.reward = RestartingActor(RewardWorker, "reward-0", cfg.reward, num_cpus=res.reward_cpus,
                                      max_restarts=res.max_actor_restarts)
        self.reward.call("ready")
        # The pairwise judge (plan.preference: Nash-MP), restarted like the reward worker.
        self.judge = self._start_judge() if plan.preference else None
        self.probe = self._make_probe()
        self.engines.connect(self.trainer, self.probe)
        for pool in self.scorers.values():
            pool.ready()
        self._engines_behind = False  # the trainer has updated since the engines last got its weights
        self.rollout_log = RolloutLog(run_dir, cfg.trainer.log_samples, cfg.trainer.seed, tokenizer)  # rollouts.jsonl

    # ------------------------------------------------------------------ actors
    def _start_scorer(self, role: str, num_actors: int, first: int) -> ScorerPool:
        """Scorers ``scorer-<role>-0..num_actors-1``; global scorer j shares bundle j % num_ranks."""
        res = self.cfg.resources
        role_cfg = getattr(self.cfg.roles, role, None)
        micro = role_cfg.micro_batch_tokens if role_cfg is not None else self.cfg.trainer.micro_batch_tokens
        top_k = role_cfg.top_k_logits if role_cfg is not None else 0  # > 0: the teacher's distributions too
        return ScorerPool(
            role, self.paths[role], num_actors, dtype=self.cfg.model.dtype, micro_batch_tokens=micro,
            trust_remote_code=self.cfg.model.trust_remote_code, temperature=self.cfg.rollout.temperature, top_k=top_k,
            attn_implementation=self.cfg.model.attn_implementation,
            num_cpus=res.scorer_cpus, num_gpus=res.scorer_gpus, placement_group=self.placement,
            bundle_indices=[(first + i) % self.cfg.trainer.num_ranks for i in range(num_actors)],
            max_restarts=res.max_actor_restarts)

    def _start_judge(self) -> RestartingActor:
        """``preference-0``: the judge (``algorithm.nash_mp.judge``) or preference model
        (``roles.preference.path``) on ``resources.reward_cpus``, ready when this returns."""
        cfg = self.cfg
        judge = RestartingActor(PreferenceWorker, "preference-0", cfg.algorithm.nash_mp.judge, self.paths.get("preference"),
                                cfg.model.dtype, cfg.roles.preference.micro_batch_tokens, cfg.model.trust_remote_code,
                                num_cpus=cfg.resources.reward_cpus, max_restarts=cfg.resources.max_actor_restarts)
        judge.call("ready")
        return judge

    @property
    def _lone_actors(self) -> List[RestartingActor]:
        return [self.reward] + ([self.judge] if self.judge is not None else [])

    def _make_probe(self) -> Batch:
        """A fixed sequence whose log-probs must agree between trainer and engines after a sync."""
        row = self.rows[0]
        ids = self.prompt_ids[row.index]
        resp = self.tok.encode(" " + (row.answer or "0"), add_special_tokens=False) + [self.tok.eos_token_id]
        return Batch(
            prompt_ids=torch.tensor([ids]), prompt_mask=torch.ones(1, len(ids), dtype=torch.long),
            response_ids=torch.tensor([resp]), response_mask=torch.ones(1, len(resp)),
            group_ids=torch.zeros(1, dtype=torch.long),
        )

    def shutdown(self) -> None:
        """Kill this run's actors (a driver that stays alive, e.g. a test, must free their names)."""
        self.engines.kill()
        for actor in self._lone_actors:
            actor.kill()
        for pool in self.scorers.values():
            pool.kill()
        self.trainer.shutdown()
        if self.placement is not None:
            ray.util.remove_placement_group(self.placement)

    @property
    def weight_version(self) -> int:
        """Pushes of the trainer's weights into the engines so far (0: the initial weights)."""
        return self.engines.weight_version

    @property
    def actor_restarts(self) -> int:
        """Recoveries of every pool's actors so far (``faults/actor_restarts``)."""
        return (self.engines.restarts + sum(a.restarts for a in self._lone_actors)
                + sum(pool.recoveries for pool in self.scorers.values()))

    # --------------------------------------------------------------- sampling
    def step_seed(self, step: int, phase: str = "rollout", offset: int = 0) -> int:
        """Seed of sample ``offset`` of the draw ``phase`` (a name in ``rlplat.seeds.PHASES``) at
        ``step``; every (step, phase) has its own stream of seeds, and a resumed run samples
        exactly what an uninterrupted one did."""
        if phase not in seeds.PHASES:
            raise KeyError(f"unknown sampling phase '{phase}'; known: {sorted(seeds.PHASES)}")
        return seeds.stream_seed(self.cfg.trainer.seed, step, seeds.PHASES[phase], offset)

    def eval_seed(self) -> int:
        """Seed of the held-out evaluations' sampling: ``trainer.eval_seed``'s stream when set (the
        same draws whatever ``trainer.seed``), else ``trainer.seed``'s."""
        base = self.cfg.trainer.seed if self.cfg.trainer.eval_seed is None else self.cfg.trainer.eval_seed
        return seeds.stream_seed(base, 0, seeds.PHASES["eval"], 0)

    def generate(self, rows: Sequence[PromptRow], group_size: int, group_offset: int = 0,
                 seed: Optional[int] = None) -> Batch:
        """``group_size`` samples per prompt on the engines' current weights (``EnginePool``)."""
        return self.engines.generate(rows, group_size, group_offset, seed)

    def collect(self, pending: PendingRollout) -> Batch:
        """The Batch of a launched generation (``EnginePool.collect``)."""
        return self.engines.collect(pending)

    def launch_scored(self, rows: Sequence[PromptRow], group_size: int, seed: Optional[int] = None) -> "PendingBatch":
        """``group_size`` samples per prompt submitted now, on the weights the engines hold now, plus
        the reward and every scorer role's log-probs of them, submitted on the engines' pending outputs: each starts when the samples exist, so
        reward and scoring of a batch launched ahead overlap the trainer's update too."""
        rollout = self.engines.launch(rows, group_size, seed=seed)
        num_rows = len(rows) * group_size
        return PendingBatch(rollout, self.reward.submit("score_batches", *rollout.refs, retry=False),
                            {r: self.scorers[r].score_rows_async(rollout.refs, num_rows) for r in sorted(self.scorers)})

    def finish_scored(self, batch: Batch, pending: "PendingBatch", timer: PhaseTimer) -> Tuple[Batch, Dict[str, float]]:
        """Rewards and log-probs of ``batch`` (collected from ``pending.rollout``) from the calls in
        flight, plus the trainer's "old" log-probs unless the loss takes them from its own forward;
        a call that failed (an actor lost meanwhile) runs again on ``batch``. Returns the batch
        without the groups whose reward failed and the ``reward/*`` metrics (``apply_rewards``)."""
        with timer.phase("score"):
            if not self.plan.loss.old_from_forward:  # the proximal policy: the weights being updated, now
                batch.logprobs["old"] = self.trainer.compute_logprobs(batch)
            for role, p in pending.scores.items():
                batch.set_scores(role, p.result(batch))
        with timer.phase("reward"):
            try:
                outcome = pending.reward.result()
            except ray.exceptions.RayError:
                outcome = self.reward_outcome(batch)
        return self.apply_rewards(batch, outcome)

    # ---------------------------------------------------------------- rewards
    def reward_outcome(self, batch: Batch) -> RewardOutcome:
        """``RewardOutcome`` of every sample (on the reward worker, never on the driver)."""
        m = batch.meta
        return self.score_texts(m["response_text"], m["answer"], m["prompt"], m.get("extra"))

    def win_probs(self, prompts: Sequence[str], responses: Sequence[str], opponents: Sequence[str],
                  answers: Sequence[Optional[str]]) -> Tuple[torch.Tensor, Dict[str, float], List[str]]:
        """The judge's P(response_i > opponent_i) per pair, Float [N] (NaN where it failed), its
        metrics and the failures' messages (``actors.preference.PreferenceWorker.win_probs``)."""
        if self.judge is None:
            raise RuntimeError(f"algorithm '{self.plan.name}' has no preference judge")
        return self.judge.call("win_probs", list(prompts), list(responses), list(opponents), list(answers))

    def score_texts(self, responses, answers, prompts, columns=None) -> RewardOutcome:
        """``RewardOutcome`` of raw texts and their rows' data columns (``RewardWorker.score``'s signature)."""
        return self.reward.call("score", responses, answers, prompts, columns)

    def apply_rewards(self, batch: Batch, outcome: RewardOutcome) -> Tuple[Batch, Dict[str, float]]:
        """Set ``batch.rewards`` from a ``RewardOutcome`` of its rows; returns the batch without the
        groups whose reward failed (their baseline is meaningless; the failures are counted in
        ``reward/*`` and written to ``reward_failures.jsonl``) and the ``reward/*`` metrics."""
        metrics = outcome.metrics()
        batch.rewards = outcome.rewards.float()
        if outcome.components:  # each reward function's own value, per row (rollouts.jsonl)
            values = {k: v.tolist() for k, v in outcome.components.items()}
            batch.meta["reward_fns"] = [{k: v[i] for k, v in values.items()} for i in range(len(batch))]
        if outcome.num_invalid:
            self._log_reward_failures(outcome)
            keep = outcome.group_valid(batch.group_ids)
            if not bool(keep.any()):
                raise RuntimeError(f"every group has a failed reward this step:\n{outcome.summary()}")
            batch = batch.select(keep.nonzero().flatten())
        return batch, metrics

    def _log_reward_failures(self, outcome: RewardOutcome) -> None:
        print(f"rlplat: {outcome.summary()}", flush=True)
        with open(os.path.join(self.run_dir, "reward_failures.jsonl"), "a") as f:
            for failure in outcome.failures:
                f.write(json.dumps(dataclasses.asdict(failure)) + "\n")

    # ---------------------------------------------------------------- scoring
    def score(self, batch: Batch, timer: PhaseTimer, roles: Optional[List[str]] = None) -> None:
        """Fill ``batch.logprobs``: each scorer role's (default: every one started) and, unless the
        loss takes them from its own forward, the trainer's "old" log-probs."""
        roles = sorted(self.scorers) if roles is None else roles
        with timer.phase("score"):
            pending = [self.scorers[r].score_async(batch) for r in roles]
            if not self.plan.loss.old_from_forward:
                batch.logprobs["old"] = self.trainer.compute_logprobs(batch)
            for role, p in zip(roles, pending):
                batch.set_scores(role, p.result())

    def score_roles(self, batch: Batch, roles: List[str]) -> Dict[str, torch.Tensor]:
        """Float [B, R] log-probs of ``batch``'s responses under each scorer role (in flight together)."""
        pending = [self.scorers[r].score_async(batch) for r in roles]
        return dict(zip(roles, [p.result() for p in pending]))

    def policy_logprobs(self, batch: Batch, temperature: Optional[float] = None) -> torch.Tensor:
        """Float [B, R]: the trainer's log-probs of ``batch``'s responses (at ``rollout.temperature``
        unless given), no gradient."""
        return self.trainer.compute_logprobs(batch, temperature=temperature)

    # --------------------------------------------------------------- training
    def compute_advantages(self, batch: Batch, **extra) -> None:
        batch.advantages = advantages.for_batch(self.plan.advantage, batch, dict(self.plan.advantage_params), **extra)

    def train(self, batch: Batch, step: int, update: int = 0, loss=None) -> Dict[str, float]:
        """PPO epochs over ``algorithm.mini_batches`` shuffled mini-batches; metrics averaged.
        ``update`` numbers the calls within a step (Nash-MP's inner updates): each call shuffles
        its own way, and a resumed run shuffles exactly as an uninterrupted one. ``loss``: a
        trainer loss spec (``actors.trainer.rank.LossSpec``); default the plan's policy loss."""
        alg = self.cfg.algorithm
        loss = (self.plan.loss, list(self.plan.terms)) if loss is None else loss
        gen = torch.Generator().manual_seed(minibatch_seed(self.cfg.trainer.seed, step, update))
        collected: List[Dict[str, float]] = []
        self._engines_behind = True
        for rows in batch.mini_batches(alg.mini_batches, alg.ppo_epochs, gen):
            m = self.trainer.train(batch.select(rows), step, loss)
            if m.get("trainer/skipped_nonfinite"):
                print(f"rlplat: step {step}: NaN/inf loss in {m['trainer/nonfinite_micro_batches']:.0f} "
                      "micro-batch(es); that update was skipped", flush=True)
            collected.append(m)
        keys = set().union(*collected)
        return {k: sum(m[k] for m in collected if k in m) / sum(1 for m in collected if k in m) for k in keys}

    def save_policy_state(self) -> None:
        """Keep the policy's parameters and optimizer state (Mirror-Prox's pi_k) for ``restore_policy_state``."""
        self.trainer.snapshot_state()

    def restore_policy_state(self) -> None:
        self.trainer.restore_state()

    def sync(self) -> Dict[str, float]:
        """Trainer -> every engine (``EnginePool.sync``), plus ``faults/actor_restarts``."""
        metrics = self.engines.sync()
        self._engines_behind = False
        return {**metrics, "faults/actor_restarts": float(self.actor_restarts)}

    def sync_if_behind(self) -> Dict[str, float]:
        """``sync`` when the trainer has updated since the last one (a loop that does not sample
        every step, like f-DPO's, leaves the engines behind until they are needed), else ``{}``."""
        return self.sync() if self._engines_behind else {}

    def policy_weights_ref(self) -> ray.ObjectRef:
        """ObjectRef of the weights of the last sync (``PackedWeights`` made by the trainer's rank 0;
        never fetched by the driver): for ``load_scorer_weights`` and ``param_distance``."""
        return self.engines.weights_ref()

    def param_distance(self, weights_ref: ray.ObjectRef) -> float:
        """L2 distance between the trainer's current parameters and ``weights_ref``'s, computed on rank 0."""
        return self.trainer.param_distance(weights_ref)

    def load_scorer_weights(self, role: str, weights: ray.ObjectRef) -> None:
        """Load ``weights`` (``policy_weights_ref()``) into the ``role`` scorers, actor to actor (the
        pool reloads them into a restarted actor)."""
        self.scorers[role].load_weights(weights)

    # ---------------------------------------------------------------- metrics
    def batch_metrics(self, batch: Batch, prefix: str = "", pass_rate: bool = True) -> Dict[str, float]:
        """Reward mean, response length and sample count; ``pass_rate``: also the share of rewards
        reaching ``reward.correct_threshold`` (meaningless where rewards are win probabilities)."""
        out = {
            f"{prefix}reward/mean": batch.rewards.mean().item(),
            f"{prefix}response/length_mean": batch.response_mask.sum(1).mean().item(),
            f"{prefix}samples": float(len(batch)),
        }
        if pass_rate:
            out[f"{prefix}reward/pass_rate"] = (batch.rewards >= self.cfg.reward.correct_threshold).float().mean().item()
        if "episode" in batch.meta:  # multi-turn episodes: turns, tool calls and errors, observation share
            out.update({prefix + k: v for k, v in episode_metrics(batch.meta["episode"]).items()})
        return out

    def finish_step(self, step: int, metrics: Dict[str, float], timer: PhaseTimer, *batches: Batch) -> Dict[str, float]:
        """The step's metrics plus its phase times and ``throughput/tokens`` of the batches trained;
        ``trainer.log_samples`` of their rows go to ``rollouts.jsonl``."""
        self.rollout_log.write(step, batches)
        metrics.update(timer.metrics())
        tokens = sum(float(b.num_tokens.sum()) for b in batches)
        metrics.update({"step": step, "throughput/tokens": tokens, "throughput/tokens_per_s": tokens / metrics["time/step"]})
        return metrics
