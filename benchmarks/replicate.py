"""The papers' claims tested at small scale: tasks of training runs from one initial policy, several
seeds each, claims decided by their difference and its standard error.

    python benchmarks/replicate.py [--tasks addition,...] [--only grpo,kdrl,...] [--seeds 0,1,2]
        [--steps N] [--eval-every E] [--eval-prompts P] [--out DIR] [--set key=value ...]
        [--eval-seed E] [--fresh] [--keep-checkpoints]
    python benchmarks/replicate.py --smoke [--tasks ...]   # one seed, 2 steps, tiny sizes, a temp dir

A task (``TASKS``: name -> ``Task``) holds training runs (``RunSpec``: a config file and overrides),
task-wide overrides (data, model, steps, evaluation size), the metrics to tabulate and plot, and the
claims tested (``FinalVsInitial``, ``FinalVsFinal``, ``StepsToReach``, ``Precondition``). Adding a task
is one ``TASKS`` entry. Every (task, run, seed) is ``python -m launch.train --config <config>
trainer.seed=<S> <task overrides> <run overrides> <--steps/--eval-* > <--set>`` in
``<out>/<task>/<run>/seed<S>/`` (its output in ``train.log``), one run at a time. A run directory with
a finished marker (``replicate_run.json``, written by the same command) and its evaluations is reused,
so an interrupted replication resumes where it stopped (``--fresh``: run everything again).

Metrics come from the runs' held-out evaluations ``eval/step_<s>.json``: a key of their ``metrics``
dict (``eval/pass@16``, ``eval/bonus/pass@1``) or a name in ``DERIVED_METRICS``, a function
``fn(eval_json, initial_eval_json) -> float`` (``win_rate``: against the initial policy's samples).
x = training steps done (updates; one Mirror-Prox iteration for Nash-MP): the evaluation logged at
step s comes after s + 1 of them; the initial policy (step -1) is x = 0.

Statistics (``benchmarks/stats.py``): per (run, x, metric) the mean and sample standard deviation
over seeds; per claim the difference in the claim's direction (positive = as claimed), its standard
error (sample std / sqrt(n) per side, in quadrature) and a verdict: "holds" beyond +2 standard
errors, "does not hold" below -2 (and at exactly 0 with no noise at all: the effect is absent), else
"inconclusive at this noise"; one seed: "inconclusive (one seed)".

Evaluation seeds: every run gets ``trainer.eval_seed=<--eval-seed>`` (default 0), so every
evaluation of every run and seed samples the same draws (``StepContext.eval_seed``; without it they
would follow ``trainer.seed``): ``trainer.seed`` changes only training. The initial policy is then
evaluated identically in every seed (the report checks it) and has no seed noise: claims against it
count the trained side's noise only, and preconditions none.

Writes per task ``<out>/<task>/results.md``, ``results.json`` and one ``claim<i>_*.png`` per claim,
and, over every task with results in ``--out``, ``<out>/claims.json`` and ``<out>/README.md``; a task's
hand-written ``<out>/<task>/conclusions.md`` is copied into both. After a
successful run its ``checkpoints/`` and ``*.pt`` files are deleted unless ``--keep-checkpoints``.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/*.py, also when loaded by path
from machine import machine_info  # noqa: E402
import stats  # noqa: E402
from stats import ROOT, git_commit, git_dirty, machine_text, mean_std  # noqa: E402

EVAL_SEED_NOTE = ("every evaluation of every run and seed samples the same draws (`trainer.eval_seed` fixed, the "
                  "same for all runs: `trainer.seed` changes only training), so the initial policy has no seed noise")

# --smoke: the smallest sizes that still run every path (as in tests/test_e2e.py); a Task may replace them.
SMOKE = {"steps": 2, "eval_every": 1, "eval_prompts": 8}
SMOKE_SIZES = (
    "data.prompts_per_step=4", "data.builtin_train_size=64", "algorithm.group_size=4",
    "trainer.micro_batch_tokens=256", "rollout.cpu_kv_cache_gb=0.05",
    "algorithm.dph_rl.samples_per_prompt=2",  # DPH-RL's pi_0 split: 64 prompts x 2 samples
)
Curve = List[Dict[str, Any]]  # one point per evaluation: {"step", "x", metric: value or None, ...}, x ascending
Curves = Dict[str, Dict[int, Curve]]  # run name -> seed -> curve


# ----------------------------------------------------------------------------- metrics
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


@functools.lru_cache(maxsize=None)
def nash_judge() -> Tuple[str, Callable]:
    """configs/nash_mp.yaml's ``algorithm.nash_mp.judge``: (its ``module:function``, the function)."""
    from rlplat.config import load_config
    from rlplat.rewards import resolve_judge

    spec = load_config(os.path.join(ROOT, "configs/nash_mp.yaml"), validate=False).algorithm.nash_mp.judge
    if not spec:
        raise RuntimeError("configs/nash_mp.yaml has no algorithm.nash_mp.judge: the win rate needs a rule-based judge")
    return spec, resolve_judge(spec)


def win_rate_vs_initial(eval_json: Dict[str, Any], initial_eval_json: Dict[str, Any]) -> float:
    """``win_rate`` of an evaluation's samples against the initial policy's under ``nash_judge``."""
    return win_rate(eval_json["records"], initial_eval_json["records"], nash_judge()[1])


@functools.lru_cache(maxsize=None)
def _resolve_metric_fn(spec: str) -> Callable:
    from rlplat.rewards import resolve_callable

    return resolve_callable(spec, "DERIVED_METRICS", ("eval_json", "initial_eval_json"))


@dataclass(frozen=True)
class DerivedMetric:
    """A metric computed from a whole evaluation: ``fn(eval_json, initial_eval_json) -> float``, both
    dicts as in ``eval/step_<s>.json`` (``initial_eval_json``: the same run's step -1). ``fn`` is a
    callable or ``"module:function"``, imported on first use (so it may live in rlplat and need
    packages the other tasks do not)."""

    label: str
    fn: Union[str, Callable[[Dict[str, Any], Dict[str, Any]], float]]
    note: str = ""  # how it is computed, for results.md

    def __call__(self, eval_json: Dict[str, Any], initial_eval_json: Dict[str, Any]) -> float:
        fn = _resolve_metric_fn(self.fn) if isinstance(self.fn, str) else self.fn
        return float(fn(eval_json, initial_eval_json))


STYLES_BETA = 0.1  # the styles task's algorithm.nash_mp.beta: the game whose exploitability is measured


def style_exploitability(eval_json: Dict[str, Any], initial_eval_json: Dict[str, Any]) -> float:
    from rlplat.tasks.styles import style_exploitability as exploitability

    return exploitability(eval_json, initial_eval_json, STYLES_BETA)


# Named derived metrics. Add one as DERIVED_METRICS["name"] = DerivedMetric(label, "module:function")
# and list "name" in a Task's metrics.
DERIVED_METRICS: Dict[str, DerivedMetric] = {
    "win_rate": DerivedMetric(
        "win rate vs initial", win_rate_vs_initial,
        "sample j of the policy vs sample j of the initial policy on the same prompt, judged by configs/nash_mp.yaml's "
        "`algorithm.nash_mp.judge`, averaged over all pairs (0.5 at x = 0 by construction)"),
    "exploitability": DerivedMetric(
        "style exploitability", style_exploitability,
        "e(pi) in the regularised style game (beta 0.1, pi_ref = the initial policy's styles) of the style distribution "
        "of the correct sampled answers, pooled over prompts (`rlplat.tasks.styles.style_exploitability`; "
        "docs/algorithms.md#a-cyclic-judge-the-styles-task); 0 only at the equilibrium"),
}


def metric_label(metric: str) -> str:
    """Readable name: a derived metric's label, else the key without ``eval/`` (``eval/bonus/pass@1``
    -> ``bonus pass@1``; ``eval/pass@1_greedy`` -> ``greedy pass@1``)."""
    if metric in DERIVED_METRICS:
        return DERIVED_METRICS[metric].label
    name = metric[len("eval/"):] if metric.startswith("eval/") else metric
    return name.replace("pass@1_greedy", "greedy pass@1").replace("/", " ")


def metric_value(eval_json: Dict[str, Any], initial_eval_json: Dict[str, Any], metric: str) -> Optional[float]:
    """``metric`` of one evaluation (None: the key is not in its metrics dict, or is null)."""
    if metric in DERIVED_METRICS:
        return DERIVED_METRICS[metric](eval_json, initial_eval_json)
    v = eval_json["metrics"].get(metric)
    return None if v is None else float(v)


