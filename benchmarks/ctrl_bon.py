"""InfAlign-CTRL's claims at toy scale: from the same initial policy, with the same KL coefficient,
KL-regularised RL on the raw reward, on the calibrated reward (identity) and on the best-of-N
transformed calibrated reward (CTRL), compared on best-of-N win rates against the initial policy.

    python benchmarks/ctrl_bon.py [--variants raw,identity,bon] [--seeds 0,1,2] [--steps N]
        [--eval-prompts P] [--eval-n N] [--out DIR] [--set key=value ...]
    python benchmarks/ctrl_bon.py --smoke      # 2 steps, one seed, tiny sizes, output in a temp dir

Every run is ``python -m launch.train --config configs/ctrl_bon.yaml`` (reward ``arithmetic_graded``,
k3 KL to the reference with coefficient 0.05, GRPO advantages) with:

  * ``raw``: ``algorithm.name=grpo`` (no calibration: the raw graded reward);
  * ``identity``: ``algorithm.ctrl.transform=identity`` (calibrated reward, no transformation);
  * ``bon``: the config's ``exp(t c)``, t = 10;

and ``trainer.seed`` (the order of the prompts, the training samples and the reference samples; the
evaluation's samples use the same seed for every variant of a seed, so variants are compared on
common random numbers). The final held-out evaluation samples ``--eval-n`` responses per prompt
from the trained policy and from the initial policy (pi_ref), and reports ``eval/bon@{N}_win_rate``
(best-of-N of the policy against best-of-N of pi_ref under the graded reward, ties half) for
N = 1, 4, 16 (``rlplat.win_rate``); the KL reached is the mean k3 estimate ``div/kl_ref`` of the last
five steps.

Claims (the paper's, arXiv 2412.19792), each the difference of seed means with its standard error,
a verdict only beyond twice the standard error (``benchmarks/stats.compare``):
  1. calibration is a strong baseline for the standard win rate: identity's N = 1 win rate is not
     below raw's;
  2. the best-of-N transformation improves the best-of-N win rate over calibration alone (N = 4, 16);
  3. ... and over the raw reward (N = 4, 16).
The KL each variant reached is reported next to them: the paper compares at matched KL, and a
variant that moved further from pi_ref wins more for that reason alone.

Writes ``results.md``, ``results.json`` and ``ctrl_bon.png`` in ``--out``; run directories keep their
metrics, config, evaluations and log (checkpoints, TensorBoard files and reference stores are deleted).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/*.py, also when loaded by path
from machine import machine_info  # noqa: E402
from stats import ROOT, compare, git_commit, machine_text, mean_std  # noqa: E402

VARIANTS = {
    "raw": ("raw reward", ["algorithm.name=grpo", "algorithm.ctrl.t=null"]),
    "identity": ("calibrated (identity)", ["algorithm.ctrl.transform=identity", "algorithm.ctrl.t=null"]),
    "bon": ("CTRL best-of-N (exp(10 c))", []),
}
NS = (1, 4, 16)
# measure -> (how it is read from a run, label)
MEASURES = {**{f"bon@{n}": (f"eval/bon@{n}_win_rate", f"best-of-{n} win rate") for n in NS},
            "won@4": ("eval/won@4_win_rate", "worst-of-4 win rate"),
            "reward": ("eval/reward_mean", "held-out reward"),
            "kl": ("kl", "KL to pi_ref (k3, last 5 steps)")}
SMOKE_SIZES = ("data.builtin_train_size=16", "data.builtin_eval_size=8", "data.prompts_per_step=8",
               "trainer.micro_batch_tokens=256", "rollout.cpu_kv_cache_gb=0.05")


def claims(values: Dict[str, Dict[str, List[float]]]) -> List[Dict[str, Any]]:
    """``values[variant][measure]``: one value per seed."""
    out = []

    def add(claim, a, b, measure, direction):
        if measure in values.get(a, {}) and measure in values.get(b, {}):  # smoke: N <= --eval-n only
            out.append({"claim": claim, "algorithms": [a, b], "measure": measure, "seeds": len(values[a][measure]),
                        **compare(values[a][measure], values[b][measure], direction)})

    add("calibration alone is a strong baseline for the standard win rate (identity >= raw, N = 1)",
        "identity", "raw", "bon@1", +1)
    for n in NS[1:]:
        add(f"the best-of-N transformation beats calibration alone on best-of-{n}", "bon", "identity", f"bon@{n}", +1)
        add(f"the best-of-N transformation beats the raw reward on best-of-{n}", "bon", "raw", f"bon@{n}", +1)
    return out


def train_command(variant: str, seed: int, run_dir: str, args: argparse.Namespace) -> List[str]:
    cmd = [sys.executable, "-m", "launch.train", "--config", "configs/ctrl_bon.yaml", f"trainer.output_dir={run_dir}",
           *VARIANTS[variant][1], f"trainer.seed={seed}", f"trainer.max_steps={args.steps}",
           f"trainer.eval_every={args.steps}", f"trainer.eval_max_prompts={args.eval_prompts}",
           f"trainer.eval_n={args.eval_n}", f"trainer.eval_ks=[1,{args.eval_n}]",
           f"trainer.eval_win_ns=[{','.join(str(n) for n in NS if n <= args.eval_n)}]", "trainer.save_every=0"]
    return cmd + (list(SMOKE_SIZES) if args.smoke else []) + list(args.set)


def execute(variant: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """One training run; returns its final evaluation row (plus the KL reached) and wall time."""
    run_dir = os.path.join(args.out, "runs", f"{variant}_seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends: a stale run would mix in
    os.makedirs(run_dir)
    cmd = train_command(variant, seed, run_dir, args)
    print(f"[ctrl] {variant} seed {seed}: {shlex.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(os.path.join(run_dir, "train.log"), "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    if rc != 0:
        with open(os.path.join(run_dir, "train.log"), errors="replace") as f:
            tail = "".join(f.readlines()[-40:])
        raise RuntimeError(f"{variant} seed {seed} failed (exit {rc}) after {seconds:.0f} s:\n{tail}")
    for bulky in ("checkpoints", "tensorboard", "ctrl_reference.pt"):  # not results
        path = os.path.join(run_dir, bulky)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if r["step"] >= 0]
    final = dict([r for r in rows if "eval/pass@1" in r][-1])
    final["kl"] = sum(r["div/kl_ref"] for r in train[-5:]) / len(train[-5:])
    print(f"[ctrl] {variant} seed {seed}: done in {seconds:.0f} s", flush=True)
    return {"variant": variant, "seed": seed, "seconds": seconds, "command": cmd[1:], "final": final}


def analyze(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    values: Dict[str, Dict[str, List[float]]] = {}
    for rec in records:
        per = values.setdefault(rec["variant"], {m: [] for m in MEASURES})
        for measure, (key, _) in MEASURES.items():
            if key in rec["final"]:
                per[measure].append(float(rec["final"][key]))
    values = {v: {m: x for m, x in per.items() if x} for v, per in values.items()}
    summary = {v: {m: mean_std(x) for m, x in per.items()} for v, per in values.items()}
    return {"summary": summary, "values": values, "claims": claims(values)}


# ----------------------------------------------------------------------------- report
def fmt(s: Optional[Dict[str, float]]) -> str:
    return "n/a" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def plot(result: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    variants = list(result["summary"])
    ns = [n for n in NS if f"bon@{n}" in next(iter(result["summary"].values()))]
    for i, v in enumerate(variants):
        s = result["summary"][v]
        xs = [n * (1 + 0.04 * (i - 1)) for n in ns]  # side by side on the log axis
        ax.errorbar(xs, [s[f"bon@{n}"]["mean"] for n in ns], yerr=[s[f"bon@{n}"]["std"] for n in ns],
                    marker="o", capsize=4, label=VARIANTS[v][0])
        for x, n in zip(xs, ns):
            vals = result["values"][v][f"bon@{n}"]
            ax.plot([x] * len(vals), vals, "k.", ms=3)
        ax_kl.bar(i, s["kl"]["mean"], yerr=s["kl"]["std"], capsize=4)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (best-of-N on both sides)")
    ax.set_ylabel("win rate against pi_ref")
    ax.legend(fontsize=8)
    ax_kl.set_xticks(range(len(variants)), variants, fontsize=8)
    ax_kl.set_title("KL to pi_ref (k3)", fontsize=9)
    fig.suptitle("InfAlign-CTRL on the built-in addition task, graded reward: mean ± std over seeds (dots: seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_markdown(path: str, result: Dict[str, Any]) -> None:
    lines = ["# InfAlign-CTRL: best-of-N win rates (toy scale)", "",
             "Generated by `benchmarks/ctrl_bon.py`; numbers are each run's final held-out evaluation, "
             "mean ± sample standard deviation over seeds. Win rates are against the initial policy (pi_ref), "
             "best-of-N on both sides under the graded reward, ties half.", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {machine_text(result['machine'])}; wall time {result['wall_seconds'] / 60:.1f} min for "
             f"{len(result['runs'])} runs; commit {result['commit']}.", "",
             "| variant | " + " | ".join(label for _, label in MEASURES.values()) + " |",
             "|---|" + "---:|" * len(MEASURES)]
    for v, per in result["summary"].items():
        lines.append(f"| {VARIANTS[v][0]} | " + " | ".join(fmt(per.get(m)) for m in MEASURES) + " |")
    lines += ["", "## Claims", "", "| claim | difference | standard error | seeds | verdict |", "|---|---:|---:|---:|---|"]
    for c in result["claims"]:
        lines.append(f"| {c['claim']} | {c['difference']:+.4f} | {c['standard_error']:.4f} | {c['seeds']} | {c['verdict']} |")
    lines += ["", "![CTRL best-of-N win rates](ctrl_bon.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-prompts", type=int, default=100)
    p.add_argument("--eval-n", type=int, default=64)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "ctrl"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override for every run")
    p.add_argument("--smoke", action="store_true", help="2 steps, seed 0, tiny sizes, output in a temp dir")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_prompts, args.eval_n, args.seeds = 2, 8, 4, "0"
        if args.out == p.get_default("out"):
            args.out = tempfile.mkdtemp(prefix="ctrl-smoke-")
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/ctrl_bon.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    records = [execute(v, int(seed), args) for seed in args.seeds.split(",") for v in args.variants.split(",")]
    result = {"command": command.strip(), "commit": git_commit(), "machine": machine_info(),
              "wall_seconds": time.time() - t0, "runs": [{k: r[k] for k in ("variant", "seed", "seconds", "command")}
                                                      for r in records], **analyze(records)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_markdown(os.path.join(args.out, "results.md"), result)
    plot(result, os.path.join(args.out, "ctrl_bon.png"))
    for c in result["claims"]:
        print(f"[ctrl] {c['claim']}: {c['difference']:+.4f} ± {c['standard_error']:.4f} -> {c['verdict']}")
    print(f"[ctrl] wrote {args.out}/results.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
