"""Peer comparison: TRL's ``GRPOTrainer`` and rlplat GRPO, same job, same machine, back to back.

    python benchmarks/vs_trl.py [--steps 10] [--prompts-per-step 8] [--group-size 8]
                                [--max-new-tokens 8] [--ignore-eos] [--max-staleness K]
                                [--lr 1e-4] [--model builtin:tiny-policy]
                                [--json-out PATH] [--md-out PATH]
    python benchmarks/vs_trl.py --max-new-tokens 128 --ignore-eos   # long responses: generation dominates
    python benchmarks/vs_trl.py --smoke          # 3 steps, 2 prompts x 4 samples (CI)

Runs TRL, then rlplat, each in its own subprocess (neither's memory, threads or imports affect the
other; vLLM runs under ``launch.train``'s ``__main__`` guard), and prints seconds per step,
tokens per second for each and the ratio rlplat / TRL. Target: rlplat at least 2x TRL's tokens/s.
The exit status is non-zero only when a run fails, never because the target is missed.

rlplat settings. rlplat runs ``--config`` (``configs/grpo.yaml``) with the benchmark's sizes and
``RLPLAT_SETTINGS``, the one list at the top of this file naming the rlplat settings the benchmark
uses by default (today: one vLLM engine, two ZeRO-2 trainer ranks, as ``configs/grpo.yaml``
has them, and one-step-off-policy overlap, ``trainer.max_staleness=1``); ``--rlplat-override KEY=VALUE`` comes after it and wins. The printed report and the
markdown summary state the settings that ran, resolved from the config.

Long responses. ``--ignore-eos`` makes neither side stop at EOS, so every completion has exactly
``--max-new-tokens`` tokens and generation dominates the step as it does in real RL: rlplat gets
``rollout.ignore_eos=true`` (vLLM ``ignore_eos`` + ``min_tokens``), TRL gets
``generation_kwargs={"min_new_tokens": max_new_tokens}`` (HF ``generate`` masks EOS until then;
TRL's completion mask cuts at the first EOS, so EOS must not be sampled at all). Both mask EOS
while sampling, so both sample from the same distribution. The run fails (exit 1) unless every
completion of both sides has exactly ``max_new_tokens`` tokens (TRL: counted from the completion
ids its reward function receives; rlplat: ``response/length_mean``). When the config's
``data.max_prompt_tokens + max_new_tokens`` exceeds ``rollout.max_model_len``, the benchmark
raises ``rollout.max_model_len`` to the sum (up to the model's ``max_position_embeddings``: 256
for the built-in tiny models, so up to 224 new tokens with ``configs/grpo.yaml``'s 32-token prompts).

Overlap. ``RLPLAT_SETTINGS`` runs rlplat one step off-policy (``trainer.max_staleness=1``: the next
batch's generation, reward and reference scoring overlap the update; measured the faster setting
at both shapes, docs/vs_trl.md). ``--max-staleness K`` passes ``trainer.max_staleness=K`` instead
(0: the synchronous loop); TRL has no equivalent and runs as always.

What is the same on both sides
- Model: ``--model`` (``builtin:tiny-policy`` resolves through ``rlplat.models.tiny``), in the
  dtype of ``model.dtype`` (float32 by default; no bf16 on TRL's side).
- Prompts: the rows of ``data.train_path`` (``builtin:arithmetic``) in exactly the order rlplat's
  ``PromptSampler`` (seed ``trainer.seed``, ``data.shuffle``) hands them to its steps; TRL gets
  those rows as its dataset, in that order, with ``shuffle_dataset=False``. So step k of both runs
  samples the same prompts. Prompts are plain strings tokenized by ``tokenizer(prompt)`` on both
  sides (BOS prepended, no chat template).
- Per step: ``prompts_per_step`` prompts x ``group_size`` completions, one optimizer update (TRL:
  ``per_device_train_batch_size = prompts_per_step * group_size``, ``num_generations =
  group_size``, gradient accumulation 1, ``num_iterations = 1``).
- Sampling: at most ``max_new_tokens`` new tokens, the config's temperature / top_p (top-k off),
  completions end at EOS (have exactly ``max_new_tokens`` with ``--ignore-eos``). The samples
  themselves differ (vLLM and HF ``generate`` draw different random numbers), which is why the
  headline figure is tokens per second, not seconds per step.
- Objective: the clipped surrogate with the config's ``eps_low`` / ``eps_high`` (TRL ``epsilon`` /
  ``epsilon_high``), ``seq-mean-token-mean`` aggregation (TRL ``loss_type="grpo"``), group-std
  normalised advantages (``scale_rewards="group"``), and the k3 KL to the frozen initial model
  with coefficient ``beta`` = the config's constant ``k3``/``reference`` coefficient (0.001 in
  ``configs/grpo.yaml``), so both sides run a reference model forward pass every step.
- Reward: ``rlplat.tasks.arithmetic.score(response, answer)`` (rlplat's ``arithmetic`` reward).
- Optimizer: AdamW with the same lr, betas, weight decay, eps 1e-8, gradient clipping and a
  constant learning rate (TRL ``lr_scheduler_type="constant"``); no gradient checkpointing.
- CPU threads: TRL is one process with ``torch.set_num_threads(--trl-threads)`` (default: every
  usable core); rlplat runs as configured (its trainer ranks, vLLM engine, scorer and reward
  actors share the same cores through the embedded Ray cluster, which starts actors with a
  fractional CPU share with ``OMP_NUM_THREADS=1``). On a machine that other processes keep busy, a
  multi-threaded TRL process slows down far more than those actors (OpenMP threads wait for a
  descheduled sibling); the report then warns, and ``--trl-threads 1`` is the fairer setting there.

Known differences (inherent to each design, not tuned away): rlplat checks the weight sync to
the rollout engine with a probe forward on both sides (as often as the config says); it is counted
in rlplat's step time. With ``RLPLAT_SETTINGS``' overlap rlplat trains every batch but the first on
samples one weight version old (``async/staleness_max`` 1), with the clipped ratio taken against
the trainer's own log-probs at the version being updated (no rollout correction); TRL trains on
samples of its current weights. (With one update per batch both sides take the "old" log-probs detached
from the training forward: TRL with ``num_iterations=1``, rlplat's ``old_from_forward``.)

Definitions, identical for both sides
- tokens of a step = sum over its ``prompts_per_step * group_size`` samples of (prompt tokens +
  completion tokens), the prompt counted once per completion and the completion including its EOS
  token when one was sampled. This is what rlplat's ``throughput/tokens_per_s`` counts
  (``Batch.num_tokens``); for TRL it is counted from the token ids its reward function receives.
- step seconds = wall time of one training step: rlplat's ``time/step`` (generate + score + reward
  + train + weight sync + orchestration); for TRL the time from ``on_step_begin`` to
  ``on_step_end`` of a ``TrainerCallback`` (generate + reference/score + reward + train +
  optimizer step). Logging, checkpointing and start-up are outside both.
- s/step = mean step seconds; tokens/s = sum of tokens / sum of step seconds; both over steps >= 1
  (step 0 carries warm-up and is left out; with ``--steps 1`` it is all there is).
- startup = seconds from launching the side's process to the start of its step 0 (imports, model
  loading, Ray and actors for rlplat), printed separately and left out of the throughput.
- ratio = rlplat tokens/s / TRL tokens/s. Also reported: the ratio of the medians of per-step
  tokens/s, which a few steps slowed down by other processes on the machine do not move.

The rlplat run starts its own embedded Ray cluster: ``RAY_ADDRESS`` is removed from its
environment, so a cluster the caller happens to be attached to (a test session, a job) is not
joined and every run measures the same single-machine setup.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/machine.py, also when loaded by path
from machine import machine_info  # noqa: E402
if ROOT not in sys.path:  # `python benchmarks/vs_trl.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, ROOT)

TARGET_RATIO = 2.0
# The rlplat settings the benchmark runs with by default, after the sizes and before the user's
# --rlplat-override: the best setting rlplat offers for this job (a one-line change).
RLPLAT_SETTINGS: List[str] = ["rollout.backend=vllm", "rollout.num_engines=1", "trainer.num_ranks=2",
                              "trainer.zero_stage=2", "trainer.max_staleness=1"]
# Resolved config keys the report states (a key this checkout's schema lacks reads "n/a").
REPORTED_SETTINGS = ("rollout.backend", "rollout.num_engines", "rollout.ignore_eos", "rollout.weight_sync",
                     "trainer.num_ranks", "trainer.zero_stage", "trainer.max_staleness", "model.dtype",
                     "model.attn_implementation")
SMOKE = {"steps": 3, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8}
DEFAULTS = {"steps": 10, "prompts_per_step": 8, "group_size": 8, "max_new_tokens": 8}
TOKENS_DEFINITION = ("tokens = prompt + completion tokens of every sample of the step (prompt counted once per "
                     "completion, EOS included); tokens/s = sum of tokens / sum of step wall seconds over steps >= 1")
# rlplat loss aggregation / advantage -> the TRL setting that computes the same thing.
TRL_LOSS_TYPE = {"seq-mean-token-mean": "grpo", "token-mean": "dapo"}
TRL_SCALE_REWARDS = {"grpo": "group", "dr_grpo": "none"}
PHASES = ("generate", "score", "reward", "train", "sync", "other")  # rlplat's time/<phase>, as step_breakdown.py
_PROGRESS = re.compile(r"^step (\d+)/(\d+) ")


# --------------------------------------------------------------------------- the shared job
def rlplat_overrides(args: argparse.Namespace, output_dir: str, model_path: str) -> List[str]:
    """``key=value`` overrides that give rlplat this benchmark's job: the sizes, ``RLPLAT_SETTINGS``,
    ``--ignore-eos`` / ``--max-staleness``, the output directory, the user's extras, then a
    ``rollout.max_model_len`` that holds prompts and responses if the config's is too short."""
    overrides = [
        f"model.path={args.model}", f"trainer.max_steps={args.steps}", f"algorithm.group_size={args.group_size}",
        f"data.prompts_per_step={args.prompts_per_step}", f"rollout.max_new_tokens={args.max_new_tokens}",
        f"trainer.lr={args.lr}", "trainer.eval_every=0", *RLPLAT_SETTINGS,
        *(["rollout.ignore_eos=true"] if args.ignore_eos else []),
        *([f"trainer.max_staleness={args.max_staleness}"] if args.max_staleness is not None else []),
        f"trainer.output_dir={output_dir}", *args.rlplat_override,
    ]
    return overrides + model_len_overrides(args.config, overrides, model_path)