# ----------------------------------------------------------------------------- claims
def claim_difference(a: Sequence[float], b: Union[Sequence[float], float], direction: int) -> Dict[str, Any]:
    """``stats.claim_difference``, except that with no noise at all (standard error 0: every seed
    gave the same values) a difference of exactly 0 "does not hold": the claimed effect is absent,
    not hidden by noise (a KDRL family pass@1 of 0 in every seed, as GRPO's)."""
    r = stats.claim_difference(a, b, direction)
    if r["n"] >= 2 and r["standard_error"] == 0 and r["difference"] == 0:
        r = {**r, "verdict": "does not hold"}
    return r


@dataclass(frozen=True)
class FinalOf:
    """A ``StepsToReach`` target: ``run``'s final value of the claim's metric, in the same seed."""

    run: str


@dataclass
class Outcome:
    """A tested claim. ``difference``: positive = as claimed (units of the metric; steps for
    ``StepsToReach``); ``standard_error`` None with one seed; ``values``: the per-seed numbers;
    ``line``: a level the claim's plot marks (threshold or target), with its label."""

    difference: Optional[float]
    standard_error: Optional[float]
    seeds: List[int]
    verdict: str
    detail: str
    values: Dict[str, Any] = field(default_factory=dict)
    line: Optional[Tuple[float, str]] = None


class _Missing(Exception):
    """A value a claim needs is not in the evaluations."""


class Claim:
    """A claim kind: ``runs()`` names the runs it needs, ``describe(labels)`` is its sentence (the
    ``text`` field when set), ``evaluate(curves, labels)`` computes it on the task's curves (on the
    seeds that every run it needs has). Subclasses are dataclasses with ``metric`` and ``text``
    fields and a ``_test``."""

    kind = "claim"
    metric: str
    text: str

    def runs(self) -> Tuple[str, ...]:
        raise NotImplementedError

    def plot_runs(self, task_runs: Sequence[str]) -> Tuple[str, ...]:
        return self.runs()

    def describe(self, labels: Dict[str, str]) -> str:
        return self.text or self._sentence(labels, metric_label(self.metric))

    def _sentence(self, labels: Dict[str, str], m: str) -> str:
        raise NotImplementedError

    def _test(self, curves: Curves, seeds: List[int], labels: Dict[str, str]) -> Outcome:
        raise NotImplementedError

    def evaluate(self, curves: Curves, labels: Dict[str, str]) -> Outcome:
        missing = [r for r in self.runs() if r not in curves]
        if missing:
            return Outcome(None, None, [], "not tested", f"run(s) {', '.join(missing)} not in this replication")
        seeds = common_seeds(curves, self.runs() or tuple(curves)[:1])
        if not seeds:
            return Outcome(None, None, [], "not tested", "no seed has every run this claim needs")
        try:
            return self._test(curves, seeds, labels)
        except _Missing as exc:
            return Outcome(None, None, seeds, "not tested", str(exc))


def _direction_word(direction: int) -> str:
    return "above" if direction > 0 else "below"


def _check_direction(claim: Claim) -> None:
    if claim.direction not in (1, -1):
        raise ValueError(f"{type(claim).__name__}: direction must be +1 or -1, got {claim.direction}")


@dataclass(frozen=True)
class FinalVsInitial(Claim):
    """``run``'s final ``metric`` is above (``direction`` +1) / below (-1) the initial policy's
    (the run's own x = 0 evaluation, same seed)."""

    run: str
    metric: str
    direction: int = 1
    text: str = ""
    kind = "final vs initial"

    def __post_init__(self) -> None:
        _check_direction(self)

    def runs(self) -> Tuple[str, ...]:
        return (self.run,)

    def _sentence(self, labels: Dict[str, str], m: str) -> str:
        return f"{labels[self.run]}'s final {m} is {_direction_word(self.direction)} the initial policy's"

    def _test(self, curves: Curves, seeds: List[int], labels: Dict[str, str]) -> Outcome:
        fin = [value_at(curves[self.run][s], self.metric, "final") for s in seeds]
        ini = [value_at(curves[self.run][s], self.metric, "initial") for s in seeds]
        r = claim_difference(fin, ini, self.direction)
        x = final_point(curves[self.run][seeds[0]])["x"]
        detail = f"{labels[self.run]} final {ms_text(fin)} after {x} steps vs initial {ms_text(ini)}"
        return Outcome(r["difference"], r["standard_error"], seeds, r["verdict"], detail,
                       {"final": fin, "initial": ini})


@dataclass(frozen=True)
class FinalVsFinal(Claim):
    """``run_a``'s final ``metric`` is above (``direction`` +1) / below (-1) ``run_b``'s."""

    run_a: str
    run_b: str
    metric: str
    direction: int = 1
    text: str = ""
    kind = "final vs final"

    def __post_init__(self) -> None:
        _check_direction(self)

    def runs(self) -> Tuple[str, ...]:
        return (self.run_a, self.run_b)

    def _sentence(self, labels: Dict[str, str], m: str) -> str:
        return f"{labels[self.run_a]}'s final {m} is {_direction_word(self.direction)} {labels[self.run_b]}'s"

    def _test(self, curves: Curves, seeds: List[int], labels: Dict[str, str]) -> Outcome:
        a = [value_at(curves[self.run_a][s], self.metric, "final") for s in seeds]
        b = [value_at(curves[self.run_b][s], self.metric, "final") for s in seeds]
        r = claim_difference(a, b, self.direction)
        detail = f"final {labels[self.run_a]} {ms_text(a)} vs {labels[self.run_b]} {ms_text(b)}"
        return Outcome(r["difference"], r["standard_error"], seeds, r["verdict"], detail,
                       {self.run_a: a, self.run_b: b})


@dataclass(frozen=True)
class StepsToReach(Claim):
    """``run_a`` reaches ``target`` in fewer steps than ``run_b``: steps = the first evaluated x at
    which ``metric >= target`` (the initial policy, x = 0, counts); a run that never reaches it
    counts as its last x + the evaluation spacing ("censored"). ``target``: a number or ``FinalOf(run)``
    (that run's final value in the same seed). Difference = steps(b) - steps(a), in steps."""

    run_a: str
    run_b: str
    metric: str
    target: Union[float, FinalOf]
    text: str = ""
    kind = "steps to reach"

    def runs(self) -> Tuple[str, ...]:
        extra = (self.target.run,) if isinstance(self.target, FinalOf) else ()
        return tuple(dict.fromkeys((self.run_a, self.run_b) + extra))

    def _target_text(self, labels: Dict[str, str], m: str) -> str:
        if isinstance(self.target, FinalOf):
            return f"{labels[self.target.run]}'s final {m}"
        return f"{m} {self.target:g}"

    def _sentence(self, labels: Dict[str, str], m: str) -> str:
        return f"{labels[self.run_a]} reaches {self._target_text(labels, m)} in fewer steps than {labels[self.run_b]}"

    def _test(self, curves: Curves, seeds: List[int], labels: Dict[str, str]) -> Outcome:
        targets = [value_at(curves[self.target.run][s], self.metric, "final") if isinstance(self.target, FinalOf)
                   else float(self.target) for s in seeds]
        reach = {run: [steps_to_reach(curves[run][s], self.metric, t) for s, t in zip(seeds, targets)]
                 for run in (self.run_a, self.run_b)}
        a, b = [x for x, _ in reach[self.run_a]], [x for x, _ in reach[self.run_b]]
        r = claim_difference(a, b, -1)

        def side(run: str) -> str:
            parts = [f"{x}" + (" (censored: never reached)" if c else "") for x, c in reach[run]]
            return f"{labels[run]} at x = {', '.join(parts)}"

        m = metric_label(self.metric)
        detail = (f"target {self._target_text(labels, m)} = {', '.join(f'{t:.4f}' for t in targets)} (per seed); "
                  f"{side(self.run_a)}; {side(self.run_b)}")
        return Outcome(r["difference"], r["standard_error"], seeds, r["verdict"], detail,
                       {"targets": targets, self.run_a: reach[self.run_a], self.run_b: reach[self.run_b]},
                       line=(sum(targets) / len(targets), "target" + (" (mean)" if len(targets) > 1 else "")))


