"""Small-scale replication of the papers' claims: GRPO, KDRL, DPH-RL (forward KL and JS) and
Nash-MP trained from the same initial policy, compared on held-out pass@1 / pass@k.

    python benchmarks/replicate.py [--steps N] [--eval-every E] [--eval-prompts P] [--seed S]
        [--out DIR] [--only grpo,kdrl,dph_rl_forward_kl,dph_rl_js,nash_mp] [--set key=value ...]
    python benchmarks/replicate.py --smoke      # 2 steps each, tiny sizes, output in a temp dir

Every run is ``python -m launch.train --config configs/<algo>.yaml`` in ``<out>/<run>`` with only
common overrides (steps, evaluation schedule and size, seed; in ``--smoke`` also batch and data
sizes), so the algorithms' hyperparameters and the model come from their config files. The
runs go one after another; each one's stdout/stderr is kept in ``<out>/<run>/train.log``.

Measurements (all from the runs' held-out evaluations, ``<run>/eval/step_<s>.json``):
  * pass@1, pass@8, pass@16 (unbiased, n = --eval-n samples per prompt) and greedy pass@1,
    before training (step -1, the initial policy) and every ``--eval-every`` steps;
  * win rate against the initial policy: sample j of the current policy vs sample j of the
    initial policy on the same prompt, judged by the Nash-MP config's preference judge
    (``algorithm.nash_mp.judge``), averaged over all pairs. 0.5 at step -1 by construction.
x in tables and plots = training steps done (updates; one Mirror-Prox iteration for Nash-MP):
the evaluation logged at step s comes after s + 1 of them, the initial policy is x = 0.

Claims tested (verdicts computed from the measurements by the ``claim_*`` functions):
  1. GRPO raises pass@1 over the initial policy (final > initial).
  2. DPH-RL keeps pass@k at or above the initial policy's while GRPO's falls (final values,
     k = 8 and 16, both DPH-RL variants).
  3. KDRL reaches GRPO's final pass@1 in fewer steps than GRPO (first evaluated x at which
     pass@1 >= GRPO's final pass@1; the initial policy, x = 0, counts for both).
  4. Nash-MP's win rate against the initial policy rises (final > the initial 0.5).

Writes ``results.md`` (tables, claims, command, commit, machine, model), ``results.json`` (every
curve, verdicts, commands) and ``replication.png`` in ``--out``. After a successful run its
``checkpoints/`` and ``*.pt`` files (DeepSpeed state, DPH-RL store) are deleted unless
``--keep-checkpoints``: the evaluations are all this script needs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/machine.py, also when loaded by path
from machine import machine_info  # noqa: E402

KS = (1, 8, 16)  # pass@k reported; eval_n must be >= max(KS)
METRICS = ("pass@1", "pass@8", "pass@16", "pass@1_greedy", "win_rate")
LABELS = {"pass@1": "pass@1", "pass@8": "pass@8", "pass@16": "pass@16", "pass@1_greedy": "greedy pass@1",
          "win_rate": "win rate vs initial"}


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str
    config: str  # relative to the repository root
    overrides: Tuple[str, ...] = ()


# The forward-KL variant names its divergence too: the claim is about forward KL whatever the
# config file's default becomes.
RUNS: Tuple[RunSpec, ...] = (
    RunSpec("grpo", "GRPO", "configs/grpo.yaml"),
    RunSpec("kdrl", "KDRL", "configs/kdrl.yaml"),
    RunSpec("dph_rl_forward_kl", "DPH-RL (forward KL)", "configs/dph_rl.yaml",
            ("algorithm.divergences.0.divergence=forward_kl",)),
    RunSpec("dph_rl_js", "DPH-RL (JS)", "configs/dph_rl.yaml", ("algorithm.divergences.0.divergence=js",)),
    RunSpec("nash_mp", "Nash-MP", "configs/nash_mp.yaml"),
)
RUN_NAMES = tuple(r.name for r in RUNS)
ALIASES = {"dph_rl": ("dph_rl_forward_kl", "dph_rl_js"), "dph": ("dph_rl_forward_kl", "dph_rl_js"),
           "nash": ("nash_mp",), "all": RUN_NAMES}
DPH_RUNS = ("dph_rl_forward_kl", "dph_rl_js")

# --smoke: the smallest sizes that still run every path (common to all runs, as in tests/test_e2e.py).
SMOKE = {"steps": 2, "eval_every": 1, "eval_prompts": 8, "eval_n": 16}
SMOKE_SIZES = (
    "data.prompts_per_step=4", "data.builtin_train_size=64", "algorithm.group_size=4",
    "trainer.micro_batch_tokens=256", "rollout.cpu_kv_cache_gb=0.05",
    "algorithm.dph_rl.samples_per_prompt=2",  # DPH-RL's pi_0 split: 64 prompts x 2 samples
)


# ----------------------------------------------------------------------------- reading runs
def load_evals(run_dir: str) -> List[Dict[str, Any]]:
    """Every ``eval/step_<s>.json`` of a run, sorted by step (-1 first)."""
    d = os.path.join(run_dir, "eval")
    if not os.path.isdir(d):
        raise RuntimeError(f"{run_dir}: no eval/ directory (was trainer.eval_every > 0?)")
    out = []
    for name in os.listdir(d):
        if name.startswith("step_") and name.endswith(".json"):
            with open(os.path.join(d, name)) as f:
                out.append(json.load(f))
    out.sort(key=lambda e: e["step"])
    return out


def win_rate(current: Sequence[Dict[str, Any]], initial: Sequence[Dict[str, Any]],
             judge: Callable[[str, str, str, Optional[str]], float]) -> float:
    """Mean of ``judge(prompt, a_j, b_j, answer)`` over every prompt and every j, where ``a_j`` is
    sample j of ``current`` and ``b_j`` sample j of ``initial`` for the same prompt (records are
    matched by ``index``; both need ``samples``). 0.5 means no better than the initial policy."""
    init = {r["index"]: r for r in initial}
    total, count = 0.0, 0
    for rec in current:
        if rec["index"] not in init:
            raise ValueError(f"prompt {rec['index']} ({rec.get('prompt')!r}) is not in the initial evaluation")
        base = init[rec["index"]]
        a, b = rec.get("samples"), base.get("samples")
        if a is None or b is None:
            raise ValueError("evaluation records without 'samples' (the controller keeps them: keep_samples=True)")
        if len(a) != len(b):
            raise ValueError(f"prompt {rec['index']}: {len(a)} samples now vs {len(b)} initially")
        for x, y in zip(a, b):
            v = float(judge(base["prompt"], x, y, base.get("answer")))
            if math.isnan(v) or not 0.0 <= v <= 1.0:
                raise ValueError(f"judge returned {v} for prompt {base['prompt']!r}: expected a probability")
            total += v
            count += 1
    if count == 0:
        raise ValueError("win_rate: no sample pairs")
    return total / count


def curve_from_evals(evals: Sequence[Dict[str, Any]], judge: Callable) -> List[Dict[str, Any]]:
    """One point per evaluation: x = ``updates`` (step + 1), pass@k, greedy pass@1, win rate."""
    if not evals or evals[0]["step"] != -1:
        raise ValueError("no step -1 evaluation (the initial policy; trainer.eval_before_train=true)")
    initial = evals[0]["records"]
    points = []
    for e in evals:
        m = e["metrics"]
        point = {"step": e["step"], "updates": e["step"] + 1}
        for k in KS:
            point[f"pass@{k}"] = m.get(f"eval/pass@{k}")
        point["pass@1_greedy"] = m.get("eval/pass@1_greedy")
        point["win_rate"] = win_rate(e["records"], initial, judge)
        points.append(point)
    return points


def check_initial_agreement(initials: Dict[str, Dict[str, Any]], reference: str) -> Dict[str, Any]:
    """Compare every run's step -1 evaluation with ``reference``'s: same metrics, same samples?
    ``initials``: run name -> its ``step_-1.json``. Returns {"agree", "mismatches": [...]}."""
    ref = initials[reference]
    ref_samples = {r["index"]: r.get("samples") for r in ref["records"]}
    mismatches = []
    for name, ev in initials.items():
        if name == reference:
            continue
        for key in [f"eval/pass@{k}" for k in KS] + ["eval/pass@1_greedy"]:
            a, b = ref["metrics"].get(key), ev["metrics"].get(key)
            if a != b:
                mismatches.append({"run": name, "what": key, reference: a, "value": b})
        same = {r["index"]: r.get("samples") for r in ev["records"]} == ref_samples
        if not same:
            mismatches.append({"run": name, "what": "samples", reference: "reference", "value": "differ"})
    return {"reference": reference, "runs": sorted(initials), "agree": not mismatches, "mismatches": mismatches}


# ----------------------------------------------------------------------------- claims
@dataclass
class Verdict:
    claim: str
    held: Optional[bool]  # None: not tested (a run it needs is missing)
    detail: str
    numbers: Dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "not tested" if self.held is None else ("held" if self.held else "did not hold")


def _not_tested(claim: str, missing: Sequence[str]) -> Verdict:
    return Verdict(claim, None, f"not tested: run(s) {', '.join(missing)} not in this replication")


def final(curve: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    return max(curve, key=lambda p: p["updates"])


def first_reaching(curve: Sequence[Dict[str, Any]], metric: str, target: float) -> Optional[int]:
    """Smallest ``updates`` at which ``curve``'s ``metric`` >= ``target`` (None: never)."""
    hits = [p["updates"] for p in curve if p.get(metric) is not None and p[metric] >= target]
    return min(hits) if hits else None


