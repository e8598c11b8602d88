"""The single controller: owns the actors of one run and the phases a step is made of.

Phases: generate (rollout engines) -> rewards (reward worker) and per-role log-probs (scorers,
the trainer's "old" log-probs) concurrently -> advantages -> PPO epochs over mini-batches
(trainer group) -> weight sync trainer -> rollout engines. Which phases run in which order is the
loop's business (``launch.loops``), chosen by ``AlgorithmPlan.loop``.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Dict, List, Optional, Tuple

import ray
import torch

from actors.reward_worker import RewardWorker
from actors.rollout import ROLLOUT_BACKENDS, StaleWeightsError
from actors.rollout.weight_sync import WEIGHT_SYNCS
from actors.scorer_pool import ScorerPool
from actors.trainer.group import TrainerGroup
from launch.loops import LOOPS
from launch.checkpoint import Checkpointer
from launch.faults import kill_actors
from launch.evaluate import engines_generate_fn, evaluate
from launch.monitoring import MetricsExporter
from launch.placement import colocated_group
from launch.metrics import MetricsWriter, PhaseTimer, eval_line, progress_line, truncate_metrics
from rlplat import advantages, seeds
from rlplat.algorithms import AlgorithmPlan
from rlplat.batch import Batch, minibatch_seed
from rlplat.config.schema import RunConfig
from rlplat.data import PromptRow, load_prompts, render_prompts

# A rollout or reward actor died or is restarting: recoverable (see Controller.recoverable; scorer pools recover their own).
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


@dataclasses.dataclass
class PendingRollout:
    """A submitted generation: ``calls`` submit it again (recovery), ``refs`` the first submission."""

    calls: List
    refs: Optional[List]


class Controller:
    """``model_paths`` maps role ("policy", "tokenizer", "reference", "teacher", ...) to a path or hub id."""

    def __init__(self, cfg: RunConfig, plan: AlgorithmPlan, model_paths: Dict[str, str], run_dir: str, tokenizer) -> None:
        self.cfg, self.plan, self.paths, self.run_dir, self.tok = cfg, plan, model_paths, run_dir, tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.rows = load_prompts(cfg.data, "train")  # the data must not change with trainer.seed
        # Rendering every prompt up front makes an over-long prompt fail now, not at step 500.
        self.prompt_ids = dict(zip((r.index for r in self.rows), render_prompts(self.rows, tokenizer, cfg.data)))
        self.engines = self._start_engines()
        roles = sorted(plan.scorer_roles)
        counts = {role: self._num_scorers(role) for role in roles}
        self.placement = colocated_group(cfg.resources, cfg.trainer.num_ranks, [r for r in roles for _ in range(counts[r])])
        self.trainer = TrainerGroup(cfg, model_paths["policy"], cfg.trainer.num_ranks, cfg.resources,
                                    placement_group=self.placement)
        firsts = itertools.accumulate([0] + [counts[r] for r in roles])  # a pool's first actor's global index
        self.scorers = {role: self._start_scorer(role, counts[role], first) for role, first in zip(roles, firsts)}
        reward = ray.remote(num_cpus=cfg.resources.reward_cpus, max_restarts=cfg.resources.max_actor_restarts)(RewardWorker)
        self.reward = reward.options(name="reward-0").remote(cfg.reward)
        ray.get([self.reward.ready.remote()] + [e.ready.remote() for e in self.engines])
        for pool in self.scorers.values():
            pool.ready()
        # rollout.weight_sync: collective (a torch.distributed group formed now) | object_store
        self.weight_sync = WEIGHT_SYNCS.get(cfg.rollout.weight_sync)(self.trainer, self.engines, cfg.rollout)
        if cfg.trainer.eval_every:  # held-out prompts render now: an over-long one fails at startup
            self.eval_rows = load_prompts(cfg.data, "eval")[: cfg.trainer.eval_max_prompts]
            self.eval_ids = render_prompts(self.eval_rows, tokenizer, cfg.data)
        self.probe = self._make_probe()
        self.weight_version = 0  # bumped at every sync; engines refuse to sample from another
        self.syncs, self.check_due = 0, True  # the probe check's cadence (sync_weights)
        self.actor_restarts = 0
        self.loop = LOOPS.get(plan.loop)(self)
        self._write_actor_list()

    # ------------------------------------------------------------------ actors
    def _start_engines(self) -> List:
        cfg, res = self.cfg, self.cfg.resources
        cls = ROLLOUT_BACKENDS.get(cfg.rollout.backend)
        # vLLM's engine core runs inside the actor process (no extra processes on a CPU budget).
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        remote = ray.remote(num_cpus=res.rollout_cpus, num_gpus=res.rollout_gpus * cfg.rollout.tensor_parallel_size,
                            max_restarts=res.max_actor_restarts)(cls)
        return [
            remote.options(name=f"rollout-{i}", runtime_env={"env_vars": env}).remote(
                self.paths["policy"], self.paths["tokenizer"], cfg.rollout, cfg.model.dtype, cfg.trainer.seed + i)
            for i in range(cfg.rollout.num_engines)
        ]

    def _num_scorers(self, role: str) -> int:
        """``roles.<role>.num_actors``; the snapshot role (the policy, no RoleModelConfig) has one."""
        role_cfg = getattr(self.cfg.roles, role, None)
        return role_cfg.num_actors if role_cfg is not None else 1

    def _start_scorer(self, role: str, num_actors: int, first: int) -> ScorerPool:
        """Scorers ``scorer-<role>-0..num_actors-1``; global scorer j shares bundle j % num_ranks."""
        res = self.cfg.resources
        role_cfg = getattr(self.cfg.roles, role, None)
        micro = role_cfg.micro_batch_tokens if role_cfg is not None else self.cfg.trainer.micro_batch_tokens
        return ScorerPool(
            role, self.paths[role], num_actors, dtype=self.cfg.model.dtype, micro_batch_tokens=micro,
            trust_remote_code=self.cfg.model.trust_remote_code, temperature=self.cfg.rollout.temperature,
            num_cpus=res.scorer_cpus, num_gpus=res.scorer_gpus, placement_group=self.placement,
            bundle_indices=[(first + i) % self.cfg.trainer.num_ranks for i in range(num_actors)],
            max_restarts=res.max_actor_restarts)

    def _make_probe(self) -> Batch:
        """A fixed sequence whose log-probs must agree between trainer and engines after every sync."""
        row = self.rows[0]
        ids = self.prompt_ids[row.index]
        resp = self.tok.encode(" " + (row.answer or "0"), add_special_tokens=False) + [self.tok.eos_token_id]
        return Batch(
            prompt_ids=torch.tensor([ids]), prompt_mask=torch.ones(1, len(ids), dtype=torch.long),
            response_ids=torch.tensor([resp]), response_mask=torch.ones(1, len(resp)),
            group_ids=torch.zeros(1, dtype=torch.long),
        )

    def _write_actor_list(self) -> None:
        """``actors.json`` in the run directory: the named actors this run started (as in the dashboard)."""
        with open(os.path.join(self.run_dir, "actors.json"), "w") as f:
            json.dump(sorted(ray.util.list_named_actors()), f)

    # ------------------------------------------------------------------ phases
    def step_seed(self, step: int, phase: str = "rollout", offset: int = 0) -> int:
        """Seed of sample ``offset`` of the draw ``phase`` (a name in ``rlplat.seeds.PHASES``) at
        ``step``; every (step, phase) has its own stream of seeds, and a resumed run samples
        exactly what an uninterrupted one did."""
        if phase not in seeds.PHASES:
            raise KeyError(f"unknown sampling phase '{phase}'; known: {sorted(seeds.PHASES)}")
        return seeds.stream_seed(self.cfg.trainer.seed, step, seeds.PHASES[phase], offset)

    def generate(self, rows: List[PromptRow], group_size: int, group_offset: int = 0, seed: Optional[int] = None) -> Batch:
        """``group_size`` samples per prompt; contiguous prompt chunks per engine keep group ids unique."""
        return self.collect(self.launch_generate(rows, group_size, group_offset, seed))

    def launch_generate(self, rows: List[PromptRow], group_size: int, group_offset: int = 0,
                        seed: Optional[int] = None) -> "PendingRollout":
        """Submit ``generate`` to the engines now, on the weights they hold now; ``collect`` it later.
        Engines run their calls in order, so a weight sync submitted after it waits for it."""
        bounds = torch.linspace(0, len(rows), len(self.engines) + 1).round().long().tolist()
        calls = []
        for engine, (a, b) in zip(self.engines, zip(bounds, bounds[1:])):
            if a == b:
                continue
            chunk = rows[a:b]
            meta = {"prompt": [r.prompt for r in chunk], "answer": [r.answer for r in chunk], "row_index": [r.index for r in chunk]}
            ids = [self.prompt_ids[r.index] for r in chunk]
            chunk_seed = None if seed is None else seed + a * group_size
            calls.append(lambda e=engine, i=ids, o=group_offset + a, m=meta, sd=chunk_seed: e.generate.remote(
                i, group_size, o, self.pad_id, m, sd, weight_version=self.weight_version))
        return PendingRollout(calls, [call() for call in calls])

    def collect(self, pending: "PendingRollout") -> Batch:
        """The Batch of a launched generation. If an engine died meanwhile (or was restarted), the
        actors are recovered and the same seeded calls run again on the current weights, so no
        sample is lost or duplicated (the retried rows carry the newer weight version)."""
        first = [pending.refs]

        def get() -> Batch:
            refs = first.pop() if first else [call() for call in pending.calls]  # a retry submits afresh
            return Batch.concat(ray.get(refs), pad_id=self.pad_id)

        return self.recoverable(get)

    def reward_outcome(self, batch: Batch):
        """``RewardOutcome`` of every sample (runs on the reward worker, never on the driver)."""
        m = batch.meta
        return self.score_texts(m["response_text"], m["answer"], m["prompt"])

    def score_texts(self, responses, answers, prompts):
        """``RewardOutcome`` of raw texts on the reward worker (``RewardWorker.score``'s signature)."""
        return self.recoverable(lambda: ray.get(self.reward.score.remote(responses, answers, prompts)))

    def score_roles(self, batch: Batch, roles: List[str]) -> Dict[str, torch.Tensor]:
        """Float [B, R] log-probs of ``batch``'s responses under each scorer role (all in flight
        together; each ``ScorerPool`` recovers its own actors)."""
        pending = [self.scorers[r].score_async(batch) for r in roles]
        return dict(zip(roles, [p.result() for p in pending]))

    # --------------------------------------------------------------- recovery
    def recoverable(self, call):
        """Run ``call``; when a rollout engine or the reward worker died (Ray restarts it,
        up to ``resources.max_actor_restarts`` times) or an engine no longer holds the current
        weights, bring every actor back to the current state and run ``call`` again. Sampling
        is seeded per step, so the retried call returns the same samples: none are lost or
        duplicated. Trainer ranks are not retried: their failure stops the run."""
        for attempt in range(self.cfg.resources.max_actor_restarts + 1):
            try:
                return call()
            except ACTOR_LOST + (StaleWeightsError,) as exc:
                if attempt == self.cfg.resources.max_actor_restarts:
                    raise
                self._recover(exc)

    def _recover(self, exc: Exception, timeout_s: float = 600.0) -> None:
        print(f"rlplat: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; recovering and retrying", flush=True)
        self.actor_restarts += 1
        self.check_due = True
        pings = [e.ready for e in self.engines] + [self.reward.ready]
        deadline = time.time() + timeout_s
        for ping in pings:  # a restarting actor refuses calls (ActorUnavailableError) until it is back
            while True:
                try:
                    ray.get(ping.remote())
                    break
                except ray.exceptions.ActorUnavailableError:
                    if time.time() > deadline:
                        raise
                    time.sleep(1.0)
        for pool in self.scorers.values():  # back, with the weights last loaded into them
            pool.restore(max(deadline - time.time(), 0.0))
        self._push_weights()

    def score_and_reward(self, batch: Batch, timer: PhaseTimer, roles: Optional[List[str]] = None) -> Tuple[Batch, Dict[str, float]]:
        """Rewards, scorer log-probs and (unless the loss takes them from its own forward) the
        trainer's "old" log-probs, all in flight together.

        Returns the batch without the groups whose reward failed (their baseline is meaningless;
        the failures are counted in ``reward/*`` and written to ``reward_failures.jsonl``)."""
        m = batch.meta
        reward_ref = self.reward.score.remote(m["response_text"], m["answer"], m["prompt"])  # in flight meanwhile
        self.score(batch, timer, roles)
        with timer.phase("reward"):
            try:
                outcome = ray.get(reward_ref)
            except ACTOR_LOST as exc:
                self._recover(exc)
                outcome = self.reward_outcome(batch)
        return self.apply_rewards(batch, outcome)

    def score(self, batch: Batch, timer: PhaseTimer, roles: Optional[List[str]] = None) -> None:
        """Fill ``batch.logprobs``: the trainer's "old" and each scorer role's (default: every one started)."""
        roles = sorted(self.scorers) if roles is None else roles
        with timer.phase("score"):
            pending = [self.scorers[r].score_async(batch) for r in roles]  # each pool recovers its actors
            if not self.plan.loss.old_from_forward:
                batch.logprobs["old"] = self.trainer.compute_logprobs(batch)
            batch.logprobs.update(zip(roles, [p.result() for p in pending]))

    def apply_rewards(self, batch: Batch, outcome) -> Tuple[Batch, Dict[str, float]]:
        """Set ``batch.rewards`` from a ``RewardOutcome`` of its rows; returns the batch without the
        groups whose reward failed (logged) and the ``reward/*`` failure metrics."""
        metrics = outcome.metrics()
        if outcome.num_invalid:
            self._log_reward_failures(outcome)
            keep = outcome.group_valid(batch.group_ids)
            if not bool(keep.any()):
                raise RuntimeError(f"every group has a failed reward this step:\n{outcome.summary()}")
            batch.rewards = outcome.rewards.float()
            batch = batch.select(keep.nonzero().flatten())
        else:
            batch.rewards = outcome.rewards.float()
        return batch, metrics

    def _log_reward_failures(self, outcome) -> None:
        print(f"rlplat: {outcome.summary()}", flush=True)
        with open(os.path.join(self.run_dir, "reward_failures.jsonl"), "a") as f:
            for failure in outcome.failures:
                f.write(json.dumps(dataclasses.asdict(failure)) + "\n")

    def compute_advantages(self, batch: Batch, **extra) -> None:
        fn = advantages.get(self.plan.advantage)
        batch.advantages = fn(batch.rewards, batch.group_ids, **dict(self.plan.advantage_params), **extra)

    def train(self, batch: Batch, step: int, update: int = 0) -> Dict[str, float]:
        """PPO epochs over ``algorithm.mini_batches`` shuffled mini-batches; metrics averaged.
        ``update`` numbers the calls within a step (Nash-MP's inner updates): each call shuffles
        its own way, and a resumed run shuffles exactly as an uninterrupted one."""
        alg = self.cfg.algorithm
        gen = torch.Generator().manual_seed(minibatch_seed(self.cfg.trainer.seed, step, update))
        collected: List[Dict[str, float]] = []
        for rows in batch.mini_batches(alg.mini_batches, alg.ppo_epochs, gen):
            m = self.trainer.train(batch.select(rows), step, (self.plan.loss, list(self.plan.terms)))
            if m.get("trainer/skipped_nonfinite"):
                print(f"rlplat: step {step}: NaN/inf loss in {m['trainer/nonfinite_micro_batches']:.0f} "
                      "micro-batch(es); that update was skipped", flush=True)
            collected.append(m)
        keys = set().union(*collected)
        return {k: sum(m[k] for m in collected if k in m) / sum(1 for m in collected if k in m) for k in keys}

    def sync_weights(self) -> Dict[str, float]:
        """Trainer -> every rollout engine (``rollout.weight_sync``, see actors.rollout.weight_sync),
        then the probe check."""
        out: Dict[str, float] = {}
        if self.cfg.trainer.max_staleness:
            # Engines still generating the next batches: waiting for them is not transfer time.
            t0 = time.perf_counter()
            self.recoverable(lambda: ray.get([e.ready.remote() for e in self.engines]))
            out["async/drain_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.weight_version += 1
        sent = self.recoverable(lambda: self.weight_sync.push(self.weight_version))
        seconds = time.perf_counter() - t0
        restarts = self.actor_restarts + sum(pool.recoveries for pool in self.scorers.values())
        out.update({**sent.metrics(seconds), "faults/actor_restarts": float(restarts)})
        # The probe check: on the first sync, after every recovery, and every trainer.sync_check_every syncs.
        self.syncs += 1
        if self.check_due or self.syncs % self.cfg.trainer.sync_check_every == 0:
            out.update(self.check_sync())
            self.check_due = False
        return out

    def _push_weights(self) -> None:
        """After a recovery: the current trainer weights (version ``weight_version``) into every
        engine (a collective sync re-forms its group around a restarted engine by itself)."""
        if self.weight_version:
            self.weight_sync.push(self.weight_version)

    @property
    def weights_ref(self):
        """ObjectRef of the weights of the last sync (``PackedWeights``), for loops that need them
        whole (Mirror-Prox's snapshot); with ``collective`` rank 0 produces it on first use."""
        return self.weight_sync.weights_ref(self.weight_version)

    def check_sync(self) -> Dict[str, float]:
        """Largest |engine log-prob - trainer log-prob| over the probe's tokens, across engines.
        Both at temperature 1: the engines report raw log-probs whatever rollout.temperature is."""
        trainer_lp = self.trainer.compute_logprobs(self.probe, temperature=1.0)[0]
        p, r = self.probe.prompt_ids[0].tolist(), self.probe.response_ids[0].tolist()
        engine_lps = self.recoverable(lambda: ray.get([e.sequence_logprobs.remote(p, r) for e in self.engines]))
        return {"sync/logprob_max_abs_diff": max((torch.tensor(lp) - trainer_lp).abs().max().item() for lp in engine_lps)}

    def evaluate(self, step: int) -> Dict[str, float]:
        """Greedy pass@1 and sampled pass@k on held-out prompts, on the engines' current weights.
        Every sample, its reward and the greedy response go to ``<run_dir>/eval/step_<step>.json``
        (``step`` -1: before the first update), for offline comparisons between runs."""
        t = self.cfg.trainer
        result = evaluate(engines_generate_fn(self.engines, self.pad_id), self.eval_rows, self.eval_ids, self.score_texts,
                          n=t.eval_n, ks=list(t.eval_ks), greedy_fn=engines_generate_fn(self.engines, self.pad_id, greedy=True),
                          correct_threshold=self.cfg.reward.correct_threshold, keep_samples=True,
                          seed=self.step_seed(0, "eval"))
        out_dir = os.path.join(self.run_dir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"step_{step}.json"), "w") as f:
            json.dump({"step": step, **result.to_json()}, f)
        print(eval_line(step, result.metrics), flush=True)
        return result.metrics

    # ----------------------------------------------------------------- metrics
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
        return out

    def finish_step(self, step: int, metrics: Dict[str, float], timer: PhaseTimer, *batches: Batch) -> Dict[str, float]:
        metrics.update(timer.metrics())
        tokens = sum(float(b.num_tokens.sum()) for b in batches)
        metrics.update({"step": step, "throughput/tokens": tokens, "throughput/tokens_per_s": tokens / metrics["time/step"]})
        return metrics

    def shutdown(self) -> None:
        """Kill this run's actors (a driver that stays alive, e.g. a test, must free their names)."""
        handles = list(self.engines) + [self.reward] + list(getattr(self.loop, "actors", []))
        for h in handles:
            ray.kill(h)
        for pool in self.scorers.values():
            pool.kill()
        self.trainer.shutdown()
        if self.placement is not None:
            ray.util.remove_placement_group(self.placement)

    # ------------------------------------------------------------- checkpoints
    def save(self, step: int) -> str:
        raw = self.trainer.compute_logprobs(self.probe, temperature=1.0)[0]  # as check_sync and an HF forward
        state = {"loop": self.loop.state_dict(), "wall": self.wall(), "probe_logprobs": raw.tolist(),
                 "probe": {"prompt_ids": self.probe.prompt_ids[0].tolist(), "response_ids": self.probe.response_ids[0].tolist()}}
        path = self.checkpointer.save(step, self.trainer, state)
        print(f"rlplat: checkpoint {path}", flush=True)
        return path

    def resume(self) -> int:
        """Restore the latest complete checkpoint (or ``trainer.resume`` if it is a path);
        returns the first step to run. Metrics logged after that checkpoint are dropped so
        every step appears exactly once in ``metrics.jsonl``."""
        mode = self.cfg.trainer.resume
        path = self.checkpointer.latest() if mode == "auto" else (None if mode == "none" else mode)
        if path is None:
            return 0
        state = self.checkpointer.load(path, self.trainer)
        self.loop.load_state_dict(state["loop"])
        self.wall_offset = state.get("wall", 0.0)
        start = state["step"] + 1
        truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), start)
        self.sync_weights()
        if hasattr(self.loop, "after_resume"):
            self.loop.after_resume()
        print(f"rlplat: resumed from {path}; continuing at step {start + 1}", flush=True)
        return start

    def wall(self) -> float:
        """Seconds since the run started, counting the time before a resume (``time/wall``)."""
        return self.wall_offset + time.time() - self.wall_start

    def run(self) -> None:
        self.wall_start, self.wall_offset = time.time(), 0.0
        self.checkpointer = Checkpointer(self.run_dir, self.cfg.trainer.keep_last)
        start_step = self.resume()
        writer = MetricsWriter(self.run_dir)
        exporter = MetricsExporter(self.run_dir, run_name=os.path.basename(self.run_dir))  # dashboard + TensorBoard
        started = time.time()
        every, last = self.cfg.trainer.save_every, self.cfg.trainer.max_steps - 1
        try:
            if self.cfg.trainer.eval_every and self.cfg.trainer.eval_before_train and start_step == 0:
                initial = {"step": -1, **self.evaluate(-1), "time/wall": self.wall()}
                writer.write(initial)
                exporter.write(initial)
            for step in range(start_step, self.cfg.trainer.max_steps):
                kill_actors(step)
                try:
                    metrics = self.loop.step(step)
                except ray.exceptions.RayActorError as exc:  # what recoverable() left: a trainer rank
                    raise RuntimeError(
                        f"step {step}: a trainer rank died ({str(exc).splitlines()[0][:300]}); the trainer group "
                        f"was stopped. Last complete checkpoint: {self.checkpointer.latest() or 'none'}; "
                        "rerun with trainer.resume=auto to continue from it") from exc
                if self.cfg.trainer.eval_every and ((step + 1) % self.cfg.trainer.eval_every == 0 or step == last):
                    metrics.update(self.evaluate(step))  # every loop ends its step with the engines in sync
                metrics["time/wall"] = self.wall()
                writer.write(metrics)
                exporter.write(metrics)
                print(progress_line(step, self.cfg.trainer.max_steps, metrics, started, start_step), flush=True)
                if step == last or (every and (step + 1) % every == 0):
                    self.save(step)
        finally:
            writer.close()
            exporter.close()