@dataclass(frozen=True)
class Precondition(Claim):
    """A property of the initial policy alone: its ``metric`` (x = 0 of ``run``, default the task's
    first run) ``op`` ("<=" or ">=") ``threshold``. Difference = threshold - value ("<=") or value -
    threshold (">="). With the evaluation seed fixed (``trainer.eval_seed``, as ``train_command``
    sets it) it has no seed noise: every seed gives the same value and the standard error is 0."""

    metric: str
    op: str
    threshold: float
    run: Optional[str] = None
    text: str = ""
    kind = "precondition"

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"Precondition: op must be '<=' or '>=', got {self.op!r}")

    def runs(self) -> Tuple[str, ...]:
        return (self.run,) if self.run else ()

    def plot_runs(self, task_runs: Sequence[str]) -> Tuple[str, ...]:
        return tuple(task_runs)

    def _sentence(self, labels: Dict[str, str], m: str) -> str:
        return f"the initial policy's {m} is {self.op} {self.threshold:g}"

    def _test(self, curves: Curves, seeds: List[int], labels: Dict[str, str]) -> Outcome:
        run = self.run or next(iter(curves))
        vals = [value_at(curves[run][s], self.metric, "initial") for s in seeds]
        r = claim_difference(vals, float(self.threshold), -1 if self.op == "<=" else 1)
        same = " (the same in every seed)" if len(vals) > 1 and len(set(vals)) == 1 else ""
        detail = f"initial {ms_text(vals)}{same} ({labels[run]}'s x = 0 evaluation) vs threshold {self.threshold:g}"
        return Outcome(r["difference"], r["standard_error"], seeds, r["verdict"], detail, {"initial": vals},
                       line=(float(self.threshold), f"threshold {self.threshold:g}"))


# ----------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class RunSpec:
    name: str  # directory name and --only key
    label: str  # in tables, plots and claims.json
    config: str  # relative to the repository root
    overrides: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """A replication task: ``runs`` from one initial policy, ``overrides`` common to all of them
    (data, model, steps, evaluation: ``trainer.eval_n``, ``trainer.eval_ks``, ...), ``metrics``
    tabulated and plotted (eval metric keys or ``DERIVED_METRICS`` names; every claim's metric must
    be one), ``claims`` tested, and ``smoke_overrides`` that replace the sizes under ``--smoke``."""

    label: str
    description: str
    runs: Tuple[RunSpec, ...]
    metrics: Tuple[str, ...]
    claims: Tuple[Claim, ...]
    overrides: Tuple[str, ...] = ()
    smoke_overrides: Tuple[str, ...] = SMOKE_SIZES

    def labels(self) -> Dict[str, str]:
        return {r.name: r.label for r in self.runs}


ADDITION = Task(
    label="The easy case: GRPO on 2-digit addition",
    description=(
        "The built-in task: 2-digit addition (`38+45=` -> `83`) rewarded by an exact checker, from the built-in "
        "tiny policy warm-started to drop the carries at random (README, docs/built_in_task.md). Every error is "
        "one RL can find and fix, and the initial pass@16 is already 0.94: pass@1 should rise and pass@k has "
        "nothing to lose. The other algorithms' claims are tested on the tasks built for them; their one-seed "
        "runs on this task are in addition_one_seed/."),
    runs=(RunSpec("grpo", "GRPO", "configs/grpo.yaml"),),
    overrides=("trainer.max_steps=30", "trainer.eval_every=5", "trainer.eval_max_prompts=100", "trainer.eval_n=16",
               "trainer.eval_ks=[1,8,16]"),
    metrics=("eval/pass@1", "eval/pass@8", "eval/pass@16", "eval/pass@1_greedy"),
    claims=(
        FinalVsInitial("grpo", "eval/pass@1", +1),
        FinalVsInitial("grpo", "eval/pass@16", -1),
    ),
)

DIVERSITY = Task(
    label="Diversity collapse: GRPO vs DPH-RL (forward KL, JS) on additions with a hidden convention",
    description=(
        "`builtin:carry_convention`: additions that carry, whose gold answer is the sum for 75% of the problems and "
        "the sum without carries for the other 25%, chosen by a hash of the prompt that no model can learn. The "
        "built-in policy writes either (its careless demonstrator drops the carries about half the time), so it solves "
        "most problems within 64 samples, but the best pass@1 comes from always carrying, which loses the "
        "dropped-carry problems at every k. The precondition is GRPO's: pass@1 rises while pass@64 falls below the "
        "initial policy's. Then DPH-RL (its config: forward KL or JS to the initial policy's samples on the prompts "
        "it solves in all 8 samples) is measured on the same task. `eval/dropped/*`: the dropped-carry problems."),
    runs=(
        RunSpec("grpo", "GRPO", "configs/grpo.yaml"),
        RunSpec("dph_rl_forward_kl", "DPH-RL (forward KL)", "configs/dph_rl.yaml",
                ("algorithm.divergences.0.divergence=forward_kl",)),
        RunSpec("dph_rl_js", "DPH-RL (JS)", "configs/dph_rl.yaml", ("algorithm.divergences.0.divergence=js",)),
    ),
    overrides=("data.train_path=builtin:carry_convention", "trainer.eval_ks=[1,8,32,64]", "trainer.eval_n=64",
               "trainer.eval_group_by=convention", "trainer.eval_max_prompts=100", "trainer.max_steps=40",
               "trainer.eval_every=10"),
    metrics=("eval/pass@1", "eval/pass@32", "eval/pass@64", "eval/dropped/pass@1", "eval/dropped/pass@64"),
    claims=(
        FinalVsInitial("grpo", "eval/pass@1", +1),
        FinalVsInitial("grpo", "eval/pass@32", -1),
        FinalVsInitial("grpo", "eval/pass@64", -1),
        FinalVsFinal("dph_rl_forward_kl", "grpo", "eval/pass@64", +1),
        FinalVsFinal("dph_rl_js", "grpo", "eval/pass@64", +1),
        FinalVsFinal("dph_rl_forward_kl", "grpo", "eval/dropped/pass@64", +1),
        FinalVsFinal("dph_rl_js", "grpo", "eval/dropped/pass@64", +1),
    ),
)

TEACHER_ONLY = Task(
    label="Exploration the student cannot do alone: GRPO vs KDRL with a teacher-only problem family",
    description=(
        "`builtin:arithmetic_bonus`: additions `a+b=` mixed half and half with `a#b=` problems whose answer is "
        "a + b + 100. The teacher `builtin:tiny-teacher-bonus` was shown `#` in its warm start (greedy accuracy 0.77 "
        "on held-out `#` problems, 0.95 on additions: its rlplat_build.json); the student `builtin:tiny-policy` never "
        "was: it answers `#` problems with sums, so its pass@16 there is 0 and GRPO's reward on them is always 0. "
        "KDRL (its config: reverse KL (k2) to the teacher on the incorrect responses, coefficient 5e-3 annealed to "
        "1e-3) gets a teacher signal on them. `eval/bonus/*`: the `#` family; `eval/plus/*`: the additions."),
    runs=(
        RunSpec("grpo", "GRPO", "configs/grpo.yaml"),
        RunSpec("kdrl", "KDRL", "configs/kdrl.yaml", ("roles.teacher.path=builtin:tiny-teacher-bonus",)),
    ),
    overrides=("data.train_path=builtin:arithmetic_bonus", "trainer.eval_ks=[1,8,16]", "trainer.eval_n=16",
               "trainer.eval_group_by=family", "trainer.eval_max_prompts=100", "trainer.max_steps=40",
               "trainer.eval_every=10"),
    metrics=("eval/pass@1", "eval/bonus/pass@1", "eval/bonus/pass@16", "eval/plus/pass@1"),
    claims=(
        Precondition("eval/bonus/pass@16", "<=", 0.05, text="the student's pass@16 on the teacher-only family is about 0"),
        FinalVsFinal("kdrl", "grpo", "eval/bonus/pass@1", +1),
        StepsToReach("kdrl", "grpo", "eval/bonus/pass@1", 0.1),
        FinalVsFinal("kdrl", "grpo", "eval/pass@1", +1),
    ),
)