CLAIM1 = "GRPO raises pass@1 over the initial policy"
CLAIM2 = "DPH-RL keeps pass@k at or above the initial policy's while GRPO's falls"
CLAIM3 = "KDRL reaches GRPO's final pass@1 in fewer steps than GRPO"
CLAIM4 = "Nash-MP's win rate against the initial policy rises"


def claim_grpo_raises_pass1(initial: Dict[str, Any], grpo: Optional[Sequence[Dict[str, Any]]]) -> Verdict:
    if grpo is None:
        return _not_tested(CLAIM1, ["grpo"])
    a, f = initial["pass@1"], final(grpo)
    b = f["pass@1"]
    return Verdict(CLAIM1, b > a, f"GRPO pass@1 {b:.4f} after {f['updates']} steps vs initial {a:.4f} ({b - a:+.4f})",
                   {"initial_pass@1": a, "grpo_final_pass@1": b, "updates": f["updates"]})


def claim_dph_keeps_pass_at_k(initial: Dict[str, Any], grpo: Optional[Sequence[Dict[str, Any]]],
                              dph: Dict[str, Optional[Sequence[Dict[str, Any]]]], ks: Sequence[int] = (8, 16)) -> Verdict:
    """Held iff, for every k in ``ks``, GRPO's final pass@k < the initial's and every DPH-RL
    variant's final pass@k >= the initial's. ``dph``: variant name -> curve (None: not run)."""
    missing = (["grpo"] if grpo is None else []) + [n for n, c in dph.items() if c is None]
    if missing:
        return _not_tested(CLAIM2, missing)
    parts, numbers, held = [], {}, True
    for k in ks:
        key = f"pass@{k}"
        a = initial[key]
        g = final(grpo)[key]
        falls = g < a
        held &= falls
        numbers[f"initial_{key}"] = a
        numbers[f"grpo_final_{key}"] = g
        bits = [f"GRPO {g:.4f} ({'falls' if falls else 'does not fall'})"]
        for name, curve in dph.items():
            v = final(curve)[key]
            keeps = v >= a
            held &= keeps
            numbers[f"{name}_final_{key}"] = v
            bits.append(f"{name} {v:.4f} ({'keeps' if keeps else 'falls'})")
        parts.append(f"{key}: initial {a:.4f}; " + ", ".join(bits))
    return Verdict(CLAIM2, bool(held), "; ".join(parts), numbers)


