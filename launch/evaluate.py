"""Held-out evaluation: greedy pass@1 and sampled pass@k of any model on a prompt set.

CLI (runs one rollout engine in this process, no Ray)::

    python -m launch.evaluate --model PATH|builtin:tiny-policy --data builtin:arithmetic \\
        [--split eval] [--n 16] [--ks 1,8,16] [--max-new-tokens 8] [--backend vllm|hf] \\
        [--reward arithmetic|module:function] [--out results.json] [--limit N]
        [--against BASELINE_MODEL [--win-ns 1,4,16]]

With ``--against`` (for example the reference policy a model was aligned from), the baseline's
weights are loaded into the same engine and sampled on the same prompts with the same seed, and
the inference-time win rates of ``--model`` against it are added: ``eval/bon@{N}_win_rate`` (best-of-N
decoding on both sides, the highest-reward of N samples is compared) and ``eval/won@{N}_win_rate``
(worst-of-N), ties half, for each N of ``--win-ns`` (``rlplat.win_rate``; N = 1 is the standard
win rate).

prints a metric table and writes JSON ``{"metrics", "n", "ks", "records", "run"}``. The vLLM
engine runs in this process (it sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before importing vLLM),
which is why ``main`` only runs under ``if __name__ == "__main__"``.

The evaluation itself is ``rlplat.held_out.evaluate`` (generation and scoring given as callables;
the controller runs it on its Ray engines and reward worker, ``EnginePool.generate_fn``); this module
is the command line around it; metrics are named ``eval/pass@1_greedy`` and ``eval/pass@{k}``.

Greedy pass@1 runs on the same engines with ``generate(..., greedy=True)`` (argmax decoding
whatever the rollout config's sampling settings), so one copy of the weights serves both passes.
Both passes stop at EOS whatever ``rollout.ignore_eos`` says (``generate(..., ignore_eos=False)``):
that key fixes the length of training rollouts, and a response run on past its answer would be
scored on what follows it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from rlplat.batch import Batch
from rlplat.data import group_of
from rlplat.evaluation import METRIC_PREFIX, check_ks
from rlplat.held_out import GenerateFn, evaluate, format_table
from rlplat.win_rate import win_rate_metrics


# ----------------------------------------------------------------------------- generate functions
def engine_generate_fn(engine: Any, pad_id: int, greedy: bool = False) -> GenerateFn:
    """A ``GenerateFn`` over an in-process engine (``actors.rollout.make_engine``)."""

    def generate(prompt_ids: List[List[int]], group_size: int, meta: Dict[str, List[Any]],
                 seed: Optional[int] = None) -> Batch:
        return engine.generate(prompt_ids, group_size, 0, pad_id, meta, seed, greedy=greedy, ignore_eos=False)

    return generate


def load_hf_weights(path: str, trust_remote_code: bool = False):
    """``[(HF name, tensor)]`` of a model directory or hub id, for ``engine.update_weights``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype="auto", trust_remote_code=trust_remote_code)
    return list(model.state_dict().items())


# ----------------------------------------------------------------------------- CLI
def _ks(text: str) -> List[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks must be comma-separated integers, got {text!r}") from None


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    from rlplat.config.schema import DataConfig, RolloutConfig

    d, r = DataConfig(), RolloutConfig()
    p = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, hub id or builtin:<name>")
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: --model)")
    p.add_argument("--data", required=True, help="builtin:<task>, .jsonl, .parquet or save_to_disk dir")
    p.add_argument("--split", default="eval", choices=("train", "eval"), help="built-in tasks: eval = held-out split")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N prompts only")
    p.add_argument("--prompt-key", default=d.prompt_key)
    p.add_argument("--answer-key", default=d.answer_key)
    p.add_argument("--chat-template", action="store_true", help="render prompts with the tokenizer's chat template")
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--n", type=int, default=16, help="samples per prompt for pass@k")
    p.add_argument("--ks", type=_ks, default=[1, 8, 16], help="k values, comma-separated, each <= --n")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy pass@1 pass")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k (> 0)")
    p.add_argument("--top-p", type=float, default=r.top_p)
    p.add_argument("--top-k", type=int, default=r.top_k, help="<= 0: off")
    p.add_argument("--backend", default="vllm", help="rollout backend: vllm | hf")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the model's and tokenizer's own code run (model.trust_remote_code of a training run)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (CPU; 1 avoids OpenMP spin-waiting on a busy machine)")
    p.add_argument("--max-model-len", type=int, default=None, help="default: longest prompt + --max-new-tokens")
    p.add_argument("--max-num-seqs", type=int, default=r.max_num_seqs)
    p.add_argument("--cpu-kv-cache-gb", type=float, default=r.cpu_kv_cache_gb)
    p.add_argument("--gpu-memory-utilization", type=float, default=r.gpu_memory_utilization)
    p.add_argument("--reward", default="arithmetic", help="registered reward name or module:function")
    p.add_argument("--reward-timeout", type=float, default=10.0, help="seconds per reward call")
    p.add_argument("--threshold", type=float, default=1.0, help="reward >= this counts as correct")
    p.add_argument("--group-by", default=None,
                   help="a column of the rows (e.g. builtin:arithmetic_bonus' family): pass@k per value too")
    p.add_argument("--save-samples", action="store_true", help="keep every sampled response in the JSON")
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--against", default=None,
                   help="baseline model (e.g. the reference policy): add best/worst-of-N win rates against it")
    p.add_argument("--win-ns", type=_ks, default=[1, 4, 16], help="N values of the win rates, each <= --n")
    return p.parse_args(argv)