STYLES = Task(
    label="Non-transitive preferences: Nash-MP vs one-step mirror descent on a cyclic style judge",
    description=(
        "`builtin:tiny-policy-styled` writes each answer in one of three styles that the checker reads as equal "
        "(`47`, `47.0`, `47.00`; 0.6 / 0.3 / 0.1, independent of the problem). The judge `style_rps`: a correct "
        "answer beats an incorrect one, and two correct ones play rock-paper-scissors over their styles. The "
        "regularised equilibrium of the style game (beta 0.1, pi_ref = 0.6 / 0.3 / 0.1) is mixed, 0.296 / 0.444 / "
        "0.260; in the tabular game Mirror Prox reaches it (exploitability 1e-5 after 10 iterations at eta 0.5) "
        "while one-step mirror descent cycles (0.15). Nash-MP (`configs/nash_mp.yaml`) and its one-step baseline "
        "(`configs/nash_omd.yaml`: self-play against the current policy, the same step size) run with the same "
        "overrides; x = outer iterations, evaluated after every one."),
    runs=(
        RunSpec("nash_mp", "Nash-MP", "configs/nash_mp.yaml"),
        RunSpec("nash_omd", "one-step mirror descent", "configs/nash_omd.yaml"),
    ),
    overrides=("model.path=builtin:tiny-policy-styled", "algorithm.nash_mp.judge=style_rps",
               f"algorithm.nash_mp.beta={STYLES_BETA}", "algorithm.nash_mp.eta=0.5", "algorithm.nash_mp.inner_steps=8",
               "trainer.lr=1e-4", "algorithm.eps_low=0.95", "algorithm.eps_high=20", "data.prompts_per_step=16",
               "algorithm.group_size=8", "trainer.num_ranks=1", "trainer.max_steps=10", "trainer.eval_every=1",
               "trainer.eval_max_prompts=64", "trainer.eval_n=8", "trainer.eval_ks=[1,8]"),
    metrics=("exploitability", "eval/pass@1"),
    claims=(
        Precondition("exploitability", ">=", 0.1, text="the initial policy's style exploitability is well above 0 "
                     "(>= 0.1)"),
        FinalVsInitial("nash_mp", "exploitability", -1),
        FinalVsFinal("nash_omd", "nash_mp", "exploitability", +1,
                     text="Nash-MP's last iterate is less exploitable than the one-step baseline's"),
    ),
)

# Distillation (issue 15): the same student and teacher, the divergence term swapped. The distill
# runs replace configs/distill.yaml's term (GKD's full_jsd) by one term of each divergence at
# coefficient 1 on every response position; sinkhorn keeps configs/sinkd.yaml (its params, and
# micro-batches of 512 tokens: the batch-wise cost is n x n x k). k2 is the sampled-token estimate,
# so its teacher sends no top-k. KDRL runs keep their configs' annealed coefficient on the incorrect
# responses (configs/kdrl.yaml: k2; configs/kdrl_full.yaml: the full terms).
DISTILL_DIVERGENCES = ("k2", "full_reverse_kl", "full_forward_kl", "full_jsd", "sinkhorn")
SINKHORN_MICRO_BATCH = "trainer.micro_batch_tokens=512"


def distill_run(divergence: str) -> RunSpec:
    """On-policy distillation (algorithm ``distill``) with one ``divergence`` term to the teacher."""
    label = f"distill ({divergence})"
    if divergence == "sinkhorn":
        return RunSpec("distill_sinkhorn", label, "configs/sinkd.yaml")
    term = (f"algorithm.divergences=[{{name: distill, divergence: {divergence}, anchor: teacher, "
            "coef: {kind: constant, value: 1.0}, mask: all}]")
    top_k = ("roles.teacher.top_k_logits=0",) if divergence == "k2" else ()
    return RunSpec(f"distill_{divergence}", label, "configs/distill.yaml", (term, *top_k))


def kdrl_run(divergence: str) -> RunSpec:
    """KDRL (GRPO + the teacher term on incorrect responses) with ``divergence`` as that term."""
    label = f"KDRL ({divergence})"
    if divergence == "k2":
        return RunSpec("kdrl_k2", label, "configs/kdrl.yaml")
    extra = (SINKHORN_MICRO_BATCH,) if divergence == "sinkhorn" else ()
    return RunSpec(f"kdrl_{divergence}", label, "configs/kdrl_full.yaml",
                   (f"algorithm.divergences.0.divergence={divergence}", *extra))


DISTILL_SIZES = ("trainer.max_steps=30", "trainer.eval_every=10", "trainer.eval_max_prompts=100", "trainer.eval_n=16",
                 "trainer.eval_ks=[1,8,16]")
# The low-overlap setting: the `#` family only the teacher knows, evaluated per family.
LOW_OVERLAP = ("data.train_path=builtin:arithmetic_bonus", "roles.teacher.path=builtin:tiny-teacher-bonus",
               "trainer.eval_group_by=family")
LOW_OVERLAP_METRICS = ("eval/pass@1", "eval/bonus/pass@1", "eval/bonus/pass@16", "eval/plus/pass@1")

DISTILL_OVERLAP = Task(
    label="Distillation where teacher and student overlap: five divergences, one student and teacher",
    description=(
        "The built-in task (2-digit addition) distilled on-policy (algorithm `distill`: no reward term) from "
        "`builtin:tiny-teacher` (sampled pass@1 0.85, greedy 0.93 on the same 100 held-out problems: `launch.evaluate`, "
        "n = 16, seed 0) into `builtin:tiny-policy` (0.51): the "
        "student already writes the teacher's answers half the time, so their distributions overlap. One term per "
        "run at coefficient 1 on every response position: the sampled-token reverse KL `k2`, the full reverse and "
        "forward KL and the JSD (beta 0.5) on the teacher's top-32 + tail, and SinKD's batch-wise Sinkhorn distance "
        "(`configs/sinkd.yaml`: epsilon 0.1, 20 iterations, temperature 2). The student's learning rate, 1e-4, is "
        "the configs'."),
    runs=tuple(distill_run(d) for d in DISTILL_DIVERGENCES),
    overrides=DISTILL_SIZES,
    metrics=("eval/pass@1", "eval/pass@16", "eval/pass@1_greedy"),
    claims=(
        *(FinalVsInitial(f"distill_{d}", "eval/pass@1", +1) for d in DISTILL_DIVERGENCES),
        *(FinalVsFinal(f"distill_{d}", "distill_k2", "eval/pass@1", +1) for d in DISTILL_DIVERGENCES[1:]),
        *(FinalVsFinal("distill_sinkhorn", f"distill_{d}", "eval/pass@1", +1) for d in DISTILL_DIVERGENCES[1:-1]),
    ),
)

DISTILL_LOW_OVERLAP = Task(
    label="Distillation where they overlap little: a problem family only the teacher knows",
    description=(
        "`builtin:arithmetic_bonus` (additions and `a#b` = a + b + 100, half and half) from `builtin:tiny-teacher-bonus` "
        "(sampled pass@1 0.66 on the held-out `#` problems, 0.87 on the additions: `launch.evaluate --group-by family`, "
        "the same 100 problems, n = 16, seed 0) into `builtin:tiny-policy`, whose pass@16 "
        "on `#` is 0: on those prompts the student's samples and the teacher's barely share a token, where SinKD "
        "claims its advantage over the KLs. Distillation with each of the five divergences (as in "
        "distillation_overlap) and KDRL with each (its configs' coefficient, 5e-3 annealed to 1e-3, on incorrect "
        "responses; sinkhorn with 512-token micro-batches). `eval/bonus/*`: the `#` family; `eval/plus/*`: the "
        "additions, which the student shares with the teacher."),
    runs=(*(distill_run(d) for d in DISTILL_DIVERGENCES), *(kdrl_run(d) for d in DISTILL_DIVERGENCES)),
    overrides=(*LOW_OVERLAP, *DISTILL_SIZES),
    metrics=LOW_OVERLAP_METRICS,
    claims=(
        *(FinalVsInitial(f"distill_{d}", "eval/bonus/pass@1", +1) for d in DISTILL_DIVERGENCES),
        *(FinalVsFinal("distill_sinkhorn", f"distill_{d}", "eval/bonus/pass@1", +1) for d in DISTILL_DIVERGENCES[:-1]),
        *(FinalVsFinal("distill_sinkhorn", f"distill_{d}", "eval/plus/pass@1", +1) for d in DISTILL_DIVERGENCES[:-1]),
        *(FinalVsFinal(f"kdrl_{d}", "kdrl_k2", "eval/bonus/pass@1", +1) for d in DISTILL_DIVERGENCES[1:]),
    ),
)