def claim_kdrl_faster(grpo: Optional[Sequence[Dict[str, Any]]], kdrl: Optional[Sequence[Dict[str, Any]]]) -> Verdict:
    missing = [n for n, c in (("grpo", grpo), ("kdrl", kdrl)) if c is None]
    if missing:
        return _not_tested(CLAIM3, missing)
    target = final(grpo)["pass@1"]
    g, k = first_reaching(grpo, "pass@1", target), first_reaching(kdrl, "pass@1", target)
    held = k is not None and g is not None and k < g
    kd = "never within the run" if k is None else f"after {k} steps"
    note = " (GRPO's final pass@1 is not above the initial policy's, which already reaches it)" if g == 0 else ""
    return Verdict(CLAIM3, held, f"target = GRPO's final pass@1 {target:.4f}; KDRL reaches it {kd}, GRPO after {g} steps"
                   f"{note} (KDRL final pass@1 {final(kdrl)['pass@1']:.4f})",
                   {"target_pass@1": target, "kdrl_steps": k, "grpo_steps": g, "kdrl_final_pass@1": final(kdrl)["pass@1"]})


def claim_nash_win_rate_rises(nash: Optional[Sequence[Dict[str, Any]]]) -> Verdict:
    if nash is None:
        return _not_tested(CLAIM4, ["nash_mp"])
    first, last = min(nash, key=lambda p: p["updates"]), final(nash)
    a, b = first["win_rate"], last["win_rate"]
    return Verdict(CLAIM4, b > a, f"win rate vs initial {b:.4f} after {last['updates']} steps vs {a:.4f} at "
                   f"{first['updates']} steps ({b - a:+.4f})",
                   {"win_rate_start": a, "win_rate_final": b, "updates": last["updates"]})


