"""The single controller: owns the actors of one run and the phases a step is made of.

Phases: generate (rollout engines) -> rewards (reward worker) and per-role log-probs (scorers,
the trainer's "old" log-probs) concurrently -> advantages -> PPO epochs over mini-batches
(trainer group) -> weight sync trainer -> rollout engines. Which phases run in which order is the
loop's business (``launch.loops``), chosen by ``AlgorithmPlan.loop``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, List, Optional, Tuple

import ray
import torch

from actors.reward_worker import RewardWorker
from actors.rollout import ROLLOUT_BACKENDS, StaleWeightsError
from actors.rollout.weight_sync import WEIGHT_SYNCS
from actors.scorer import create_scorer_actor
from actors.trainer.group import TrainerGroup
from launch.loops import LOOPS
from launch.checkpoint import Checkpointer
from launch.faults import kill_actors
from launch.evaluate import engines_generate_fn, evaluate
from launch.monitoring import MetricsExporter
from launch.placement import colocated_group
from launch.metrics import MetricsWriter, PhaseTimer, eval_line, progress_line, truncate_metrics
from rlplat import advantages
from rlplat.algorithms import AlgorithmPlan
from rlplat.batch import Batch
from rlplat.config.schema import RunConfig
from rlplat.data import PromptRow, load_prompts, render_prompts

# A rollout, scorer or reward actor died or is restarting: recoverable (see Controller.recoverable).
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


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
        self.placement = colocated_group(cfg.resources, cfg.trainer.num_ranks, roles)
        self.trainer = TrainerGroup(cfg, model_paths["policy"], cfg.trainer.num_ranks, cfg.resources,
                                    placement_group=self.placement)
        self.scorers = {role: self._start_scorer(role, j) for j, role in enumerate(roles)}
        reward = ray.remote(num_cpus=cfg.resources.reward_cpus, max_restarts=cfg.resources.max_actor_restarts)(RewardWorker)
        self.reward = reward.options(name="reward-0").remote(cfg.reward)
        ray.get([self.reward.ready.remote()] + [e.ready.remote() for e in self.engines])
        # rollout.weight_sync: collective (a torch.distributed group formed now) | object_store
        self.weight_sync = WEIGHT_SYNCS.get(cfg.rollout.weight_sync)(self.trainer, self.engines, cfg.rollout)
        if cfg.trainer.eval_every:  # held-out prompts render now: an over-long one fails at startup
            self.eval_rows = load_prompts(cfg.data, "eval")[: cfg.trainer.eval_max_prompts]
            self.eval_ids = render_prompts(self.eval_rows, tokenizer, cfg.data)
        self.probe = self._make_probe()
        self.weight_version = 0  # bumped at every sync; engines refuse to sample from another
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

    def _start_scorer(self, role: str, index: int):
        res = self.cfg.resources
        role_cfg = getattr(self.cfg.roles, role, None)
        micro = role_cfg.micro_batch_tokens if role_cfg is not None else self.cfg.trainer.micro_batch_tokens
        return create_scorer_actor(
            role, self.paths[role], dtype=self.cfg.model.dtype, micro_batch_tokens=micro,
            trust_remote_code=self.cfg.model.trust_remote_code, temperature=self.cfg.rollout.temperature,
            num_cpus=res.scorer_cpus, num_gpus=res.scorer_gpus, name=f"scorer-{role}-0",
            placement_group=self.placement, bundle_index=index % self.cfg.trainer.num_ranks,
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
    def step_seed(self, step: int, salt: int = 0) -> int:
        """Sampling seed of a step: a resumed run samples exactly what an uninterrupted one did."""
        return (self.cfg.trainer.seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2**31 - 1)

    def generate(self, rows: List[PromptRow], group_size: int, group_offset: int = 0, seed: Optional[int] = None) -> Batch:
        """``group_size`` samples per prompt; contiguous prompt chunks per engine keep group ids unique."""
        bounds = torch.linspace(0, len(rows), len(self.engines) + 1).round().long().tolist()
        futures = []
        for engine, (a, b) in zip(self.engines, zip(bounds, bounds[1:])):
            if a == b:
                continue
            chunk = rows[a:b]
            meta = {"prompt": [r.prompt for r in chunk], "answer": [r.answer for r in chunk], "row_index": [r.index for r in chunk]}
            ids = [self.prompt_ids[r.index] for r in chunk]
            chunk_seed = None if seed is None else seed + a * group_size
            futures.append(lambda e=engine, i=ids, o=group_offset + a, m=meta, sd=chunk_seed: e.generate.remote(
                i, group_size, o, self.pad_id, m, sd, weight_version=self.weight_version))
        return self.recoverable(lambda: Batch.concat(ray.get([f() for f in futures]), pad_id=self.pad_id))

    def reward_outcome(self, batch: Batch):
        """``RewardOutcome`` of every sample (runs on the reward worker, never on the driver)."""
        m = batch.meta
        return self.score_texts(m["response_text"], m["answer"], m["prompt"])

    def score_texts(self, responses, answers, prompts):
        """``RewardOutcome`` of raw texts on the reward worker (``RewardWorker.score``'s signature)."""
        return self.recoverable(lambda: ray.get(self.reward.score.remote(responses, answers, prompts)))

    def score_roles(self, batch: Batch, roles: List[str]) -> Dict[str, torch.Tensor]:
        """Float [B, R] log-probs of ``batch``'s responses under each scorer role."""
        return self.recoverable(lambda: dict(zip(roles, ray.get([self.scorers[r].score.remote(batch) for r in roles]))))

    # --------------------------------------------------------------- recovery
    def recoverable(self, call):
        """Run ``call``; when a rollout engine, scorer or the reward worker died (Ray restarts it,
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
        pings = [e.ready for e in self.engines] + [self.reward.ready] + [s.info for s in self.scorers.values()]
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
        self._push_weights()
        if hasattr(self.loop, "after_recover"):
            self.loop.after_recover()

    def score_and_reward(self, batch: Batch, timer: PhaseTimer, roles: Optional[List[str]] = None) -> Tuple[Batch, Dict[str, float]]:
        """Rewards, scorer log-probs and the trainer's "old" log-probs, all in flight together.

        Returns the batch without the groups whose reward failed (their baseline is meaningless;
        the failures are counted in ``reward/*`` and written to ``reward_failures.jsonl``)."""
        roles = sorted(self.scorers) if roles is None else roles
        m = batch.meta
        reward_ref = self.reward.score.remote(m["response_text"], m["answer"], m["prompt"])  # in flight meanwhile
        with timer.phase("score"):
            role_refs = [self.scorers[r].score.remote(batch) for r in roles]
            batch.logprobs["old"] = self.trainer.compute_logprobs(batch)
            try:
                batch.logprobs.update(zip(roles, ray.get(role_refs)))
            except ACTOR_LOST as exc:
                self._recover(exc)
                batch.logprobs.update(self.score_roles(batch, roles))
        with timer.phase("reward"):
            try:
                outcome = ray.get(reward_ref)
            except ACTOR_LOST as exc:
                self._recover(exc)
                outcome = self.reward_outcome(batch)
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

    def train(self, batch: Batch, step: int) -> Dict[str, float]:
        """PPO epochs over ``algorithm.mini_batches`` shuffled mini-batches; metrics averaged."""
        alg = self.cfg.algorithm
        gen = torch.Generator().manual_seed(self.cfg.trainer.seed * 100003 + step)
        collected: List[Dict[str, float]] = []
        groups = batch.group_ids.unique()
        for _ in range(alg.ppo_epochs):
            # Mini-batches are made of whole groups: group-level masks and baselines stay intact.
            for chosen in groups[torch.randperm(len(groups), generator=gen)].chunk(alg.mini_batches):
                mb = batch.select(torch.isin(batch.group_ids, chosen).nonzero().flatten())
                m = self.trainer.train(mb, step, (self.plan.loss, list(self.plan.terms)))
                if m.get("trainer/skipped_nonfinite"):
                    print(f"rlplat: step {step}: NaN/inf loss in {m['trainer/nonfinite_micro_batches']:.0f} "
                          "micro-batch(es); that update was skipped", flush=True)
                collected.append(m)
        keys = set().union(*collected)
        return {k: sum(m[k] for m in collected if k in m) / sum(1 for m in collected if k in m) for k in keys}

    def sync_weights(self) -> Dict[str, float]:
        """Trainer -> every rollout engine (``rollout.weight_sync``, see actors.rollout.weight_sync),
        then the probe check."""
        t0 = time.perf_counter()
        self.weight_version += 1
        sent = self.recoverable(lambda: self.weight_sync.push(self.weight_version))
        seconds = time.perf_counter() - t0
        return {**sent.metrics(seconds), "faults/actor_restarts": float(self.actor_restarts), **self.check_sync()}

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
        """Largest |engine log-prob - trainer log-prob| over the probe's tokens, across engines."""
        trainer_lp = self.trainer.compute_logprobs(self.probe)[0]
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
                          correct_threshold=self.cfg.reward.correct_threshold, keep_samples=True, seed=t.seed + 10**6)
        out_dir = os.path.join(self.run_dir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"step_{step}.json"), "w") as f:
            json.dump({"step": step, **result.to_json()}, f)
        print(eval_line(step, result.metrics), flush=True)
        return result.metrics

    # ----------------------------------------------------------------- metrics
    def batch_metrics(self, batch: Batch, prefix: str = "") -> Dict[str, float]:
        correct = (batch.rewards >= self.cfg.reward.correct_threshold).float()
        return {
            f"{prefix}reward/mean": batch.rewards.mean().item(),
            f"{prefix}reward/pass_rate": correct.mean().item(),
            f"{prefix}response/length_mean": batch.response_mask.sum(1).mean().item(),
            f"{prefix}samples": float(len(batch)),
        }

    def finish_step(self, step: int, metrics: Dict[str, float], timer: PhaseTimer, *batches: Batch) -> Dict[str, float]:
        metrics.update(timer.metrics())
        tokens = sum(float(b.num_tokens.sum()) for b in batches)
        metrics.update({"step": step, "throughput/tokens_per_s": tokens / metrics["time/step"]})
        return metrics

    def shutdown(self) -> None:
        """Kill this run's actors (a driver that stays alive, e.g. a test, must free their names)."""
        handles = list(self.engines) + list(self.scorers.values()) + [self.reward] + list(getattr(self.loop, "actors", []))
        for h in handles:
            ray.kill(h)
        self.trainer.shutdown()
        if self.placement is not None:
            ray.util.remove_placement_group(self.placement)

    # ------------------------------------------------------------- checkpoints
    def save(self, step: int) -> str:
        state = {"loop": self.loop.state_dict(), "probe_logprobs": self.trainer.compute_logprobs(self.probe)[0].tolist(),
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
        start = state["step"] + 1
        truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), start)
        self.sync_weights()
        if hasattr(self.loop, "after_resume"):
            self.loop.after_resume()
        print(f"rlplat: resumed from {path}; continuing at step {start + 1}", flush=True)
        return start

    def run(self) -> None:
        self.checkpointer = Checkpointer(self.run_dir, self.cfg.trainer.keep_last)
        start_step = self.resume()
        writer = MetricsWriter(self.run_dir)
        exporter = MetricsExporter(self.run_dir, run_name=os.path.basename(self.run_dir))  # dashboard + TensorBoard
        started = time.time()
        every, last = self.cfg.trainer.save_every, self.cfg.trainer.max_steps - 1
        try:
            if self.cfg.trainer.eval_every and self.cfg.trainer.eval_before_train and start_step == 0:
                initial = {"step": -1, **self.evaluate(-1)}
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
                writer.write(metrics)
                exporter.write(metrics)
                print(progress_line(step, self.cfg.trainer.max_steps, metrics, started, start_step), flush=True)
                if step == last or (every and (step + 1) % every == 0):
                    self.save(step)
        finally:
            writer.close()
            exporter.close()