def model_len_overrides(config: str, overrides: List[str], model_path: str) -> List[str]:
    """``[rollout.max_model_len=N]`` when ``data.max_prompt_tokens + rollout.max_new_tokens`` (N)
    exceeds the config's ``rollout.max_model_len``, else ``[]``. Raises ``ValueError`` when N
    exceeds the model's ``max_position_embeddings`` (read from ``model_path``/config.json)."""
    from rlplat.config import load_config

    cfg = load_config(config, overrides, validate=False)  # unknown keys still raise ConfigError
    need = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    if need <= cfg.rollout.max_model_len:
        return []
    model_config = os.path.join(model_path, "config.json")
    if os.path.isfile(model_config):
        with open(model_config) as f:
            positions = json.load(f).get("max_position_embeddings")
        if positions is not None and need > positions:
            raise ValueError(
                f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + max_new_tokens "
                f"({cfg.rollout.max_new_tokens}) = {need} exceeds the model's max_position_embeddings ({positions}); "
                f"use fewer --max-new-tokens or a smaller data.max_prompt_tokens (--rlplat-override)")
    return [f"rollout.max_model_len={need}"]


def build_job(args: argparse.Namespace, overrides: List[str], model_path: str) -> Dict[str, Any]:
    """The job both sides run, read from rlplat's resolved config: prompts per step in rlplat's
    order and the TRL settings equivalent to the config. Raises ``ValueError`` for a config that
    TRL's ``GRPOTrainer`` cannot reproduce."""
    from rlplat import algorithms
    from rlplat.config import load_config
    from rlplat.data import PromptSampler, load_prompts

    cfg = load_config(args.config, overrides)
    alg, roll, tr = cfg.algorithm, cfg.rollout, cfg.trainer
    loss = algorithms.get(alg.name).plan(cfg).loss  # resolved: loss_agg and eps_low/eps_high defaults
    loss_agg = loss.agg  # algorithm.loss_agg or the algorithm's default
    problems = []
    if alg.loss_type != "ppo" or alg.entropy_coef:
        problems.append(f"algorithm.loss_type={alg.loss_type} / entropy_coef={alg.entropy_coef} "
                        "(the benchmark compares the ppo surrogate without entropy bonus)")
    if alg.name != "grpo":
        problems.append(f"algorithm.name={alg.name} (only grpo)")
    if alg.ppo_epochs != 1 or alg.mini_batches != 1:
        problems.append("algorithm.ppo_epochs and algorithm.mini_batches must be 1 (one update per step)")
    if alg.dynamic_sampling or alg.dual_clip is not None:
        problems.append("algorithm.dynamic_sampling / dual_clip have no TRL GRPOTrainer equivalent")
    if loss_agg not in TRL_LOSS_TYPE:
        problems.append(f"algorithm.loss_agg={loss_agg} (one of {sorted(TRL_LOSS_TYPE)})")
    if alg.advantage not in TRL_SCALE_REWARDS or alg.advantage_params:
        problems.append(f"algorithm.advantage={alg.advantage} (one of {sorted(TRL_SCALE_REWARDS)}, no params)")
    beta = 0.0
    for term in alg.divergences:
        shape = (term.divergence, term.anchor, term.coef.kind, term.mask)
        if shape != ("k3", "reference", "constant", "all") or len(alg.divergences) > 1:
            problems.append(f"divergence '{term.name}': TRL has one constant k3 KL to the reference on all samples")
        beta = term.coef.value
    if cfg.reward.fn != "arithmetic" or cfg.reward.fns:
        problems.append(f"reward.fn={cfg.reward.fn}, reward.fns={list(cfg.reward.fns)} "
                        "(the benchmark gives TRL the arithmetic reward alone)")
    if cfg.data.chat_template or cfg.data.system_prompt is not None:
        problems.append("data.chat_template / data.system_prompt (the benchmark uses plain string prompts)")
    if problems:
        raise ValueError("config not reproducible with TRL's GRPOTrainer: " + "; ".join(problems))

    rows = load_prompts(cfg.data, "train")  # as the controller loads them (seed 0: fixed data set)
    sampler = PromptSampler(rows, cfg.data.prompts_per_step, seed=tr.seed, shuffle=cfg.data.shuffle)
    batches = [[{"prompt": r.prompt, "answer": r.answer} for r in sampler.next_batch()] for _ in range(tr.max_steps)]
    return {
        "model": args.model, "model_path": model_path, "dtype": cfg.model.dtype,
        "attn_implementation": getattr(cfg.model, "attn_implementation", None),
        "steps": tr.max_steps, "prompts_per_step": cfg.data.prompts_per_step, "group_size": alg.group_size,
        "max_new_tokens": roll.max_new_tokens, "temperature": roll.temperature, "top_p": roll.top_p,
        "top_k": max(roll.top_k, 0), "lr": tr.lr, "weight_decay": tr.weight_decay, "adam_betas": list(tr.adam_betas),
        "grad_clip": tr.grad_clip, "seed": tr.seed, "beta": beta, "eps_low": loss.eps_low, "eps_high": loss.eps_high,
        "loss_type": TRL_LOSS_TYPE[loss_agg], "scale_rewards": TRL_SCALE_REWARDS[alg.advantage],
        "ignore_eos": bool(roll.ignore_eos), "trl_threads": args.trl_threads,
        "rlplat_settings": {key: _setting(cfg, key) for key in REPORTED_SETTINGS},
        "rlplat_overrides": list(overrides), "batches": batches,
    }


