"""The run driver: builds a run's actors (``StepContext``) and its loop, then runs the steps.

What is the driver's and not a step's: resume (``trainer.resume``), checkpoints
(``trainer.save_every``, ``keep_last``), held-out evaluation (``trainer.eval_every``),
``metrics.jsonl`` / dashboard rows with ``time/wall``, the progress line, fault injection, and
turning a trainer rank's death into a message that names the last checkpoint. Which phases a step
runs is the loop's business (``launch.loops``, chosen by ``AlgorithmPlan.loop``).
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict

import ray

from launch.checkpoint import Checkpointer
from launch.context import StepContext
from launch.faults import kill_actors
from launch.loops import LOOPS
from launch.metrics import MetricsWriter, eval_line, progress_line, truncate_metrics
from launch.monitoring import MetricsExporter
from launch.preflight import RunData
from launch.rollout_log import FILENAME as ROLLOUTS_FILE
from rlplat.algorithms import AlgorithmPlan
from rlplat.config.schema import RunConfig, to_container
from rlplat.held_out import evaluate
from rlplat.win_rate import win_rate_metrics


class Controller:
    """``model_paths`` maps role ("policy", "tokenizer", "reference", "teacher", ...) to a path or hub id.
    ``ctx`` is the ``StepContext`` (the actors), ``loop`` the step program built on it."""

    def __init__(self, cfg: RunConfig, plan: AlgorithmPlan, model_paths: Dict[str, str], run_dir: str, tokenizer,
                 data: RunData) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.ctx = StepContext(cfg, plan, model_paths, run_dir, tokenizer, data)
        self.loop = LOOPS.get(plan.loop)(self.ctx)
        self._write_actor_list()

    def _write_actor_list(self) -> None:
        """``actors.json`` in the run directory: the named actors this run started (as in the dashboard)."""
        with open(os.path.join(self.run_dir, "actors.json"), "w") as f:
            json.dump(sorted(ray.util.list_named_actors()), f)

    def shutdown(self) -> None:
        self.ctx.shutdown()

    def evaluate(self, step: int) -> Dict[str, float]:
        """Greedy pass@1 and sampled pass@k on held-out prompts, on the trainer's current weights,
        and with ``trainer.eval_win_ns`` the best/worst-of-N win rates against the initial policy.
        Every sample, its reward and the greedy response go to ``<run_dir>/eval/step_<step>.json``
        (``step`` -1: before the first update), for offline comparisons between runs."""
        t = self.cfg.trainer
        ctx = self.ctx
        ctx.sync_if_behind()
        result = evaluate(ctx.engines.generate_fn(), ctx.eval_rows, ctx.eval_ids, ctx.score_texts,
                          n=t.eval_n, ks=list(t.eval_ks), greedy_fn=ctx.engines.generate_fn(greedy=True),
                          correct_threshold=self.cfg.reward.correct_threshold, keep_samples=True,
                          seed=ctx.eval_seed(), group_by=t.eval_group_by)
        out_dir = os.path.join(self.run_dir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"step_{step}.json"), "w") as f:
            json.dump({"step": step, **result.to_json()}, f)
        metrics = dict(result.metrics)
        if t.eval_win_ns and step >= 0:  # against the initial policy's samples (same prompts, same seed)
            with open(os.path.join(out_dir, "step_-1.json")) as f:
                initial = json.load(f)["records"]
            metrics.update(win_rate_metrics(result.records, initial, t.eval_win_ns))
        metrics.update(self.loop.eval_metrics())  # a loop's own held-out measures (f-DPO: pair calibration)
        self.say(eval_line(step, metrics))
        return metrics

    # ------------------------------------------------------------- checkpoints
    def save(self, step: int) -> str:
        probe = self.ctx.probe
        raw = self.ctx.policy_logprobs(probe, temperature=1.0)[0]  # as the sync check and an HF forward
        state = {"loop": self.loop.state_dict(), "wall": self.wall(), "probe_logprobs": raw.tolist(),
                 "probe": {"prompt_ids": probe.prompt_ids[0].tolist(), "response_ids": probe.response_ids[0].tolist()}}
        path = self.checkpointer.save(step, self.ctx.trainer, state)
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
        state = self.checkpointer.load(path, self.ctx.trainer)
        self.loop.load_state_dict(state["loop"])
        self.wall_offset = state.get("wall", 0.0)
        start = state["step"] + 1
        for name in ("metrics.jsonl", ROLLOUTS_FILE):  # rows logged after the checkpoint are written again
            truncate_metrics(os.path.join(self.run_dir, name), start)
        self.ctx.sync()
        self.loop.after_resume()
        print(f"rlplat: resumed from {path}; continuing at step {start + 1}", flush=True)
        return start

    def _metric_sinks(self) -> list:
        """Where each step's metrics go (``trainer.loggers``; each sink has ``write(metrics)`` and
        ``close()``, and may have ``write_samples(step, rows)``): ``metrics.jsonl``, the Ray
        dashboard's gauges (always) with TensorBoard, and wandb."""
        loggers = self.cfg.trainer.loggers
        sinks = [MetricsWriter(self.run_dir),
                 MetricsExporter(self.run_dir, run_name=os.path.basename(self.run_dir),
                                 enable_tensorboard="tensorboard" in loggers)]
        if "wandb" in loggers:
            from launch.wandb_logger import WandbLogger  # wandb is optional

            sinks.append(WandbLogger(self.run_dir, self.cfg.trainer.wandb, to_container(self.cfg)))
        return sinks

    def say(self, line: str) -> None:
        """A progress or evaluation line on the console (``trainer.loggers`` lists ``console``)."""
        if "console" in self.cfg.trainer.loggers:
            print(line, flush=True)

    def wall(self) -> float:
        """Seconds since the run started, counting the time before a resume (``time/wall``)."""
        return self.wall_offset + time.time() - self.wall_start

    def run(self) -> None:
        self.wall_start, self.wall_offset = time.time(), 0.0
        self.checkpointer = Checkpointer(self.run_dir, self.cfg.trainer.keep_last)
        start_step = self.resume()
        sinks = self._metric_sinks()
        started = time.time()
        every, last = self.cfg.trainer.save_every, self.cfg.trainer.max_steps - 1
        try:
            if self.cfg.trainer.eval_every and self.cfg.trainer.eval_before_train and start_step == 0:
                initial = {"step": -1, **self.evaluate(-1), "time/wall": self.wall()}
                for sink in sinks:
                    sink.write(initial)
            for step in range(start_step, self.cfg.trainer.max_steps):
                kill_actors(step)
                try:
                    metrics = self.loop.step(step)
                except ray.exceptions.RayActorError as exc:  # what the pools do not recover: a trainer rank
                    raise RuntimeError(
                        f"step {step}: a trainer rank died ({str(exc).splitlines()[0][:300]}); the trainer group "
                        f"was stopped. Last complete checkpoint: {self.checkpointer.latest() or 'none'}; "
                        "rerun with trainer.resume=auto to continue from it") from exc
                if self.cfg.trainer.eval_every and ((step + 1) % self.cfg.trainer.eval_every == 0 or step == last):
                    metrics.update(self.evaluate(step))  # on the trainer's weights (evaluate syncs engines left behind)
                metrics["time/wall"] = self.wall()
                for sink in sinks:
                    sink.write(metrics)
                for sink in sinks:  # the step's sample rows (trainer.log_samples), where a sink shows them
                    if hasattr(sink, "write_samples") and self.ctx.rollout_log.last_rows:
                        sink.write_samples(step, self.ctx.rollout_log.last_rows)
                self.say(progress_line(step, self.cfg.trainer.max_steps, metrics, started, start_step))
                if step == last or (every and (step + 1) % every == 0):
                    self.save(step)
        finally:
            for sink in sinks:
                sink.close()