def _resolve_model(path: str, flag: str) -> str:
    from launch.preflight import resolve_model_path
    from rlplat.config.errors import ConfigError

    try:
        return resolve_model_path(path)
    except ImportError as exc:
        raise ConfigError(f"{flag}={path}: built-in models are not available ({exc})") from None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from rlplat.config.errors import ConfigError
    from rlplat.config.schema import DataConfig, RolloutConfig
    from rlplat.rewards import resolve_reward

    t0 = time.perf_counter()
    try:  # cheap checks first: importing the engines (transformers) takes seconds
        ks = check_ks(args.ks, args.n)
        if not args.temperature > 0:
            raise ConfigError(f"--temperature={args.temperature} must be > 0 (greedy pass@1 is computed separately)")
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit={args.limit} must be >= 1")
        resolve_reward(args.reward, "--reward")
        if args.against and max(args.win_ns) > args.n:
            raise ConfigError(f"--win-ns={args.win_ns}: each N must be <= --n={args.n} (best-of-N is estimated "
                              "from --n samples per prompt; use a few times the largest N)")
        if args.against and min(args.win_ns) < 1:
            raise ConfigError(f"--win-ns={args.win_ns}: each N must be >= 1")
        from actors.rollout import ROLLOUT_BACKENDS, make_engine
        from launch.preflight import load_tokenizer
        from rlplat.data import load_prompts, render_prompts
        from rlplat.rewards.runner import RewardRunner

        if args.backend not in ROLLOUT_BACKENDS:
            raise ConfigError(f"--backend={args.backend}: choose one of {ROLLOUT_BACKENDS.names()}")
        model = _resolve_model(args.model, "--model")
        tok_path = _resolve_model(args.tokenizer, "--tokenizer") if args.tokenizer else model
        tokenizer = load_tokenizer(tok_path, "--tokenizer" if args.tokenizer else "--model", args.trust_remote_code)
        data_cfg = DataConfig(
            train_path=args.data, eval_path=args.data, prompt_key=args.prompt_key, answer_key=args.answer_key,
            chat_template=args.chat_template, max_prompt_tokens=args.max_prompt_tokens,
            # built-in tasks generate exactly the rows asked for (the first N of the same stream)
            builtin_train_size=args.limit or DataConfig.builtin_train_size,
            builtin_eval_size=args.limit or DataConfig.builtin_eval_size,
        )
        rows = load_prompts(data_cfg, args.split)[: args.limit]
        prompt_ids = render_prompts(rows, tokenizer, data_cfg)
        if args.group_by is not None:
            for row in rows:
                group_of(row, args.group_by)
        if args.against:
            from launch.preflight import check_same_tokenizer

            against = _resolve_model(args.against, "--against")
            check_same_tokenizer(tokenizer, against, "--against", args.trust_remote_code)
    except (ConfigError, ValueError) as exc:
        print(f"rlplat: evaluate: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rollout = RolloutConfig(
        backend=args.backend, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, max_model_len=args.max_model_len or max(map(len, prompt_ids)) + args.max_new_tokens,
        max_num_seqs=args.max_num_seqs, cpu_kv_cache_gb=args.cpu_kv_cache_gb,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    t_load = time.perf_counter()
    engine = make_engine(args.backend, model_path=model, tokenizer_path=tok_path, rollout=rollout,
                         dtype=args.dtype, seed=args.seed, trust_remote_code=args.trust_remote_code)
    with RewardRunner(args.reward, args.reward_timeout) as runner:
        runner.wait_ready()
        seconds_start = time.perf_counter() - t_load
        result = evaluate(
            engine_generate_fn(engine, pad_id), rows, prompt_ids,
            lambda r, a, p, c: runner.score(list(zip(r, a, p, c))), args.n, ks,
            greedy_fn=None if args.no_greedy else engine_generate_fn(engine, pad_id, greedy=True),
            correct_threshold=args.threshold, keep_samples=args.save_samples or bool(args.against), seed=args.seed,
            group_by=args.group_by,
        )
        if args.against:  # the same engine, the baseline's weights, the same prompts and seed
            engine.update_weights(load_hf_weights(against, args.trust_remote_code))
            baseline = evaluate(engine_generate_fn(engine, pad_id), rows, prompt_ids,
                                lambda r, a, p, c: runner.score(list(zip(r, a, p, c))), args.n, ks,
                                correct_threshold=args.threshold, keep_samples=True, seed=args.seed)
            result.metrics.update(win_rate_metrics(result.records, baseline.records, args.win_ns))
            result.metrics[METRIC_PREFIX + "against_reward_mean"] = baseline.metrics[METRIC_PREFIX + "reward_mean"]
    result.metrics[METRIC_PREFIX + "seconds_start"] = seconds_start
    print(f"{args.model} on {args.data} ({args.split}, {len(rows)} prompts, n={args.n}, backend={args.backend})")
    print(format_table(result.metrics), flush=True)
    if args.out:
        payload = result.to_json()
        payload["run"] = {
            "model": args.model, "model_path": model, "data": args.data, "split": args.split, "backend": args.backend,
            "reward": args.reward, "threshold": args.threshold, "dtype": args.dtype, "seed": args.seed,
            "against": args.against, "win_ns": args.win_ns if args.against else None,
            "rollout": {k: getattr(rollout, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k", "max_model_len")},
            "seconds_total": time.perf_counter() - t0,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"rlplat: evaluate: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