def _model_init_kwargs(job: Dict[str, Any]) -> Dict[str, Any]:
    """TRL's ``from_pretrained`` arguments: rlplat's model dtype and, when set, the attention its
    trainer and scorers use."""
    kwargs: Dict[str, Any] = {"dtype": job["dtype"]}
    if job.get("attn_implementation") is not None:
        kwargs["attn_implementation"] = job["attn_implementation"]
    return kwargs


def _setting(cfg: Any, key: str) -> Any:
    """The resolved value of dotted ``key``, "n/a" when this checkout's schema has no such key."""
    node = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            return "n/a"
        node = getattr(node, part)
    return node


# --------------------------------------------------------------------------- TRL side (child)
def trl_config_kwargs(job: Dict[str, Any], out_dir: str) -> Dict[str, Any]:
    """``GRPOConfig`` arguments equivalent to the job (see the module docstring)."""
    kwargs: Dict[str, Any] = dict(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=job["prompts_per_step"] * job["group_size"], gradient_accumulation_steps=1,
        num_generations=job["group_size"], num_iterations=1, max_completion_length=job["max_new_tokens"],
        max_steps=job["steps"], learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=job["weight_decay"], adam_beta1=job["adam_betas"][0], adam_beta2=job["adam_betas"][1],
        adam_epsilon=1e-8, max_grad_norm=job["grad_clip"],
        temperature=job["temperature"], top_p=job["top_p"], top_k=job["top_k"],
        beta=job["beta"], epsilon=job["eps_low"], epsilon_high=job["eps_high"], loss_type=job["loss_type"],
        scale_rewards=job["scale_rewards"], mask_truncated_completions=False,
        shuffle_dataset=False, seed=job["seed"], model_init_kwargs=_model_init_kwargs(job),
        report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    if job["ignore_eos"]:
        # GRPOTrainer updates its GenerationConfig with these; TRL cuts each completion after its
        # first EOS, so EOS must be masked (min_new_tokens), not merely not stopped at.
        kwargs["generation_kwargs"] = {"min_new_tokens": job["max_new_tokens"]}
    return kwargs


def run_trl_side(job_path: str, result_path: str) -> int:
    """Train with TRL's GRPOTrainer on the job's prompts; write per-step seconds and tokens."""
    with open(job_path) as f:
        job = json.load(f)
    import torch

    torch.set_num_threads(job["trl_threads"])
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlplat.tasks.arithmetic import score

    rows = [row for batch in job["batches"] for row in batch]  # step k = rows[k*P:(k+1)*P], in rlplat's order
    tokenizer = AutoTokenizer.from_pretrained(job["model_path"], padding_side="left")
    if tokenizer.pad_token is None:  # TRL would fall back to EOS itself; say so in the result
        tokenizer.pad_token = tokenizer.eos_token
    # TRL tokenizes string prompts with processing_class(text=prompts): the same call, the same ids.
    prompt_tokens = {r["prompt"]: len(tokenizer(r["prompt"])["input_ids"]) for r in rows}
    seen = {"prompt": 0, "completion": 0, "reward_sum": 0.0, "samples": 0}
    step_prompts: List[str] = []  # prompts of the current step, to check the order matches rlplat's
    step_lengths: List[int] = []  # completion lengths of the current step (--ignore-eos: all max_new_tokens)

    def arithmetic(prompts, completions, answer, completion_ids, **kwargs) -> List[float]:
        """rlplat's ``arithmetic`` reward; also counts the step's tokens (TRL calls it once per generation)."""
        step_prompts.extend(prompts)
        step_lengths.extend(len(ids) for ids in completion_ids)
        seen["prompt"] += sum(prompt_tokens[p] for p in prompts)
        seen["completion"] += sum(len(ids) for ids in completion_ids)
        rewards = [score(c, a) for c, a in zip(completions, answer)]
        seen["reward_sum"] += sum(rewards)
        seen["samples"] += len(rewards)
        return rewards

    steps: List[Dict[str, float]] = []
    first_step_wall: List[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not first_step_wall:
                first_step_wall.append(time.time())
            self.before = dict(seen)
            step_prompts.clear()
            step_lengths.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self.t0
            d = {k: seen[k] - self.before[k] for k in seen}
            want = sorted(r["prompt"] for r in job["batches"][len(steps)] for _ in range(job["group_size"]))
            steps.append({"step": len(steps), "seconds": seconds, "prompt_tokens": d["prompt"],
                          "completion_tokens": d["completion"], "tokens": d["prompt"] + d["completion"],
                          "samples": d["samples"], "reward_mean": d["reward_sum"] / max(d["samples"], 1),
                          "completion_len_min": min(step_lengths, default=0),
                          "completion_len_max": max(step_lengths, default=0),
                          "same_prompts_as_rlplat": sorted(step_prompts) == want})

    out_dir = os.path.join(os.path.dirname(os.path.abspath(result_path)), "trl-out")  # nothing is saved there
    config = GRPOConfig(**trl_config_kwargs(job, out_dir))
    trainer = GRPOTrainer(model=job["model_path"], reward_funcs=arithmetic, args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[StepTimer()])
    trainer.train()
    if len(steps) != job["steps"]:
        raise RuntimeError(f"TRL ran {len(steps)} steps, expected {job['steps']}")
    if not all(s["same_prompts_as_rlplat"] for s in steps):
        raise RuntimeError("TRL's steps did not sample the prompts rlplat's steps do (dataset order changed?)")
    short = [s["step"] for s in steps if s["completion_len_min"] != job["max_new_tokens"]
             or s["completion_len_max"] != job["max_new_tokens"]]
    if job["ignore_eos"] and short:
        raise RuntimeError(f"--ignore-eos: TRL completions of steps {short} do not all have "
                           f"{job['max_new_tokens']} tokens (generation_kwargs min_new_tokens not honoured?)")
    result = {"steps": steps, "first_step_wall": first_step_wall[0], "end_wall": time.time(),
              "threads": torch.get_num_threads()}
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


# --------------------------------------------------------------------------- running both sides
def _run_logged(cmd: List[str], env: Dict[str, str], log_path: str, timeout_s: float):
    """Run ``cmd`` with stdout+stderr to ``log_path``; returns (return code, launch wall time,
    end wall time, [(wall time, line)] of the driver's progress lines, last lines of output)."""
    tail: collections.deque = collections.deque(maxlen=80)
    progress = []
    launched = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
        watchdog = threading.Timer(timeout_s, _kill_group, (proc.pid,))
        watchdog.start()
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                if _PROGRESS.match(line):
                    progress.append((time.time(), line))
            rc = proc.wait()
        finally:
            watchdog.cancel()
    if rc == -signal.SIGKILL:
        tail.append(f"(killed after the {timeout_s:.0f} s timeout)\n")
    return rc, launched, time.time(), progress, "".join(tail)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the side's process and everything it started (Ray, actors)
    except ProcessLookupError:
        pass


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # always an embedded, single-machine cluster (see the module docstring)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_trl(job: Dict[str, Any], work: str, timeout_s: float) -> Dict[str, Any]:
    job_path, result_path = os.path.join(work, "trl_job.json"), os.path.join(work, "trl_result.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    env = _child_env()
    env["OMP_NUM_THREADS"] = str(job["trl_threads"])
    cmd = [sys.executable, os.path.abspath(__file__), "--side", "trl", "--job", job_path, "--result", result_path]
    rc, launched, ended, _, tail = _run_logged(cmd, env, os.path.join(work, "trl.log"), timeout_s)
    if rc != 0 or not os.path.isfile(result_path):
        raise RuntimeError(f"TRL run failed (exit {rc}); log {work}/trl.log:\n{tail}")
    with open(result_path) as f:
        res = json.load(f)
    return summarize(res["steps"], startup_s=res["first_step_wall"] - launched, total_s=ended - launched,
                     extra={"torch_threads": res["threads"]})


def run_rlplat(args: argparse.Namespace, overrides: List[str], num_steps: int, work: str,
               timeout_s: float, exact_length: Optional[int] = None) -> Dict[str, Any]:
    """Run ``launch.train``; with ``exact_length`` (--ignore-eos) every response must have that many tokens."""
    out = os.path.join(work, "rlplat-run")
    cmd = [sys.executable, "-m", "launch.train", "--config", args.config, *overrides]
    rc, launched, ended, progress, tail = _run_logged(cmd, _child_env(), os.path.join(work, "rlplat.log"), timeout_s)
    metrics_path = os.path.join(out, "metrics.jsonl")
    if rc != 0 or not os.path.isfile(metrics_path):
        raise RuntimeError(f"rlplat run failed (exit {rc}); log {work}/rlplat.log:\n{tail}")
    from launch.metrics import read_metrics

    rows = [r for r in read_metrics(metrics_path) if r["step"] >= 0]  # step -1: an evaluation before training, not a step
    if [r["step"] for r in rows] != list(range(num_steps)):
        raise RuntimeError(f"rlplat logged steps {[r['step'] for r in rows]}, expected 0..{num_steps - 1}")
    # No response is longer than max_new_tokens, so a mean of exactly max_new_tokens means all are.
    short = [r["step"] for r in rows if abs(r["response/length_mean"] - (exact_length or 0)) > 1e-6]
    if exact_length is not None and short:
        raise RuntimeError(f"--ignore-eos: rlplat responses of steps {short} do not all have {exact_length} "
                           f"tokens (response/length_mean {[rows[s]['response/length_mean'] for s in short]})")
    steps = []
    for r in rows:
        tokens = round(r["throughput/tokens_per_s"] * r["time/step"])  # finish_step: sum(Batch.num_tokens) / time/step
        completion = round(r["response/length_mean"] * r["samples"])
        steps.append({"step": r["step"], "seconds": r["time/step"], "prompt_tokens": tokens - completion,
                      "completion_tokens": completion, "tokens": tokens, "samples": int(r["samples"]),
                      "reward_mean": r["reward/mean"],
                      "phases": {ph: r.get(f"time/{ph}", 0.0) for ph in PHASES}})
    # The driver prints step 0's progress line right after the step ends: step 0 began time/step before it.
    startup = progress[0][0] - launched - rows[0]["time/step"] if progress else float("nan")
    return summarize(steps, startup_s=startup, total_s=ended - launched,
                     extra={"command": shlex.join(cmd)})


def summarize(steps: List[Dict[str, Any]], startup_s: float, total_s: float, extra: Dict[str, Any]) -> Dict[str, Any]:
    measured = steps[1:] or steps  # step 0 is warm-up
    seconds = sum(s["seconds"] for s in measured)
    return {
        "s_per_step": seconds / len(measured),
        "median_s_per_step": statistics.median(s["seconds"] for s in measured),
        # Robust to a few steps slowed down by other processes: the median of the per-step tokens/s.
        "median_tokens_per_s": statistics.median(s["tokens"] / s["seconds"] for s in measured),
        "tokens_per_s": sum(s["tokens"] for s in measured) / seconds,
        "completion_tokens_per_s": sum(s["completion_tokens"] for s in measured) / seconds,
        "samples_per_s": sum(s["samples"] for s in measured) / seconds,
        "measured_steps": [s["step"] for s in measured],
        "warmup_step_s": steps[0]["seconds"],
        "startup_s": startup_s,
        "total_wall_s": total_s,
        "reward_mean": sum(s["reward_mean"] for s in steps) / len(steps),
        "steps": steps,
        **extra,
    }


# --------------------------------------------------------------------------- report
def settings_line(job: Dict[str, Any]) -> str:
    """The rlplat settings of the run: the resolved REPORTED_SETTINGS and the default list."""
    resolved = ", ".join(f"{k}={v}" for k, v in job["rlplat_settings"].items())
    return (f"rlplat settings: {resolved} (benchmark defaults RLPLAT_SETTINGS = {RLPLAT_SETTINGS} "
            "on the config, then --rlplat-override)")


def machine_report() -> Dict[str, Any]:
    """``machine_info`` with TRL's version and the load average when the benchmark starts."""
    return {**machine_info(extra_packages=(("trl", ("trl",)),)), "load_avg_at_start": list(os.getloadavg())}


def table(report: Dict[str, Any]) -> str:
    """Both sides' figures, one row each (the columns of the JSON summary)."""
    cols = [("s/step", "s_per_step", ".3f"), ("median s", "median_s_per_step", ".3f"),
            ("tokens/s", "tokens_per_s", ".1f"), ("median tok/s", "median_tokens_per_s", ".1f"),
            ("compl tok/s", "completion_tokens_per_s", ".1f"), ("samples/s", "samples_per_s", ".2f"),
            ("startup s", "startup_s", ".1f"), ("warm-up s", "warmup_step_s", ".2f"), ("reward", "reward_mean", ".3f")]
    lines = [f"{'':<8}" + "".join(f" {title:>12}" for title, _, _ in cols)]
    for name, side in (("TRL", report["trl"]), ("rlplat", report["rlplat"])):
        lines.append(f"{name:<8}" + "".join(f" {side[key]:>12{fmt}}" for _, key, fmt in cols))
    return "\n".join(lines)


def markdown(report: Dict[str, Any]) -> str:
    m, j, t, r = report["machine"], report["job"], report["trl"], report["rlplat"]
    rows = [
        "| | s/step | tokens/s | median tokens/s | completion tokens/s | startup s |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {name} | {s['s_per_step']:.3f} | {s['tokens_per_s']:.1f} | {s['median_tokens_per_s']:.1f} "
          f"| {s['completion_tokens_per_s']:.1f} | {s['startup_s']:.1f} |"
          for name, s in (("TRL GRPOTrainer", t), ("rlplat GRPO", r))),
    ]
    return "\n".join([
        "# rlplat vs TRL GRPO throughput", "",
        f"**ratio (rlplat / TRL tokens/s): {report['ratio']:.2f}x** (target >= {TARGET_RATIO:.0f}x: "
        f"{'met' if report['target_met'] else 'missed'}); ratio of the median per-step tokens/s: "
        f"{report['median_ratio']:.2f}x", "",
        *rows, "",
        f"Job: model `{j['model']}`, {j['steps']} steps (step 0 excluded from averages), {j['prompts_per_step']} "
        f"prompts x {j['group_size']} samples per step, at most {j['max_new_tokens']} new tokens, lr {j['lr']}, "
        f"KL beta {j['beta']}, temperature {j['temperature']}"
        f"{', EOS ignored on both sides (every completion has exactly that many tokens)' if j['ignore_eos'] else ''}.", "",
        f"{settings_line(j)}.", "",
        f"Tokens: {TOKENS_DEFINITION}.", "",
        *([f"**Warning**: {m['busy_warning']}.", ""] if m.get("busy_warning") else []),
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), load average "
        f"(1/5/15 min) at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m['load_avg_at_end'])}; Python {m['python']}, "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in m["versions"].items()) + ".", "",
        f"Command: `{report['command']}`", "",
        f"rlplat command: `{r['command']}`", "",
    ])