DISTILL_LONG = ("full_reverse_kl", "full_forward_kl", "sinkhorn")

DISTILL_LOW_OVERLAP_LONG = Task(
    label="Distillation where they overlap little, at five times the learning rate and twice the steps",
    description=(
        "distillation_low_overlap's distillation runs for the full reverse KL, the full forward KL and SinKD at "
        "lr 5e-4 (the teacher's own warm-start rate) for 60 steps, evaluated every 20: does a larger budget "
        "let a term teach the `#` family, and at what cost to the additions? A one-seed exploration before "
        "this task saw the forward KL start on `#` (pass@16 0.15) while losing most additions, and SinKD "
        "lose everything."),
    runs=tuple(distill_run(d) for d in DISTILL_LONG),
    overrides=(*LOW_OVERLAP, "trainer.lr=5e-4", "trainer.max_steps=60", "trainer.eval_every=20",
               "trainer.eval_max_prompts=100", "trainer.eval_n=16", "trainer.eval_ks=[1,8,16]"),
    metrics=LOW_OVERLAP_METRICS,
    claims=(
        *(FinalVsInitial(f"distill_{d}", "eval/bonus/pass@16", +1) for d in DISTILL_LONG),
        *(FinalVsFinal("distill_sinkhorn", f"distill_{d}", "eval/bonus/pass@16", +1) for d in DISTILL_LONG[:-1]),
        *(FinalVsInitial(f"distill_{d}", "eval/plus/pass@1", -1,
                         text=f"distill ({d}) loses the additions: its final plus pass@1 is below the initial policy's")
          for d in DISTILL_LONG),
    ),
)

TASKS: Dict[str, Task] = {"addition": ADDITION, "diversity": DIVERSITY, "teacher_only": TEACHER_ONLY, "styles": STYLES,
                          "distillation_overlap": DISTILL_OVERLAP, "distillation_low_overlap": DISTILL_LOW_OVERLAP,
                          "distillation_low_overlap_long": DISTILL_LOW_OVERLAP_LONG}


def check_task(name: str, task: Task) -> None:
    """``ValueError`` naming what is wrong: a claim on a run or metric the task does not have,
    duplicate run names, a bad direction or op."""
    names = [r.name for r in task.runs]
    if len(set(names)) != len(names):
        raise ValueError(f"task {name}: duplicate run names {names}")
    for claim in task.claims:
        unknown = [r for r in claim.runs() if r not in names]
        if unknown:
            raise ValueError(f"task {name}: claim {claim} names runs {unknown} not in the task ({names})")
        if claim.metric not in task.metrics:
            raise ValueError(f"task {name}: claim {claim} is on {claim.metric!r}, not in the task's metrics "
                             f"{task.metrics}")


for _name, _task in TASKS.items():
    check_task(_name, _task)


# ----------------------------------------------------------------------------- curves
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


def curve_from_evals(evals: Sequence[Dict[str, Any]], metrics: Sequence[str]) -> Curve:
    """One point per evaluation: ``step``, ``x`` = step + 1 (updates done) and each metric."""
    if not evals or evals[0]["step"] != -1:
        raise ValueError("no step -1 evaluation (the initial policy; trainer.eval_before_train=true)")
    return [{"step": e["step"], "x": e["step"] + 1, **{m: metric_value(e, evals[0], m) for m in metrics}}
            for e in evals]


def final_point(curve: Curve) -> Dict[str, Any]:
    return max(curve, key=lambda p: p["x"])


def value_at(curve: Curve, metric: str, which: str) -> float:
    """``metric`` at the ``"initial"`` (x = 0) or ``"final"`` point; ``_Missing`` if absent."""
    point = curve[0] if which == "initial" else final_point(curve)
    if which == "initial" and point["x"] != 0:
        raise _Missing("no initial-policy (x = 0) evaluation")
    v = point.get(metric)
    if v is None:
        raise _Missing(f"{metric} is not in the evaluation at x = {point['x']}")
    return v


def first_reaching(curve: Curve, metric: str, target: float) -> Optional[int]:
    """Smallest x at which ``curve``'s ``metric`` >= ``target`` (None: never)."""
    hits = [p["x"] for p in curve if p.get(metric) is not None and p[metric] >= target]
    return min(hits) if hits else None


def eval_spacing(curve: Curve) -> int:
    """Steps between evaluations: the x of the first evaluation after the initial policy
    (``trainer.eval_every`` when the run is longer)."""
    xs = sorted(p["x"] for p in curve)
    return xs[1] - xs[0] if len(xs) > 1 else 1


def steps_to_reach(curve: Curve, metric: str, target: float) -> Tuple[int, bool]:
    """(steps, censored): ``first_reaching``, or (last x + ``eval_spacing``, True) if never."""
    x = first_reaching(curve, metric, target)
    if x is None:
        return final_point(curve)["x"] + eval_spacing(curve), True
    return x, False


def common_seeds(curves: Curves, runs: Sequence[str]) -> List[int]:
    """Seeds that every one of ``runs`` has, ascending."""
    sets = [set(curves[r]) for r in runs if r in curves]
    return sorted(set.intersection(*sets)) if sets else []


def curve_stats(per_seed: Dict[int, Curve], metric: str) -> List[Dict[str, Any]]:
    """Per x: ``mean``, ``std`` (sample, 0 for one seed), ``n`` and ``values`` (by seed) of ``metric``
    over the seeds that have it."""
    xs = sorted({p["x"] for curve in per_seed.values() for p in curve})
    out = []
    for x in xs:
        values = {s: p[metric] for s, curve in per_seed.items() for p in curve
                  if p["x"] == x and p.get(metric) is not None}
        s = mean_std(list(values.values())) if values else {"mean": None, "std": None, "n": 0}
        out.append({"x": x, "mean": s["mean"], "std": s["std"], "n": s["n"], "values": values})
    return out


def check_initial_agreement(initials: Dict[str, Dict[str, Any]], reference: str, keys: Sequence[str]) -> Dict[str, Any]:
    """Compare every step -1 evaluation with ``reference``'s: same ``keys`` of the metrics, same
    samples? ``initials``: name (run and seed) -> its ``step_-1.json``."""
    ref = initials[reference]
    ref_samples = {r["index"]: r.get("samples") for r in ref["records"]}
    mismatches = []
    for name, ev in initials.items():
        if name == reference:
            continue
        for key in keys:
            a, b = ref["metrics"].get(key), ev["metrics"].get(key)
            if a != b:
                mismatches.append({"run": name, "what": key, "reference": a, "value": b})
        if {r["index"]: r.get("samples") for r in ev["records"]} != ref_samples:
            mismatches.append({"run": name, "what": "samples", "reference": "reference", "value": "differ"})
    return {"reference": reference, "runs": sorted(initials), "agree": not mismatches, "mismatches": mismatches}


# ----------------------------------------------------------------------------- running
def train_command(task: Task, run: RunSpec, seed: int, run_dir: str, args: argparse.Namespace) -> List[str]:
    """The run's command line: its seed and the fixed evaluation seed, the task overrides, then (``--smoke``) the task's smoke sizes, the run's
    own overrides, the CLI's steps / evaluation sizes and finally ``--set`` (later keys win)."""
    cli = [f"trainer.max_steps={args.steps}"] if args.steps else []
    cli += [f"trainer.eval_every={args.eval_every}"] if args.eval_every else []
    cli += [f"trainer.eval_max_prompts={args.eval_prompts}"] if args.eval_prompts else []
    return [sys.executable, "-m", "launch.train", "--config", run.config, f"trainer.output_dir={run_dir}",
            "trainer.eval_before_train=true", f"trainer.seed={seed}", f"trainer.eval_seed={args.eval_seed}",
            *task.overrides,
            *(task.smoke_overrides if args.smoke else ()), *run.overrides, *cli, *args.set]