def evaluate_claims(initial: Dict[str, Any], curves: Dict[str, List[Dict[str, Any]]]) -> List[Verdict]:
    return [
        claim_grpo_raises_pass1(initial, curves.get("grpo")),
        claim_dph_keeps_pass_at_k(initial, curves.get("grpo"), {n: curves.get(n) for n in DPH_RUNS}),
        claim_kdrl_faster(curves.get("grpo"), curves.get("kdrl")),
        claim_nash_win_rate_rises(curves.get("nash_mp")),
    ]


# ----------------------------------------------------------------------------- environment facts
def git_info() -> Dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": []}
    return {"commit": commit, "dirty": dirty}


def model_facts(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """``rlplat_build.json`` facts of a built-in model (parameters, warm-start accuracy), if any."""
    if not path:
        return None
    resolved = path
    if path.startswith("builtin:"):
        from rlplat.models.tiny import resolve_model_path

        resolved = resolve_model_path(path)  # the runs built it already: only a lookup
    info_file = os.path.join(resolved, "rlplat_build.json")
    if not os.path.isfile(info_file):
        return {"path": path, "resolved": resolved}
    with open(info_file) as f:
        info = json.load(f)
    spec = info.get("spec", {})
    return {"path": path, "resolved": resolved, "num_parameters": info.get("num_parameters"),
            "heldout_accuracy": info.get("heldout_accuracy"), "warm_start_steps": info.get("warm_start_steps"),
            "heldout_carry_free_rate": info.get("heldout_carry_free_rate"),
            "careless_steps": spec.get("careless_steps"), "careless_rate": spec.get("careless_rate"),
            "size": info.get("size"), "layers": spec.get("num_layers"), "hidden_size": spec.get("hidden_size"),
            "cache_version": info.get("cache_version")}


def careless_text(facts: Dict[str, Any]) -> str:
    """How much of a built-in model's warm start imitated the careless demonstrator, and the share
    of held-out problems it answers with the sum without carries ("" for older builds)."""
    if not facts.get("careless_steps"):
        return ""
    return (f", the last {facts['careless_steps']} of them imitating a demonstrator who drops the carries in "
            f"{fmt(facts['careless_rate'])} of the problems; {fmt(facts['heldout_carry_free_rate'])} of held-out "
            "answers are the sum without carries")


def read_run_config(run_dir: str) -> Dict[str, Any]:
    import yaml

    with open(os.path.join(run_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def judge_spec(configs: Dict[str, Dict[str, Any]], overrides: Sequence[str]) -> str:
    """The preference judge (``module:function``): the Nash-MP run's ``algorithm.nash_mp.judge``,
    else configs/nash_mp.yaml's (with the user's --set overrides)."""
    cfg = configs.get("nash_mp")
    spec = cfg["algorithm"]["nash_mp"].get("judge") if cfg else None
    if not spec:
        from rlplat.config import load_config

        spec = load_config(os.path.join(ROOT, "configs/nash_mp.yaml"), list(overrides), validate=False).algorithm.nash_mp.judge
    if not spec:
        raise RuntimeError("configs/nash_mp.yaml has no algorithm.nash_mp.judge: the win rate needs a rule-based judge")
    return spec


# ----------------------------------------------------------------------------- running
def select_runs(only: Optional[str]) -> List[RunSpec]:
    if not only:
        return list(RUNS)
    wanted = set()
    for name in (n.strip() for n in only.split(",") if n.strip()):
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in RUN_NAMES:
            wanted.add(name)
        else:
            raise SystemExit(f"--only: unknown run '{name}'; choose from {', '.join(RUN_NAMES + tuple(ALIASES))}")
    return [r for r in RUNS if r.name in wanted]


def train_command(run: RunSpec, run_dir: str, args: argparse.Namespace) -> List[str]:
    common = [
        f"trainer.output_dir={run_dir}", f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        "trainer.eval_before_train=true", f"trainer.eval_n={args.eval_n}", f"trainer.eval_ks=[{','.join(map(str, KS))}]",
        f"trainer.eval_max_prompts={args.eval_prompts}", f"trainer.seed={args.seed}",
    ]
    sizes = list(SMOKE_SIZES) if args.smoke else []
    return [sys.executable, "-m", "launch.train", "--config", run.config, *common, *sizes, *run.overrides, *args.set]


def log_tail(path: str, lines: int = 60) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def execute(run: RunSpec, args: argparse.Namespace) -> Dict[str, Any]:
    """Run one training job (or reuse a finished one with --reuse); returns its record."""
    run_dir = os.path.join(args.out, run.name)
    marker = os.path.join(run_dir, "replicate_run.json")
    cmd = train_command(run, run_dir, args)
    if args.reuse and os.path.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("command") == cmd[1:]:
            print(f"[replicate] {run.name}: reusing the finished run in {run_dir}", flush=True)
            return done
        print(f"[replicate] {run.name}: {run_dir} was run with another command; running again", flush=True)
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # metrics.jsonl appends: a stale run would mix into this one
    os.makedirs(run_dir)
    log = os.path.join(run_dir, "train.log")
    print(f"[replicate] {run.name}: {shlex.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"run '{run.name}' failed (exit {rc}) after {seconds:.0f} s; log {log}; its tail:\n"
                           f"{log_tail(log)}")
    if not os.path.isfile(os.path.join(run_dir, "eval", "step_-1.json")):
        raise RuntimeError(f"run '{run.name}' finished but wrote no eval/step_-1.json (initial policy); log {log}:\n"
                           f"{log_tail(log)}")
    if not args.keep_checkpoints:
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
        for name in os.listdir(run_dir):
            if name.endswith(".pt"):
                os.remove(os.path.join(run_dir, name))
    record = {"name": run.name, "command": cmd[1:], "wall_seconds": seconds, "run_dir": run_dir}
    with open(marker, "w") as f:
        json.dump(record, f, indent=2)
    print(f"[replicate] {run.name}: done in {seconds:.0f} s", flush=True)
    return record


def last_metrics_row(run_dir: str) -> Dict[str, Any]:
    from launch.metrics import read_metrics

    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    return rows[-1] if rows else {}


# ----------------------------------------------------------------------------- outputs
def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot(curves: Dict[str, List[Dict[str, Any]]], labels: Dict[str, str], initial: Dict[str, Any], path: str,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("pass@1", "held-out pass@1"), ("pass@8", "held-out pass@8"), ("pass@16", "held-out pass@16"),
              ("win_rate", "win rate vs initial policy")]
    markers = "osD^v<>"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, (key, name) in zip(axes.flat, panels):
        values = [initial[key]]
        for i, (run, curve) in enumerate(curves.items()):
            pts = [(p["updates"], p[key]) for p in curve if p.get(key) is not None]
            if pts:  # distinct markers and dashes: runs that coincide stay visible
                ax.plot(*zip(*pts), marker=markers[i % len(markers)], markersize=4, linewidth=1.5,
                        linestyle="-" if i % 2 == 0 else "--", label=labels[run])
                values += [v for _, v in pts]
        ax.axhline(initial[key], color="gray", linestyle=":", linewidth=1, label="initial policy")
        lo, hi = min(values), max(values)
        pad = max(0.02, 0.1 * (hi - lo))  # no magnified noise: a flat panel spans at least 0.04
        ax.set_ylim(max(-0.01, lo - pad), min(1.01, hi + pad) if hi <= 1 else hi + pad)
        ax.set_title(name)
        ax.set_xlabel("training steps (updates)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(path: str, result: Dict[str, Any]) -> None:
    runs, labels, initial = result["runs"], result["labels"], result["initial"]
    lines = ["# Replication of the papers' claims (small scale)", ""]
    a = result["args"]
    lines += [f"Built-in tiny policy (`{result['model'].get('policy', {}).get('path', '?')}`), {a['steps']} training steps "
              f"per algorithm, held-out evaluation every {a['eval_every']} steps on {a['eval_prompts']} prompts with "
              f"n = {a['eval_n']} samples each (fixed sampling seed), trainer seed {a['seed']}"
              + (" — **smoke run: sizes far too small for the numbers to mean anything**" if a["smoke"] else "") + ".",
              "x = training steps done (updates; a Nash-MP step is one Mirror-Prox iteration: half + full step); "
              "the initial policy is x = 0 (the runs' step -1 evaluation). Win rate vs initial: sample j of the "
              f"policy vs sample j of the initial policy on the same prompt, judged by `{result['judge']}`.", "",
              "![replication curves](replication.png)", "", "## Final evaluation", ""]
    header = ["policy", "pass@1", "pass@8", "pass@16", "greedy pass@1", "win rate vs initial", "steps", "wall s"]
    rows = [["initial policy", initial["pass@1"], initial["pass@8"], initial["pass@16"], initial["pass@1_greedy"],
             initial["win_rate"], 0, None]]
    for name, run in runs.items():
        f = final(run["curve"])
        rows.append([labels[name], f["pass@1"], f["pass@8"], f["pass@16"], f["pass@1_greedy"], f["win_rate"],
                     f["updates"], round(run["wall_seconds"])])
    lines += [md_table(header, rows), ""]
    agree = result["initial_agreement"]
    if agree["agree"]:
        lines.append(f"The initial-policy row is {labels[agree['reference']]}'s step -1 evaluation; all "
                     f"{len(agree['runs'])} runs' step -1 evaluations agree (same metrics, same samples).")
    else:
        lines.append(f"The initial-policy row is {labels[agree['reference']]}'s step -1 evaluation. **The runs' "
                     f"step -1 evaluations do not all agree:**")
        lines += [f"- {m['run']}: {m['what']} {fmt(m['value'], 4)} (reference {fmt(m[agree['reference']], 4)})"
                  for m in agree["mismatches"]]
    notes = [f"- {n}" for n in result["notes"]]
    if notes:
        lines += ["", *notes]
    lines += ["", "## Curves", ""]
    xs = sorted({p["updates"] for run in runs.values() for p in run["curve"]})
    for key in METRICS:
        lines += [f"**{LABELS[key]}**", ""]
        header = ["steps"] + [labels[n] for n in runs]
        table = []
        for x in xs:
            row: List[Any] = [x]
            for run in runs.values():
                p = next((p for p in run["curve"] if p["updates"] == x), None)
                row.append(None if p is None else p[key])
            table.append(row)
        lines += [md_table(header, table), ""]
    lines += ["## Claims", "", "Verdicts are computed from the measurements above (`benchmarks/replicate.py`, "
              "`claim_*` functions).", ""]
    for i, v in enumerate(result["claims"], 1):
        lines.append(f"{i}. {v['claim']}: **{v['status']}**. {v['detail']}.")
    lines += ["", "## How this was produced", "", "```bash", result["command"], "```", "",
              "Training runs (in this order, one at a time):", ""]
    for name, run in runs.items():
        lines += [f"- {labels[name]} ({round(run['wall_seconds'])} s): `{shlex.join(['python'] + run['command'])}`"]
    g = result["git"]
    dirty = f" with uncommitted changes to {', '.join(f'`{p}`' for p in g['dirty'])}" if g["dirty"] else ""
    m = result["machine"]
    v = m["versions"]
    lines += ["", f"- git commit: `{g['commit']}`{dirty}",
              f"- machine: {m['cpu']}, {m['logical_cores']} cores ({m['usable_cores']} usable), {m['ram_gib']} GiB RAM; "
              f"Python {m['python']}, {m['platform']}",
              "- versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in v)]
    for role, facts in result["model"].items():
        if facts and facts.get("num_parameters") is not None:
            lines.append(f"- {role} model `{facts['path']}`: {facts['num_parameters']:,} parameters "
                         f"({facts['layers']} layers, hidden {facts['hidden_size']}), warm-start held-out greedy "
                         f"accuracy {fmt(facts['heldout_accuracy'])} after {facts['warm_start_steps']} warm-start steps"
                         f"{careless_text(facts)} (`rlplat_build.json`, cache {facts['cache_version']})")
        elif facts:
            lines.append(f"- {role} model `{facts['path']}` (no rlplat_build.json)")
    lines += [f"- finished {result['finished']}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ----------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: configs/grpo.yaml's "
                   "trainer.max_steps; --smoke: 2)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every E steps (default: steps // 10, >= 1)")
    p.add_argument("--eval-prompts", type=int, default=None,
                   help="held-out prompts per evaluation (default: configs/grpo.yaml's trainer.eval_max_prompts)")
    p.add_argument("--eval-n", type=int, default=16, help=f"samples per held-out prompt (>= {max(KS)})")
    p.add_argument("--seed", type=int, default=0, help="trainer.seed of every run")
    p.add_argument("--out", default=None, help="output directory (default: docs/replication; --smoke: a temp dir)")
    p.add_argument("--smoke", action="store_true", help="2 steps, eval every step on 8 prompts, tiny batch sizes")
    p.add_argument("--only", default=None, help=f"comma-separated runs: {', '.join(RUN_NAMES)} (dph_rl = both DPH-RL)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable)")
    p.add_argument("--reuse", action="store_true", help="keep runs in --out finished by the same command")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints/ and *.pt files")
    args = p.parse_args(argv)
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r}: expected key=value")
    if args.smoke:
        args.steps = args.steps or SMOKE["steps"]
        args.eval_every = args.eval_every or SMOKE["eval_every"]
        args.eval_prompts = args.eval_prompts or SMOKE["eval_prompts"]
        args.out = args.out or tempfile.mkdtemp(prefix="rlplat-replicate-smoke-")
    else:
        if args.steps is None or args.eval_prompts is None:
            from rlplat.config import load_config

            base = load_config(os.path.join(ROOT, "configs/grpo.yaml"), validate=False).trainer
            args.steps = args.steps or base.max_steps
            args.eval_prompts = args.eval_prompts or base.eval_max_prompts
        args.eval_every = args.eval_every or max(1, args.steps // 10)
        args.out = args.out or os.path.join(ROOT, "docs", "replication")
    if args.steps < 1 or args.eval_every < 1 or args.eval_prompts < 1:
        p.error("--steps, --eval-every and --eval-prompts must be >= 1")
    if args.eval_n < max(KS):
        p.error(f"--eval-n {args.eval_n}: pass@{max(KS)} needs at least {max(KS)} samples per prompt")
    args.out = os.path.abspath(args.out)
    return args


def analyze(args: argparse.Namespace, runs: List[RunSpec], records: Dict[str, Dict[str, Any]], command: str) -> Dict[str, Any]:
    from rlplat.rewards import resolve_judge

    labels = {r.name: r.label for r in runs}
    configs = {name: read_run_config(rec["run_dir"]) for name, rec in records.items()}
    spec = judge_spec(configs, args.set)
    judge = resolve_judge(spec)
    evals = {name: load_evals(rec["run_dir"]) for name, rec in records.items()}
    curves = {name: curve_from_evals(ev, judge) for name, ev in evals.items()}
    reference = "grpo" if "grpo" in records else runs[0].name
    agreement = check_initial_agreement({n: ev[0] for n, ev in evals.items()}, reference)
    initial = dict(curves[reference][0])
    claims = evaluate_claims(initial, curves)
    notes = []
    for name in DPH_RUNS:
        if name in records:
            last = last_metrics_row(records[name]["run_dir"])
            n_rehearsal = last.get("dph/rehearsal_prompts")
            train_size = configs[name]["data"]["builtin_train_size"] if str(configs[name]["data"]["train_path"]).startswith("builtin:") else None
            div = configs[name]["algorithm"]["divergences"][0]
            notes.append(f"{labels[name]}: divergence `{div['divergence']}`, coef {coef_text(div['coef'])}; pi_0 split with "
                         f"k = {configs[name]['algorithm']['dph_rl']['samples_per_prompt']}: {fmt(n_rehearsal, 0)} rehearsal "
                         f"prompts" + (f" of {train_size}" if train_size else "")
                         + f" (prepare {fmt(last.get('dph/prepare_seconds'), 1)} s)"
                         + (" — **no rehearsal data, so this run is plain RL without any divergence**" if not n_rehearsal else ""))
    if all(abs(p["win_rate"] - (0.5 + (p["pass@1"] - initial["pass@1"]) / 2)) < 1e-9
           for c in curves.values() for p in c if p.get("pass@1") is not None):
        notes.append("With this judge every win rate vs initial equals 0.5 + (pass@1 - initial pass@1) / 2 (a "
                     "correct answer beats a wrong one, ties are 1/2): claim 4 is the same test as Nash-MP's pass@1 rising.")
    first_cfg = configs[runs[0].name]
    model = {"policy": model_facts(first_cfg["model"]["path"])}
    if "kdrl" in configs:
        model["teacher"] = model_facts(configs["kdrl"]["roles"]["teacher"]["path"])
    paths = {c["model"]["path"] for c in configs.values()}
    if len(paths) > 1:
        notes.append(f"**the runs do not share one initial policy**: model.path {sorted(paths)}")
    result = {
        "args": {k: getattr(args, k) for k in ("steps", "eval_every", "eval_prompts", "eval_n", "seed", "smoke", "only",
                                                  "set", "out")},
        "command": command, "labels": labels, "judge": spec, "initial": initial, "initial_agreement": agreement,
        "runs": {name: {**records[name], "config": runs_by_name()[name].config, "curve": curves[name],
                        "final": final(curves[name])} for name in records},
        "claims": [{**asdict(v), "status": v.status} for v in claims],
        "notes": notes, "git": git_info(), "machine": machine_info(), "model": model,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return result


def coef_text(coef: Dict[str, Any]) -> str:
    if coef.get("kind") == "linear":
        return f"max({coef['start']} - {coef['slope']} * step, {coef['floor']})"
    return str(coef.get("value"))


def runs_by_name() -> Dict[str, RunSpec]:
    return {r.name: r for r in RUNS}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    runs = select_runs(args.only)
    command = shlex.join(["python", "benchmarks/replicate.py", *(sys.argv[1:] if argv is None else argv)])
    os.makedirs(args.out, exist_ok=True)
    print(f"[replicate] {len(runs)} run(s) of {args.steps} steps into {args.out}", flush=True)
    t0 = time.time()
    records = {}
    try:
        for run in runs:
            records[run.name] = execute(run, args)
    except RuntimeError as exc:
        print(f"[replicate] FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    result = analyze(args, runs, records, command)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    title = (f"rlplat replication: {args.steps} steps, {args.eval_prompts} held-out prompts x n={args.eval_n}"
             + (" (smoke)" if args.smoke else ""))
    plot({n: r["curve"] for n, r in result["runs"].items()}, result["labels"], result["initial"],
         os.path.join(args.out, "replication.png"), title)
    write_markdown(os.path.join(args.out, "results.md"), result)
    print(f"[replicate] done in {time.time() - t0:.0f} s; results in {args.out}/results.md", flush=True)
    for v in result["claims"]:
        print(f"[replicate] {v['claim']}: {v['status']} ({v['detail']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # rlplat without an editable install
    sys.exit(main())