# --------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help=f"training steps per side (default {DEFAULTS['steps']})")
    p.add_argument("--prompts-per-step", type=int, help=f"default {DEFAULTS['prompts_per_step']}")
    p.add_argument("--group-size", type=int, help=f"samples per prompt (default {DEFAULTS['group_size']})")
    p.add_argument("--max-new-tokens", type=int, help=f"default {DEFAULTS['max_new_tokens']}")
    p.add_argument("--ignore-eos", action="store_true",
                   help="neither side stops at EOS: every completion has exactly --max-new-tokens tokens "
                        "(rlplat rollout.ignore_eos=true, TRL generation_kwargs min_new_tokens)")
    p.add_argument("--max-staleness", type=int, default=None, metavar="K",
                   help="pass trainer.max_staleness=K to rlplat instead of RLPLAT_SETTINGS' 1 "
                        "(0: synchronous; TRL unchanged)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--model", default="builtin:tiny-policy", help="builtin:tiny-<size>, a local HF directory or hub id")
    p.add_argument("--config", default="configs/grpo.yaml", help="rlplat config the job is read from")
    p.add_argument("--rlplat-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra rlplat override (repeatable); the TRL settings follow the resolved config")
    p.add_argument("--trl-threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads of the TRL process (default: every usable core)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CI size: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per side")
    p.add_argument("--json-out", help="write every figure (per step too) as JSON here")
    p.add_argument("--md-out", help="write a markdown summary with machine info and the command here")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the work directory (both logs, rlplat's run directory) after a successful run")
    p.add_argument("--side", choices=["trl"], help=argparse.SUPPRESS)  # internal: run one side in this process
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # The config path works relative to the caller's directory or to the repository root.
    if not os.path.exists(args.config) and os.path.exists(os.path.join(ROOT, args.config)):
        args.config = os.path.join(ROOT, args.config)
    args.config = os.path.abspath(args.config)
    sizes = SMOKE if args.smoke else DEFAULTS
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in sizes:
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.group_size < 2:
        p.error("--group-size must be >= 2 (GRPO normalises rewards within a group)")
    if args.max_staleness is not None and args.max_staleness < 0:
        p.error("--max-staleness must be >= 0")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.side == "trl":
        return run_trl_side(args.job, args.result)
    command = shlex.join(["python", "benchmarks/vs_trl.py", *(sys.argv[1:] if argv is None else argv)])
    from rlplat.models.tiny import resolve_model_path

    model_path = resolve_model_path(args.model)  # builds the built-in model once, before any timing
    work = tempfile.mkdtemp(prefix="rlplat-vs-trl-")
    try:
        overrides = rlplat_overrides(args, os.path.join(work, "rlplat-run"), model_path)
        job = build_job(args, overrides, model_path)
    except Exception as exc:  # ConfigError / ValueError: name the problem, no traceback
        shutil.rmtree(work, ignore_errors=True)
        print(f"vs_trl: {exc}", file=sys.stderr)
        return 2
    machine = machine_report()
    print(f"vs_trl: {job['steps']} steps x {job['prompts_per_step']} prompts x {job['group_size']} samples, "
          f"{'exactly' if job['ignore_eos'] else '<='} {job['max_new_tokens']} new tokens, model {args.model} "
          f"({model_path}); work dir {work}", flush=True)
    print(f"vs_trl: {settings_line(job)}", flush=True)
    try:
        print("vs_trl: running TRL GRPOTrainer ...", flush=True)
        trl = run_trl(job, work, args.timeout)
        print(f"vs_trl: TRL done in {trl['total_wall_s']:.0f} s; running rlplat ...", flush=True)
        rl = run_rlplat(args, overrides, job["steps"], work, args.timeout,
                        exact_length=job["max_new_tokens"] if job["ignore_eos"] else None)
        print(f"vs_trl: rlplat done in {rl['total_wall_s']:.0f} s", flush=True)
    except RuntimeError as exc:
        print(f"vs_trl: {exc}", file=sys.stderr)  # the work directory stays for the logs
        return 1
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    ratio = rl["tokens_per_s"] / trl["tokens_per_s"]
    machine["load_avg_at_end"] = list(os.getloadavg())
    busy = max(machine["load_avg_at_start"][0], machine["load_avg_at_end"][0], machine["load_avg_at_end"][1])
    machine["busy_warning"] = (
        f"the machine was busy (1-minute load average up to {busy:.1f} on {machine['usable_cores']} usable cores): "
        "other processes competed for the cores, so these figures are noisy; rerun on an idle machine. A "
        "multi-threaded TRL process suffers most (its OpenMP threads wait for each other whenever one loses its "
        "core, while Ray starts rlplat's actors with OMP_NUM_THREADS=1): compare with --trl-threads 1"
        if busy > machine["usable_cores"] else None)
    report = {
        "command": command, "job": {k: v for k, v in job.items() if k != "batches"},
        "prompts_per_step_text": [[row["prompt"] for row in batch] for batch in job["batches"]],
        "tokens_definition": TOKENS_DEFINITION, "machine": machine, "trl": trl, "rlplat": rl,
        "ratio": ratio, "step_time_ratio": trl["s_per_step"] / rl["s_per_step"],
        "median_ratio": rl["median_tokens_per_s"] / trl["median_tokens_per_s"],
        "target_ratio": TARGET_RATIO, "target_met": ratio >= TARGET_RATIO,
        "work_dir": work if args.keep_work else None,
    }
    print()
    print(table(report))
    print(f"\n{settings_line(job)}")
    print(f"\n{TOKENS_DEFINITION}; startup (launch to step 0) is not part of it.")
    print(f"ratio rlplat / TRL tokens/s: {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x: "
          f"{'met' if report['target_met'] else 'MISSED'}); "
          f"TRL s/step / rlplat s/step: {report['step_time_ratio']:.2f}x; "
          f"ratio of the median per-step tokens/s: {report['median_ratio']:.2f}x")
    if machine["busy_warning"]:
        print(f"WARNING: {machine['busy_warning']}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    if args.md_out:
        with open(args.md_out, "w") as f:
            f.write(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
