"""f-DPO's measurements at toy scale: the same initial policy and preference pairs trained under
each divergence, over several seeds, compared on alignment, diversity and calibration.

    python benchmarks/fdpo_divergences.py [--divergences reverse_kl,forward_kl,js,alpha] [--seeds 0,1,2]
        [--steps N] [--eval-prompts P] [--eval-n N] [--out DIR] [--set key=value ...]
    python benchmarks/fdpo_divergences.py --smoke     # 2 steps, one seed, tiny sizes, output in a temp dir

Every run is ``python -m launch.train --config configs/fdpo.yaml`` with ``algorithm.fdpo.divergence``,
``trainer.seed`` and the evaluation size set (the seed orders the pairs and the evaluation's sampling);
the runs share one stored set of reference log-probs (``algorithm.fdpo.store_path``), scored by the
first. Measured on the held-out split of the built-in pairs (additions), before training
and after the last step:

  * alignment: sampled pass@1 (``eval/pass@1``, ``--eval-n`` samples per prompt) and greedy pass@1;
  * diversity: distinct answers per prompt and the entropy (nats) of the sampled answers (``eval/distinct``,
    ``eval/entropy``);
  * calibration: expected calibration error of the implicit preference probabilities
    ``sigmoid(beta (f'(u_w) - f'(u_l)))`` of the held-out pairs, each pair in both orders (``eval/pairs_ece``),
    and the share of pairs ranked right (``eval/pairs_accuracy``).

Claims (the paper's, arXiv 2309.16240, section 5), each divergence against reverse KL (DPO), the
difference of seed means with its standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``; a verdict is
"holds" / "does not hold" only when the difference exceeds twice its standard error, else
"inconclusive at this noise" (one seed: "not tested: one seed"):
  1. a mass-covering divergence keeps more diversity (higher answer entropy) than reverse KL;
  2. at a small cost in alignment: its pass@1 is not higher than reverse KL's (reported as the difference);
  3. the divergence changes calibration: its ECE differs from reverse KL's.

Writes ``results.md`` (table of mean +- standard deviation, claims, command, machine, wall time),
``results.json`` and ``fdpo_divergences.png`` in ``--out``; run directories keep their metrics,
config, evaluations and log (checkpoints, TensorBoard files and, unless ``--keep-store``, the shared
reference store are deleted).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/machine.py, also when loaded by path
from machine import machine_info  # noqa: E402
from stats import compare, git_commit, machine_text, mean_std  # noqa: E402,F401  (mean_std: tests)

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
LABELS = {"reverse_kl": "reverse KL (DPO)", "forward_kl": "forward KL", "js": "Jensen-Shannon", "alpha": "alpha (0.5)"}
# measure -> (metric in metrics.jsonl, label)
MEASURES = {
    "pass@1": ("eval/pass@1", "held-out pass@1"),
    "pass@1_greedy": ("eval/pass@1_greedy", "greedy pass@1"),
    "entropy": ("eval/entropy", "answer entropy (nats)"),
    "distinct": ("eval/distinct", "distinct answers / prompt"),
    "ece": ("eval/pairs_ece", "pair ECE"),
    "pair_accuracy": ("eval/pairs_accuracy", "pair accuracy"),
}
SMOKE_SIZES = ("data.builtin_train_size=32", "data.builtin_eval_size=8", "data.prompts_per_step=8",
               "trainer.micro_batch_tokens=256", "rollout.cpu_kv_cache_gb=0.05")


# ----------------------------------------------------------------------------- claims
def claims(values: Dict[str, Dict[str, List[float]]]) -> List[Dict[str, Any]]:
    """The three claims for every divergence other than reverse KL (``values[divergence][measure]``: per seed)."""
    out = []
    base = values.get("reverse_kl")
    if base is None:
        return out
    for div in [d for d in values if d != "reverse_kl"]:
        for claim, measure, direction in (
            (f"{LABELS.get(div, div)} keeps more diversity (answer entropy) than reverse KL", "entropy", +1),
            (f"{LABELS.get(div, div)} aligns less (pass@1) than reverse KL", "pass@1", -1),
            (f"{LABELS.get(div, div)} changes calibration (pair ECE) from reverse KL's", "ece", 0),
        ):
            out.append({"claim": claim, "algorithms": [div, "reverse_kl"], "measure": measure,
                        "seeds": len(values[div][measure]), **compare(values[div][measure], base[measure], direction)})
    return out


# ----------------------------------------------------------------------------- runs
def train_command(div: str, seed: int, run_dir: str, store: str, args: argparse.Namespace) -> List[str]:
    cmd = [sys.executable, "-m", "launch.train", "--config", "configs/fdpo.yaml", f"trainer.output_dir={run_dir}",
           f"algorithm.fdpo.divergence={div}", f"trainer.seed={seed}", f"trainer.max_steps={args.steps}",
           f"trainer.eval_every={args.steps}", f"trainer.eval_max_prompts={args.eval_prompts}",
           f"trainer.eval_n={args.eval_n}", f"trainer.eval_ks=[1,{args.eval_n}]", f"algorithm.fdpo.store_path={store}"]
    return cmd + (list(SMOKE_SIZES) if args.smoke else []) + list(args.set)


def execute(div: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """One training run; returns its initial and final evaluation rows and wall time."""
    run_dir = os.path.join(args.out, "runs", f"{div}_seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends: a stale run would mix in
    os.makedirs(run_dir)
    cmd = train_command(div, seed, run_dir, os.path.join(args.out, "runs", "fdpo_reference.pt"), args)
    print(f"[fdpo] {div} seed {seed}: {shlex.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(os.path.join(run_dir, "train.log"), "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    if rc != 0:
        with open(os.path.join(run_dir, "train.log"), errors="replace") as f:
            tail = "".join(f.readlines()[-40:])
        raise RuntimeError(f"{div} seed {seed} failed (exit {rc}) after {seconds:.0f} s:\n{tail}")
    for bulky in ("checkpoints", "tensorboard"):  # the metrics and evaluations are all the report needs
        shutil.rmtree(os.path.join(run_dir, bulky), ignore_errors=True)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if "eval/pass@1" in r]
    print(f"[fdpo] {div} seed {seed}: done in {seconds:.0f} s", flush=True)
    return {"divergence": div, "seed": seed, "seconds": seconds, "command": cmd[1:],
            "initial": evals[0], "final": evals[-1], "train": [r for r in rows if r["step"] >= 0]}


def analyze(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    values: Dict[str, Dict[str, List[float]]] = {}
    for rec in records:
        per = values.setdefault(rec["divergence"], {m: [] for m in MEASURES})
        for measure, (key, _) in MEASURES.items():
            per[measure].append(float(rec["final"][key]))
    initial = {m: mean_std([float(r["initial"][key]) for r in records]) for m, (key, _) in MEASURES.items()}
    summary = {div: {m: mean_std(v) for m, v in per.items()} for div, per in values.items()}
    return {"initial": initial, "summary": summary, "values": values, "claims": claims(values)}


# ----------------------------------------------------------------------------- report
def fmt(s: Dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def plot(result: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("pass@1", "entropy", "ece")
    divs = list(result["summary"])
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6))
    for ax, measure in zip(axes, shown):
        means = [result["summary"][d][measure]["mean"] for d in divs]
        stds = [result["summary"][d][measure]["std"] for d in divs]
        ax.bar(range(len(divs)), means, yerr=stds, capsize=4, color="#4c72b0")
        for i, d in enumerate(divs):  # each seed as a dot
            vals = result["values"][d][measure]
            ax.plot([i] * len(vals), vals, "k.", ms=4)
        ax.axhline(result["initial"][measure]["mean"], color="grey", ls="--", lw=1, label="initial policy")
        ax.set_xticks(range(len(divs)), [LABELS.get(d, d).replace(" (DPO)", "\n(DPO)") for d in divs], fontsize=8)
        ax.set_title(MEASURES[measure][1])
        ax.legend(fontsize=7)
    fig.suptitle("f-DPO on the built-in addition pairs: mean ± std over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_markdown(path: str, result: Dict[str, Any]) -> None:
    lines = ["# f-DPO under four divergences (toy scale)", "",
             "Generated by `benchmarks/fdpo_divergences.py`; numbers are the final held-out evaluation of each run, "
             "mean ± sample standard deviation over seeds.", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {machine_text(result['machine'])}; wall time {result['wall_seconds'] / 60:.1f} min for "
             f"{len(result['runs'])} runs; commit {result['commit']}.", "",
             "| divergence | " + " | ".join(label for _, label in MEASURES.values()) + " |",
             "|---|" + "---:|" * len(MEASURES)]
    lines.append("| initial policy | " + " | ".join(fmt(result["initial"][m]) for m in MEASURES) + " |")
    for div, per in result["summary"].items():
        lines.append(f"| {LABELS.get(div, div)} | " + " | ".join(fmt(per[m]) for m in MEASURES) + " |")
    lines += ["", "## Claims", "", "| claim | difference | standard error | seeds | verdict |", "|---|---:|---:|---:|---|"]
    for c in result["claims"]:
        lines.append(f"| {c['claim']} | {c['difference']:+.4f} | {c['standard_error']:.4f} | {c['seeds']} | {c['verdict']} |")
    lines += ["", "![f-DPO divergences](fdpo_divergences.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--divergences", default=",".join(DIVERGENCES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-prompts", type=int, default=100)
    p.add_argument("--eval-n", type=int, default=16)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "fdpo"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override for every run")
    p.add_argument("--keep-store", action="store_true", help="keep runs/fdpo_reference.pt (the shared reference log-probs)")
    p.add_argument("--smoke", action="store_true", help="2 steps, seed 0, tiny sizes, output in a temp dir")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_prompts, args.eval_n, args.seeds = 2, 8, 4, "0"
        if args.out == p.get_default("out"):
            args.out = tempfile.mkdtemp(prefix="fdpo-smoke-")
    unknown = sorted(set(args.divergences.split(",")) - set(DIVERGENCES))
    if unknown:
        p.error(f"--divergences: unknown {unknown}; choose from {list(DIVERGENCES)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/fdpo_divergences.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    records = [execute(div, int(seed), args) for seed in args.seeds.split(",") for div in args.divergences.split(",")]
    if not args.keep_store:  # a cache of the reference's log-probs (MBs of tensors): not a result
        os.remove(os.path.join(args.out, "runs", "fdpo_reference.pt"))
    result = {"command": command.strip(), "commit": git_commit(), "machine": machine_info(),
              "wall_seconds": time.time() - t0, "runs": [{k: r[k] for k in ("divergence", "seed", "seconds", "command")}
                                                      for r in records], **analyze(records)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_markdown(os.path.join(args.out, "results.md"), result)
    plot(result, os.path.join(args.out, "fdpo_divergences.png"))
    for c in result["claims"]:
        print(f"[fdpo] {c['claim']}: {c['difference']:+.4f} ± {c['standard_error']:.4f} -> {c['verdict']}")
    print(f"[fdpo] wrote {args.out}/results.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