def log_tail(path: str, lines: int = 60) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def finished_record(run_dir: str, cmd: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The marker of a finished run in ``run_dir`` made by ``cmd`` (without the interpreter) whose
    evaluation files all exist, else None."""
    marker = os.path.join(run_dir, "replicate_run.json")
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        done = json.load(f)
    if done.get("command") != list(cmd):
        print(f"[replicate] {run_dir} was run with another command: running again", flush=True)
        return None
    files = done.get("eval_files")
    if not files or not all(os.path.isfile(os.path.join(run_dir, "eval", n)) for n in files):
        return None
    return done


def delete_checkpoints(run_dir: str) -> None:
    """The run's ``checkpoints/`` and ``*.pt`` files (DeepSpeed state, DPH-RL store): the
    evaluations are all the analysis needs."""
    shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    for name in os.listdir(run_dir):
        if name.endswith(".pt"):
            os.remove(os.path.join(run_dir, name))


def execute(task_name: str, task: Task, run: RunSpec, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Run one (task, run, seed) training job, or reuse its finished directory; returns its record
    (``command``, ``wall_seconds``, ``run_dir``, ``eval_files``, ``reused``)."""
    run_dir = os.path.join(args.out, task_name, run.name, f"seed{seed}")
    cmd = train_command(task, run, seed, run_dir, args)
    tag = f"[replicate] {task_name}/{run.name}/seed{seed}"
    done = None if args.fresh else finished_record(run_dir, cmd[1:])
    if done is not None:
        print(f"{tag}: reusing the finished run in {run_dir}", flush=True)
        return {**done, "reused": True}
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # metrics.jsonl appends: a stale run would mix into this one
    os.makedirs(run_dir)
    log = os.path.join(run_dir, "train.log")
    print(f"{tag}: {shlex.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"{tag} failed (exit {rc}) after {seconds:.0f} s; log {log}; its tail:\n{log_tail(log)}")
    if not os.path.isfile(os.path.join(run_dir, "eval", "step_-1.json")):
        raise RuntimeError(f"{tag} wrote no eval/step_-1.json (initial policy); log {log}:\n{log_tail(log)}")
    if not args.keep_checkpoints:
        delete_checkpoints(run_dir)
    record = {"task": task_name, "run": run.name, "seed": seed, "command": cmd[1:], "wall_seconds": seconds,
              "run_dir": run_dir, "eval_files": sorted(os.listdir(os.path.join(run_dir, "eval")))}
    with open(os.path.join(run_dir, "replicate_run.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"{tag}: done in {seconds:.0f} s", flush=True)
    return {**record, "reused": False}


# ----------------------------------------------------------------------------- facts for the report
def read_run_config(run_dir: str) -> Dict[str, Any]:
    import yaml

    with open(os.path.join(run_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def last_metrics_row(run_dir: str) -> Dict[str, Any]:
    from launch.metrics import read_metrics

    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    return rows[-1] if rows else {}


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


def coef_text(coef: Dict[str, Any]) -> str:
    if coef.get("kind") == "linear":
        return f"max({coef['start']} - {coef['slope']} * step, {coef['floor']})"
    return str(coef.get("value"))


SETTINGS = ("max_steps", "eval_every", "eval_max_prompts", "eval_n", "eval_ks")


def run_settings(configs: Dict[str, Dict[int, Dict[str, Any]]]) -> Tuple[Dict[str, Any], List[str]]:
    """The evaluation settings and initial policy of the task's runs (the first run's) and a note per
    run whose settings differ from them."""
    first = next(iter(next(iter(configs.values())).values()))
    settings = {k: first["trainer"][k] for k in SETTINGS}
    settings["model"] = first["model"]["path"]
    notes = []
    for run, per_seed in configs.items():
        for seed, cfg in per_seed.items():
            mine = {**{k: cfg["trainer"][k] for k in SETTINGS}, "model": cfg["model"]["path"]}
            diff = {k: v for k, v in mine.items() if v != settings[k]}
            if diff:
                notes.append(f"**{run} seed {seed} differs from the other runs**: {diff} (vs {settings})")
    return settings, notes


def run_notes(task: Task, curves: Curves, records: Dict[str, Dict[int, Dict[str, Any]]],
              configs: Dict[str, Dict[int, Dict[str, Any]]]) -> List[str]:
    """Facts a reader needs to trust the comparison: DPH-RL's rehearsal split per seed, and when the
    win rate is only a rescaled pass@1."""
    labels, notes = task.labels(), []
    for run, per_seed in records.items():
        rows = {s: last_metrics_row(rec["run_dir"]) for s, rec in per_seed.items()}
        if not any("dph/rehearsal_prompts" in r for r in rows.values()):
            continue
        cfg = next(iter(configs[run].values()))
        div = cfg["algorithm"]["divergences"][0]
        counts = ", ".join(f"seed {s}: {fmt(r.get('dph/rehearsal_prompts'), 0)}" for s, r in rows.items())
        empty = not all(r.get("dph/rehearsal_prompts") for r in rows.values())
        notes.append(f"{labels[run]}: divergence `{div['divergence']}`, coef {coef_text(div['coef'])}; pi_0 split with "
                     f"k = {cfg['algorithm']['dph_rl']['samples_per_prompt']}: rehearsal prompts {counts}"
                     + (" — **a seed without rehearsal data is plain RL without any divergence**" if empty else ""))
    if {"win_rate", "eval/pass@1"} <= set(task.metrics) and all(
            p["win_rate"] is not None and p["eval/pass@1"] is not None
            and abs(p["win_rate"] - (0.5 + (p["eval/pass@1"] - c[0]["eval/pass@1"]) / 2)) < 1e-9
            for per in curves.values() for c in per.values() for p in c):
        notes.append("With this judge every win rate vs initial equals 0.5 + (pass@1 - initial pass@1) / 2 (a correct "
                     "answer beats a wrong one, ties are 1/2): a win-rate claim is the same test as pass@1 rising.")
    return notes


# ----------------------------------------------------------------------------- analysis
def claim_file(i: int, claim: Claim) -> str:
    """``claim<i>_<runs>_<metric>.png`` (i from 1)."""
    metric = claim.metric[len("eval/"):] if claim.metric.startswith("eval/") else claim.metric
    slug = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(claim.runs() + (claim.kind, metric))).strip("_")
    return f"claim{i}_{slug}.png"


def evaluate_claims(task_name: str, task: Task, curves: Curves) -> List[Dict[str, Any]]:
    """Every claim of the task on its curves: the claims.json entries (plus metric, kind, detail,
    per-seed values, plot file and line)."""
    labels = task.labels()
    out = []
    for i, claim in enumerate(task.claims, 1):
        o = claim.evaluate(curves, labels)
        out.append({"task": task_name, "claim": claim.describe(labels),
                    "algorithms": [labels[r] for r in claim.runs()] or ["initial policy"],
                    "difference": o.difference, "standard_error": o.standard_error, "seeds": o.seeds,
                    "verdict": o.verdict, "kind": claim.kind, "metric": claim.metric, "detail": o.detail,
                    "values": o.values, "line": o.line, "plot_runs": list(claim.plot_runs(list(curves))),
                    "plot": claim_file(i, claim)})
    return out


def analyze_task(task_name: str, task: Task, records: Dict[str, Dict[int, Dict[str, Any]]], args: argparse.Namespace,
                 command: str) -> Dict[str, Any]:
    """Everything results.md / results.json / the plots show, from the runs' directories.
    ``records``: run name -> seed -> ``execute``'s record."""
    evals = {run: {s: load_evals(rec["run_dir"]) for s, rec in per.items()} for run, per in records.items()}
    curves = {run: {s: curve_from_evals(ev, task.metrics) for s, ev in per.items()} for run, per in evals.items()}
    configs = {run: {s: read_run_config(rec["run_dir"]) for s, rec in per.items()} for run, per in records.items()}
    reference = next(iter(records))
    specs = {r.name: r for r in task.runs}
    plain = [m for m in task.metrics if m not in DERIVED_METRICS]
    first = f"{reference} seed {min(evals[reference])}"
    agreement = check_initial_agreement({f"{r} seed {s}": evals[r][s][0] for r in evals for s in sorted(evals[r])},
                                        first, plain)
    initial = {m: curve_stats({s: c[:1] for s, c in curves[reference].items()}, m)[0] for m in task.metrics}
    settings, notes = run_settings(configs)
    model = {"policy": model_facts(settings["model"])}
    teachers = {c["roles"]["teacher"]["path"] for per in configs.values() for c in per.values()} - {None}
    if teachers:
        model["teacher"] = model_facts(sorted(teachers)[0])
    return {
        "task": task_name, "label": task.label, "description": task.description, "command": command,
        "smoke": args.smoke, "seeds": sorted({s for per in records.values() for s in per}),
        "labels": {r: task.labels()[r] for r in records}, "metrics": list(task.metrics),
        "metric_labels": {m: metric_label(m) for m in task.metrics},
        "derived_metrics": {m: {"label": DERIVED_METRICS[m].label, "note": DERIVED_METRICS[m].note}
                            for m in task.metrics if m in DERIVED_METRICS},
        "judge": nash_judge()[0] if "win_rate" in task.metrics else None,
        "settings": settings, "initial": initial, "initial_reference": reference, "initial_agreement": agreement,
        "curves": {run: {m: curve_stats(per, m) for m in task.metrics} for run, per in curves.items()},
        "runs": {run: {"config": specs[run].config,
                       "seeds": {s: {k: rec[k] for k in ("command", "wall_seconds", "run_dir", "reused")}
                                 for s, rec in per.items()}} for run, per in records.items()},
        "claims": evaluate_claims(task_name, task, curves),
        "notes": notes + run_notes(task, curves, records, configs),
        "git": {"commit": git_commit(), "dirty": git_dirty()}, "machine": machine_info(), "model": model,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ----------------------------------------------------------------------------- outputs
def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def ms_text(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` of per-seed values (just the value for one seed)."""
    s = mean_std(values)
    return f"{s['mean']:.{digits}f}" if s["n"] == 1 else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def stat_text(point: Optional[Dict[str, Any]]) -> str:
    """A ``curve_stats`` point as ``mean ± std`` (``—``: no value)."""
    if point is None or point["mean"] is None:
        return "—"
    return f"{point['mean']:.3f}" + (f" ± {point['std']:.3f}" if point["n"] > 1 else "")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def signed(x: Optional[float], digits: int = 4) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def claims_table(claims: Sequence[Dict[str, Any]], with_task: bool = False) -> str:
    header = (["task"] if with_task else []) + ["#", "claim", "algorithms", "difference", "standard error", "seeds",
                                                "verdict"]
    rows = [([c["task"]] if with_task else []) + [
        i, c["claim"], ", ".join(c["algorithms"]), signed(c["difference"]),
        "—" if c["standard_error"] is None else f"{c['standard_error']:.4f}", len(c["seeds"]), f"**{c['verdict']}**"]
        for i, c in enumerate(claims, 1)]
    return md_table(header, rows, ("ll" if with_task else "l") + "llrrrl")


def plot_claim(path: str, claim: Dict[str, Any], result: Dict[str, Any]) -> None:
    """The claim's metric over x for the runs it compares: mean over seeds with a ±1 std band; the
    initial policy marked at x = 0 (mean ± std over seeds) and as a dotted level; a threshold or
    target as a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric, labels = claim["metric"], result["labels"]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for i, run in enumerate(r for r in claim["plot_runs"] if r in result["curves"]):
        pts = [p for p in result["curves"][run][metric] if p["mean"] is not None]
        if not pts:
            continue
        xs, mean, std = [p["x"] for p in pts], [p["mean"] for p in pts], [p["std"] for p in pts]
        line, = ax.plot(xs, mean, marker="osD^v<>"[i % 7], markersize=4, linewidth=1.5,
                        linestyle="-" if i % 2 == 0 else "--", label=labels[run])
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    init = result["initial"][metric]
    if init["mean"] is not None:
        ax.errorbar([0], [init["mean"]], yerr=[init["std"]], fmt="k*", markersize=11, capsize=4, zorder=5,
                    label="initial policy")
        ax.axhline(init["mean"], color="gray", linestyle=":", linewidth=1)
    if claim["line"]:
        ax.axhline(claim["line"][0], color="tab:red", linestyle="--", linewidth=1, label=claim["line"][1])
    n = len(claim["seeds"])
    ax.set_title(f"{claim['claim']}\n{claim['verdict']} (difference {signed(claim['difference'])}, "
                 f"{n} seed{'s' if n != 1 else ''}; bands: ±1 std)", fontsize=9)
    ax.set_xlabel("training steps (updates)")
    ax.set_ylabel(result["metric_labels"][metric])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_ylim()
    if hi - lo < 0.04:  # no magnified noise: a flat plot spans at least 0.04
        ax.set_ylim((lo + hi) / 2 - 0.02, (lo + hi) / 2 + 0.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def setup_text(result: Dict[str, Any]) -> str:
    s = result["settings"]
    return (f"Runs: {', '.join(result['labels'].values())}, all from the initial policy `{s['model']}`, "
            f"{s['max_steps']} training steps each, seeds {', '.join(map(str, result['seeds']))} (`trainer.seed`). "
            f"Held-out evaluation before training and every {s['eval_every']} steps on {s['eval_max_prompts']} "
            f"prompts with n = {s['eval_n']} samples each (unbiased pass@k, k in {s['eval_ks']}). "
            "x = training steps done (updates; a Nash-MP step is one Mirror-Prox iteration); the initial policy is "
            f"x = 0. Evaluation sampling: {EVAL_SEED_NOTE}.")


def initial_section(result: Dict[str, Any]) -> List[str]:
    """The initial policy's numbers (the preconditions) and whether the runs agree on them."""
    seeds, ref = result["seeds"], result["initial_reference"]
    rows = [[result["metric_labels"][m], stat_text(p)] + [fmt(p["values"].get(s), 4) for s in seeds]
            for m, p in result["initial"].items()]
    lines = [f"From {result['labels'][ref]}'s step -1 evaluations (mean ± std over seeds, then each seed); "
             "the preconditions:", "",
             md_table(["metric", "mean ± std"] + [f"seed {s}" for s in seeds], rows), ""]
    agree = result["initial_agreement"]
    if agree["agree"]:
        lines.append(f"All {len(agree['runs'])} step -1 evaluations (every run, every seed) agree: same metrics, "
                     "same samples.")
    else:
        lines.append(f"**The step -1 evaluations do not all agree** (reference: {agree['reference']}): " + "; ".join(
            f"{m['run']} {m['what']} {fmt(m['value'], 4)} (reference {fmt(m['reference'], 4)})"
            for m in agree["mismatches"]))
    return lines


def curves_section(result: Dict[str, Any]) -> List[str]:
    lines = []
    for m in result["metrics"]:
        xs = sorted({p["x"] for per in result["curves"].values() for p in per[m]})
        rows = [[x] + [stat_text(next((p for p in per[m] if p["x"] == x), None)) for per in result["curves"].values()]
                for x in xs]
        lines += [f"**{result['metric_labels'][m]}** (mean ± std over seeds)", "",
                  md_table(["steps"] + list(result["labels"].values()), rows), ""]
    return lines


def provenance_section(result: Dict[str, Any]) -> List[str]:
    lines = ["```bash", result["command"], "```", "", "Training runs (one at a time; wall seconds per seed, "
             "\"reused\": a finished run from an earlier invocation):", ""]
    seeds = result["seeds"]
    def wall(rec: Optional[Dict[str, Any]]) -> str:
        return "—" if rec is None else f"{rec['wall_seconds']:.0f}" + (" (reused)" if rec["reused"] else "")

    rows = [[result["labels"][run], f"`{info['config']}`"] + [wall(info["seeds"].get(s)) for s in seeds]
            for run, info in result["runs"].items()]
    lines += [md_table(["run", "config"] + [f"seed {s}" for s in seeds], rows, "ll" + "r" * len(seeds)), "",
              f"Each run's command (seed {seeds[0]} shown; the others differ in `trainer.seed` and "
              "`trainer.output_dir`):", ""]
    for run, info in result["runs"].items():
        rec = info["seeds"].get(seeds[0])
        if rec:
            lines.append(f"- {result['labels'][run]}: `{shlex.join(['python'] + rec['command'])}`")
    g, m = result["git"], result["machine"]
    dirty = f" with uncommitted changes to {', '.join(f'`{p}`' for p in g['dirty'])}" if g["dirty"] else ""
    lines += ["", f"- git commit: `{g['commit']}`{dirty}", f"- machine: {machine_text(m)}; {m['platform']}"]
    for role, facts in result["model"].items():
        if facts and facts.get("num_parameters") is not None:
            lines.append(f"- {role} model `{facts['path']}`: {facts['num_parameters']:,} parameters "
                         f"({facts['layers']} layers, hidden {facts['hidden_size']}), warm-start held-out greedy "
                         f"accuracy {fmt(facts['heldout_accuracy'])} after {facts['warm_start_steps']} warm-start steps"
                         f"{careless_text(facts)} (`rlplat_build.json`, cache {facts['cache_version']})")
        elif facts:
            lines.append(f"- {role} model `{facts['path']}` (no rlplat_build.json)")
    lines += [f"- finished {result['finished']}", ""]
    return lines


def write_task_markdown(path: str, result: Dict[str, Any]) -> None:
    lines = [f"# {result['label']} (task `{result['task']}`)", "", result["description"], ""]
    if result["smoke"]:
        lines += ["**Smoke run: sizes far too small for the numbers to mean anything.**", ""]
    lines += [setup_text(result), ""]
    for m, d in result["derived_metrics"].items():
        judge = f" (`{result['judge']}`)" if m == "win_rate" and result["judge"] else ""
        lines.append(f"- {d['label']}: {d['note']}{judge}.")
    lines += ["", "## Initial policy", "", *initial_section(result), "", "## Claims", "",
              "Difference: in the claim's direction (positive = as claimed). Standard error: sample std / sqrt(seeds) "
              "per side, in quadrature. Verdict: holds beyond +2 standard errors, does not hold below -2, else "
              "inconclusive at this noise (one seed: no standard error).", ""]
    if any(c["kind"] == "precondition" for c in result["claims"]):
        lines += ["Preconditions are measured on the initial policy alone, whose evaluation draws are the same in every "
                  "seed (`trainer.eval_seed`): they have no seed noise.", ""]
    lines += [claims_table(result["claims"]), ""]
    for i, c in enumerate(result["claims"], 1):
        lines += [f"{i}. {c['claim']}: **{c['verdict']}**. {c['detail']}.", "", f"   ![claim {i}]({c['plot']})", ""]
    lines += ["## Curves", "", *curves_section(result)]
    if result["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    conclusions = read_conclusions(os.path.dirname(path))
    if conclusions:
        lines += ["## What we conclude", "", conclusions, ""]
    lines += ["## How this was produced", "", *provenance_section(result)]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def read_conclusions(task_dir: str) -> str:
    """The hand-written ``conclusions.md`` of a task's output directory (what the numbers mean, why a
    claim does not hold), "" when there is none: the script measures, a person concludes."""
    path = os.path.join(task_dir, CONCLUSIONS_FILE)
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        return f.read().strip()


CONCLUSIONS_FILE = "conclusions.md"


def write_task_outputs(task_dir: str, result: Dict[str, Any]) -> None:
    """results.json, results.md and one PNG per claim in ``task_dir``."""
    with open(os.path.join(task_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    for c in result["claims"]:
        plot_claim(os.path.join(task_dir, c["plot"]), c, result)
    write_task_markdown(os.path.join(task_dir, "results.md"), result)


CLAIM_FIELDS = ("task", "claim", "algorithms", "difference", "standard_error", "seeds", "verdict")


def write_summary(out: str) -> List[Dict[str, Any]]:
    """``<out>/claims.json`` and ``<out>/README.md`` over every task of ``TASKS`` with a
    ``results.json`` in ``out`` (also those of earlier invocations); returns the claims."""
    claims, tasks = [], []
    for name in TASKS:
        path = os.path.join(out, name, "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                result = json.load(f)
            tasks.append(result)
            claims += [{**{k: c[k] for k in CLAIM_FIELDS}, "metric": c["metric"], "kind": c["kind"],
                        "detail": c["detail"], "plot": f"{name}/{c['plot']}"} for c in result["claims"]]
    with open(os.path.join(out, "claims.json"), "w") as f:
        json.dump(claims, f, indent=2)
    lines = ["# Claims tested at small scale", "",
             "Generated by `benchmarks/replicate.py`. Difference: in the claim's direction (positive = as claimed); "
             "verdict: holds / does not hold beyond twice the standard error, else inconclusive.", "",
             claims_table(claims, with_task=True), "", "## Tasks", ""]
    for r in tasks:
        lines.append(f"- [{r['task']}]({r['task']}/results.md): {r['label']}; seeds {r['seeds']}"
                     + (" (smoke)" if r["smoke"] else "") + f"; commit `{r['git']['commit']}`; `{r['command']}`")
    concluded = [(r["task"], read_conclusions(os.path.join(out, r["task"]))) for r in tasks]
    if any(text for _, text in concluded):
        lines += ["", "## What we conclude", ""]
        lines += [f"### {name}\n\n{text}\n" for name, text in concluded if text]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return claims


# ----------------------------------------------------------------------------- main
def selects(word: str, run_name: str) -> bool:
    """``--only`` word ``word`` names run ``run_name``: equal, or a prefix up to ``_`` (``dph_rl``)."""
    return run_name == word or run_name.startswith(word + "_")


def select_runs(task: Task, only: Optional[str]) -> List[RunSpec]:
    """The task's runs named in ``only`` (comma-separated ``selects`` words); all with ``only`` None."""
    if not only:
        return list(task.runs)
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    return [r for r in task.runs if any(selects(w, r.name) for w in wanted)]


def parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected comma-separated integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: expected distinct integers")
    return seeds


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=None, help=f"comma-separated tasks (default all: {', '.join(TASKS)})")
    p.add_argument("--only", default=None, help="comma-separated run names within the tasks (dph_rl = both DPH-RL)")
    p.add_argument("--seeds", default=None, help="trainer.seed values (default 0,1,2; --smoke: 0)")
    p.add_argument("--steps", type=int, default=None, help="trainer.max_steps of every run (default: the task's)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every E steps (default: the task's)")
    p.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts per evaluation (default: the task's)")
    p.add_argument("--out", default=None, help="output root (default: docs/replication; --smoke: a temp dir)")
    p.add_argument("--smoke", action="store_true", help="one seed, 2 steps, eval every step on 8 prompts, tiny sizes")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable; applied last)")
    p.add_argument("--eval-seed", type=int, default=0, help="trainer.eval_seed of every run: the evaluations' "
                   "sampling, the same whatever trainer.seed (default 0)")
    p.add_argument("--fresh", action="store_true", help="run again even where a finished run of the same command exists")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints/ and *.pt files")
    args = p.parse_args(argv)
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r}: expected key=value")
    args.tasks = [t.strip() for t in (args.tasks or ",".join(TASKS)).split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"--tasks: unknown {unknown}; choose from {list(TASKS)}")
    if args.only:
        names = {r.name for t in args.tasks for r in TASKS[t].runs}
        bad = [w for w in (x.strip() for x in args.only.split(",")) if w and not any(selects(w, n) for n in names)]
        if bad:
            p.error(f"--only: unknown run(s) {bad}; the selected tasks have {sorted(names)}")
    args.seeds = parse_seeds(args.seeds or ("0" if args.smoke else "0,1,2"))
    if args.eval_seed < 0:
        p.error("--eval-seed must be >= 0")
    if args.smoke:
        args.steps = args.steps or SMOKE["steps"]
        args.eval_every = args.eval_every or SMOKE["eval_every"]
        args.eval_prompts = args.eval_prompts or SMOKE["eval_prompts"]
        args.out = args.out or tempfile.mkdtemp(prefix="rlplat-replicate-smoke-")
    args.out = os.path.abspath(args.out or os.path.join(ROOT, "docs", "replication"))
    for name in ("steps", "eval_every", "eval_prompts"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def run_task(name: str, args: argparse.Namespace, command: str) -> Dict[str, Any]:
    """Train (or reuse) every selected run of task ``name`` for every seed, seed by seed, then
    analyze them and write the task's outputs; returns its result."""
    task = TASKS[name]
    runs = select_runs(task, args.only)
    records: Dict[str, Dict[int, Dict[str, Any]]] = {r.name: {} for r in runs}
    for seed in args.seeds:
        for run in runs:
            records[run.name][seed] = execute(name, task, run, seed, args)
    result = analyze_task(name, task, records, args, command)
    write_task_outputs(os.path.join(args.out, name), result)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/replicate.py", *(sys.argv[1:] if argv is None else argv)])
    os.makedirs(args.out, exist_ok=True)
    print(f"[replicate] tasks {', '.join(args.tasks)}, seeds {args.seeds}, into {args.out}", flush=True)
    t0 = time.time()
    for name in args.tasks:
        try:
            result = run_task(name, args, command)
        except RuntimeError as exc:
            print(f"[replicate] FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
        for c in result["claims"]:
            print(f"[replicate] {name}: {c['claim']}: {c['verdict']} ({c['detail']})", flush=True)
    write_summary(args.out)
    print(f"[replicate] done in {time.time() - t0:.0f} s; summary in {args.out}/README.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # rlplat without an editable install
    sys.exit(main())
