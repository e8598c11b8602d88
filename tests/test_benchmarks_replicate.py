"""benchmarks/replicate.py and the statistics it takes from benchmarks/stats.py: the verdict rule
with exact numbers, each claim kind on synthetic curves (both ways, censored, missing runs), the
derived-metric registry, run reuse, the whole analysis on synthetic run directories (no training),
and a runtime smoke run of the whole script (every task's real training runs, 2 steps each)."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("replicate", os.path.join(ROOT, "benchmarks", "replicate.py"))
rep = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("replicate", rep)  # dataclasses look their module up while the class is made
_spec.loader.exec_module(rep)
import stats  # noqa: E402  (benchmarks/ is on sys.path once replicate.py is loaded)

P1, P8 = "eval/pass@1", "eval/pass@8"
LABELS = {"a": "A", "b": "B"}


# ----------------------------------------------------------------------------- stats.py
@pytest.mark.parametrize("difference, se, n, verdict", [
    (0.1, 0.02, 3, "holds"),
    (0.1, 0.08, 3, "inconclusive at this noise"),
    (-0.1, 0.02, 3, "does not hold"),
    (-0.1, 0.08, 3, "inconclusive at this noise"),
    (0.04, 0.02, 3, "inconclusive at this noise"),  # exactly 2 SE is not beyond it
    (0.1, 0.0, 2, "holds"),
    (0.0, 0.0, 3, "inconclusive at this noise"),
    (0.1, None, 1, "inconclusive (one seed)"),
])
def test_verdict_rule(difference, se, n, verdict):
    assert stats.verdict(difference, se, n) == verdict


def test_a_claim_with_no_noise_and_no_difference_does_not_hold():
    assert rep.claim_difference([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], +1)["verdict"] == "does not hold"
    assert rep.claim_difference([0.0, 0.1, 0.0], [0.0, 0.0, 0.0], +1)["verdict"] == "inconclusive at this noise"
    assert rep.claim_difference([0.0], [0.0], +1)["verdict"] == "inconclusive (one seed)"


def test_claim_difference_exact_numbers():
    # a: mean 0.4, std 0.1, se 0.1/sqrt(3); b: mean 0.2, std 0.
    out = stats.claim_difference([0.3, 0.4, 0.5], [0.2, 0.2, 0.2], +1)
    assert out["difference"] == pytest.approx(0.2) and out["standard_error"] == pytest.approx(0.1 / math.sqrt(3))
    assert (out["n"], out["verdict"]) == (3, "holds")
    down = stats.claim_difference([0.3, 0.4, 0.5], [0.2, 0.2, 0.2], -1)  # the claim "a below b"
    assert down["difference"] == pytest.approx(-0.2) and down["verdict"] == "does not hold"
    # both sides noisy: quadrature of 0.1/sqrt(3) and 0.2/sqrt(3) = sqrt(0.05/3) = 0.1291; 0.1 < 2 SE
    both = stats.claim_difference([0.3, 0.4, 0.5], [0.1, 0.3, 0.5], +1)
    assert both["difference"] == pytest.approx(0.1) and both["standard_error"] == pytest.approx(math.sqrt(0.05 / 3))
    assert both["verdict"] == "inconclusive at this noise"
    # a constant (threshold) adds no standard error and no seed count
    thr = stats.claim_difference([0.01, 0.02, 0.03], 0.05, -1)
    assert thr["difference"] == pytest.approx(0.03) and thr["standard_error"] == pytest.approx(0.01 / math.sqrt(3))
    assert thr["verdict"] == "holds"
    one = stats.claim_difference([0.9], [0.1], +1)
    assert one["standard_error"] is None and one["verdict"] == "inconclusive (one seed)"
    with pytest.raises(ValueError, match="direction"):
        stats.claim_difference([1.0], [0.0], 0)


def test_compare_keeps_its_verdicts_for_the_other_benchmarks():
    assert stats.compare([1.0], [0.0], +1)["verdict"] == "not tested: one seed"
    assert stats.compare([1.0, 1.1, 1.2], [0.0, 0.1, 0.2], 0)["verdict"] == "holds"
    assert stats.compare([1.0, 1.1, 1.2], [0.0, 0.1, 0.2], -1)["verdict"] == "does not hold"


# ----------------------------------------------------------------------------- claims on synthetic curves
def curve(*points, metric=P1):
    """points: (x, value) of ``metric``."""
    return [{"step": x - 1, "x": x, metric: v} for x, v in points]


def seeds_of(*curves_):
    return dict(enumerate(curves_))


def test_final_vs_initial_both_ways_and_inconclusive():
    rises = {"a": seeds_of(curve((0, 0.2), (5, 0.30)), curve((0, 0.2), (5, 0.32)), curve((0, 0.2), (5, 0.31)))}
    o = rep.FinalVsInitial("a", P1, +1).evaluate(rises, LABELS)
    assert o.difference == pytest.approx(0.11) and o.standard_error == pytest.approx(0.01 / math.sqrt(3))
    assert (o.verdict, o.seeds) == ("holds", [0, 1, 2])
    assert rep.FinalVsInitial("a", P1, -1).evaluate(rises, LABELS).verdict == "does not hold"
    noisy = {"a": seeds_of(curve((0, 0.2), (5, 0.1)), curve((0, 0.2), (5, 0.5)), curve((0, 0.2), (5, 0.3)))}
    assert rep.FinalVsInitial("a", P1, +1).evaluate(noisy, LABELS).verdict == "inconclusive at this noise"
    one = rep.FinalVsInitial("a", P1, +1).evaluate({"a": {0: rises["a"][0]}}, LABELS)
    assert one.standard_error is None and one.verdict == "inconclusive (one seed)"
    # the initial policy's noise counts when its evaluation differs between seeds
    moving = {"a": seeds_of(curve((0, 0.1), (5, 0.30)), curve((0, 0.2), (5, 0.32)), curve((0, 0.3), (5, 0.31)))}
    o = rep.FinalVsInitial("a", P1, +1).evaluate(moving, LABELS)
    assert o.standard_error == pytest.approx(math.sqrt((0.01 ** 2 + 0.1 ** 2) / 3))


def test_final_vs_final_uses_only_common_seeds_and_marks_missing_runs():
    c = {"a": seeds_of(curve((0, 0.2), (5, 0.50)), curve((0, 0.2), (5, 0.52)), curve((0, 0.2), (5, 0.51))),
         "b": {1: curve((0, 0.2), (5, 0.40)), 2: curve((0, 0.2), (5, 0.42))}}
    o = rep.FinalVsFinal("a", "b", P1, +1).evaluate(c, LABELS)
    assert o.seeds == [1, 2] and o.difference == pytest.approx(0.105) and o.verdict == "holds"
    assert rep.FinalVsFinal("a", "b", P1, -1).describe(LABELS) == "A's final pass@1 is below B's"
    missing = rep.FinalVsFinal("a", "c", P1).evaluate(c, LABELS)
    assert missing.verdict == "not tested" and missing.difference is None and "c" in missing.detail
    absent = rep.FinalVsFinal("a", "b", P8).evaluate(c, LABELS)  # a metric the evaluations do not have
    assert absent.verdict == "not tested" and "pass@8" in absent.detail


def test_steps_to_reach_with_censoring():
    # b's final value (per seed) is the target; a reaches it earlier in every seed
    b = seeds_of(curve((0, 0.2), (5, 0.25), (10, 0.32), (15, 0.30)), curve((0, 0.2), (5, 0.3), (10, 0.28), (15, 0.31)),
                 curve((0, 0.2), (5, 0.22), (10, 0.26), (15, 0.29)))
    fast = seeds_of(curve((0, 0.2), (5, 0.31), (10, 0.4), (15, 0.4)), curve((0, 0.2), (5, 0.35), (10, 0.4), (15, 0.4)),
                    curve((0, 0.2), (5, 0.30), (10, 0.4), (15, 0.4)))
    claim = rep.StepsToReach("a", "b", P1, rep.FinalOf("b"))
    o = claim.evaluate({"a": fast, "b": b}, LABELS)
    assert o.values["targets"] == [0.30, 0.31, 0.29]
    assert o.values["b"] == [(10, False), (15, False), (15, False)] and o.values["a"] == [(5, False)] * 3
    assert o.difference == pytest.approx(8 + 1 / 3) and o.verdict == "holds"
    # a never reaches the target in seed 2: counted as last x (15) + eval spacing (5) = 20, "censored"
    slow = dict(fast)
    slow[2] = curve((0, 0.2), (5, 0.21), (10, 0.22), (15, 0.23))
    o = claim.evaluate({"a": slow, "b": b}, LABELS)
    assert o.values["a"][2] == (20, True) and "censored" in o.detail
    assert o.difference == pytest.approx((10 + 15 + 15 - 5 - 5 - 20) / 3)
    # a fixed target: the initial policy (x = 0) counts
    o = rep.StepsToReach("a", "b", P1, 0.2).evaluate({"a": fast, "b": b}, LABELS)
    assert o.difference == 0 and o.verdict == "does not hold"  # both at x = 0 in every seed: not fewer
    assert claim.describe({"a": "KDRL", "b": "GRPO"}) == "KDRL reaches GRPO's final pass@1 in fewer steps than GRPO"
    assert rep.steps_to_reach(curve((0, 0.1), (4, 0.2), (6, 0.3)), P1, 0.9) == (10, True)  # spacing 4, not 2


def test_precondition_on_the_initial_policy():
    bonus = "eval/bonus/pass@16"
    c = {"a": seeds_of(*[curve((0, v), (5, 0.9), metric=bonus) for v in (0.01, 0.01, 0.01)])}
    o = rep.Precondition(bonus, "<=", 0.05).evaluate(c, LABELS)
    assert o.difference == pytest.approx(0.04) and o.standard_error == 0 and o.verdict == "holds"
    assert "the same in every seed" in o.detail and o.line == (0.05, "threshold 0.05")
    assert rep.Precondition(bonus, ">=", 0.05).evaluate(c, LABELS).verdict == "does not hold"
    assert rep.Precondition(bonus, "<=", 0.05).describe(LABELS) == "the initial policy's bonus pass@16 is <= 0.05"
    with pytest.raises(ValueError, match="op"):
        rep.Precondition(bonus, "<", 0.05)
    with pytest.raises(ValueError, match="direction"):
        rep.FinalVsInitial("a", P1, 0)


def test_check_task_refuses_unknown_runs_and_metrics():
    runs = (rep.RunSpec("a", "A", "configs/grpo.yaml"),)
    with pytest.raises(ValueError, match="not in the task"):
        rep.check_task("t", rep.Task("t", "d", runs, (P1,), (rep.FinalVsFinal("a", "b", P1),)))
    with pytest.raises(ValueError, match="metrics"):
        rep.check_task("t", rep.Task("t", "d", runs, (P1,), (rep.FinalVsInitial("a", P8),)))
    for name, task in rep.TASKS.items():
        rep.check_task(name, task)
    assert {"addition", "diversity", "teacher_only"} <= set(rep.TASKS)


# ----------------------------------------------------------------------------- metrics
def record(index, prompt, answer, samples):
    return {"index": index, "prompt": prompt, "answer": answer, "samples": samples}


def test_win_rate_pairs_sample_j_with_sample_j_under_the_checker_judge():
    from rlplat.rewards.judges import checker_judge

    initial = [record(0, "1+1=", "2", [" 2", " 3", " 5", " 2"]), record(7, "3+4=", "7", [" 1", " 1", " 1", " 1"])]
    assert rep.win_rate(initial, initial, checker_judge) == 0.5  # the initial policy against itself
    # prompt 0: (2 vs 2) .5, (2 vs 3) 1, (3 vs 5) .5, (5 vs 2) 0; prompt 7: 1, 1, .5, .5
    better = [record(7, "3+4=", "7", [" 7", " 7", " 2", " 2"]), record(0, "1+1=", "2", [" 2", " 2", " 3", " 5"])]
    assert rep.win_rate(better, initial, checker_judge) == pytest.approx((0.5 + 1 + 0.5 + 0 + 1 + 1 + 0.5 + 0.5) / 8)
    with pytest.raises(ValueError, match="not in the initial"):
        rep.win_rate([record(1, "2+2=", "4", ["4", "4"])], initial, checker_judge)
    with pytest.raises(ValueError, match="probability"):
        rep.win_rate(initial, initial, lambda *a: 1.5)


def ev(step, p1, samples, **extra):
    return {"step": step, "metrics": {P1: p1, P8: 0.5, "eval/pass@1_greedy": 0.0, **extra},
            "records": [record(0, "1+1=", "2", samples)]}


def test_curve_from_evals_reads_keys_and_derived_metrics(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text("def steps_since(eval_json, initial_eval_json):\n"
                                            "    return eval_json['step'] - initial_eval_json['step']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(rep.DERIVED_METRICS, "seen", rep.DerivedMetric("steps since", "my_metrics:steps_since"))
    evals = [ev(-1, 0.2, ["3", "2"]), ev(1, 0.3, ["2", "2"], **{"eval/bonus/pass@1": 0.7})]
    points = rep.curve_from_evals(evals, [P1, "win_rate", "seen", "eval/bonus/pass@1"])
    assert [p["x"] for p in points] == [0, 2]
    assert points[0]["win_rate"] == 0.5 and points[1]["win_rate"] == 0.75
    assert [p["seen"] for p in points] == [0.0, 2.0]
    assert points[0]["eval/bonus/pass@1"] is None and points[1]["eval/bonus/pass@1"] == 0.7
    assert rep.metric_label("eval/bonus/pass@1") == "bonus pass@1" and rep.metric_label("seen") == "steps since"
    assert rep.metric_label("eval/pass@1_greedy") == "greedy pass@1"
    with pytest.raises(ValueError, match="step -1"):
        rep.curve_from_evals(evals[1:], [P1])


def test_initial_agreement_names_the_run_that_differs():
    same = rep.check_initial_agreement({"grpo seed 0": ev(-1, 0.2, ["1"]), "kdrl seed 1": ev(-1, 0.2, ["1"])},
                                       "grpo seed 0", [P1])
    assert same["agree"] and same["mismatches"] == []
    diff = rep.check_initial_agreement({"grpo seed 0": ev(-1, 0.2, ["1"]), "nash_mp seed 0": ev(-1, 0.3, ["2"]),
                                        "grpo seed 1": ev(-1, 0.2, ["1"])}, "grpo seed 0", [P1, P8])
    assert not diff["agree"] and {m["what"] for m in diff["mismatches"]} == {P1, "samples"}
    assert {m["run"] for m in diff["mismatches"]} == {"nash_mp seed 0"}


# ----------------------------------------------------------------------------- commands, selection, reuse
def test_parse_args_seeds_selection_and_smoke(tmp_path):
    args = rep.parse_args(["--out", str(tmp_path)])
    assert args.seeds == [0, 1, 2] and args.tasks == list(rep.TASKS) and args.steps is None and args.eval_seed == 0
    smoke = rep.parse_args(["--smoke", "--out", str(tmp_path)])
    assert smoke.seeds == [0] and (smoke.steps, smoke.eval_every, smoke.eval_prompts) == (2, 1, 8)
    assert rep.parse_args(["--seeds", "3,5", "--out", str(tmp_path)]).seeds == [3, 5]
    for bad in (["--tasks", "nope"], ["--only", "ppo"], ["--seeds", "0,x"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            rep.parse_args(bad + ["--out", str(tmp_path)])
    task = rep.TASKS["diversity"]
    assert [r.name for r in rep.select_runs(task, "dph_rl,grpo")] == ["grpo", "dph_rl_forward_kl", "dph_rl_js"]
    assert [r.name for r in rep.select_runs(task, None)] == [r.name for r in task.runs]


def test_train_command_layers_task_run_cli_and_set(tmp_path):
    task = rep.TASKS["diversity"]
    runs = {r.name: r for r in task.runs}
    args = rep.parse_args(["--steps", "4", "--out", str(tmp_path), "--set", "rollout.backend=hf"])
    cmd = rep.train_command(task, runs["dph_rl_js"], 2, str(tmp_path / "x"), args)
    assert cmd[1:5] == ["-m", "launch.train", "--config", "configs/dph_rl.yaml"]
    assert cmd[5:9] == [f"trainer.output_dir={tmp_path / 'x'}", "trainer.eval_before_train=true", "trainer.seed=2",
                        "trainer.eval_seed=0"]  # the evaluation draws do not follow trainer.seed
    assert "trainer.eval_ks=[1,8,32,64]" in cmd and "trainer.eval_n=64" in cmd
    assert cmd.index("trainer.max_steps=40") < cmd.index("trainer.max_steps=4")  # the CLI's --steps wins
    assert cmd[-1] == "rollout.backend=hf"  # the user's --set wins over everything
    assert cmd.index("algorithm.divergences.0.divergence=js") < cmd.index("trainer.max_steps=4")
    assert not any(c.startswith(("algorithm.group_size", "data.prompts", "trainer.lr")) for c in cmd)  # configs decide
    smoke = rep.parse_args(["--smoke", "--out", str(tmp_path)])
    assert set(task.smoke_overrides) <= set(rep.train_command(task, runs["grpo"], 0, str(tmp_path), smoke))


def write_run(run_dir, cmd, evals, config, metrics_rows=()):
    """A finished run directory as ``execute`` leaves it."""
    os.makedirs(os.path.join(run_dir, "eval"))
    for e in evals:
        with open(os.path.join(run_dir, "eval", f"step_{e['step']}.json"), "w") as f:
            json.dump(e, f)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        json.dump(config, f)  # JSON is YAML
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in metrics_rows)
    with open(os.path.join(run_dir, "replicate_run.json"), "w") as f:
        json.dump({"command": cmd[1:], "wall_seconds": 12.5, "run_dir": run_dir,
                   "eval_files": sorted(os.listdir(os.path.join(run_dir, "eval")))}, f)


def test_finished_record_reuses_only_the_same_command_with_its_evaluations(tmp_path):
    d = str(tmp_path / "run")
    write_run(d, ["python", "-m", "x", "a=1"], [ev(-1, 0.2, ["2"])], {})
    assert rep.finished_record(d, ["-m", "x", "a=1"])["wall_seconds"] == 12.5
    assert rep.finished_record(d, ["-m", "x", "a=2"]) is None
    os.remove(os.path.join(d, "eval", "step_-1.json"))
    assert rep.finished_record(d, ["-m", "x", "a=1"]) is None


# ----------------------------------------------------------------------------- the analysis, no training
# run -> correct samples of 16 (pass@1 x 16) at x = 5 and x = 10 per seed 0, 1, 2 (initially 6: pass@1 0.375),
# and final (pass@8, pass@16) before adding 0.01 * seed
COUNTS = {"grpo": ((8, 8, 8), (10, 10, 11)), "kdrl": ((10, 11, 11), (11, 11, 12)),
          "dph_rl_forward_kl": ((8, 8, 8), (9, 9, 9)), "dph_rl_js": ((8, 8, 8), (9, 9, 9)),
          "nash_mp": ((8, 8, 8), (5, 9, 7))}
PASS_K = {"grpo": (0.80, 0.85), "kdrl": (0.85, 0.90), "dph_rl_forward_kl": (0.70, 0.96), "dph_rl_js": (0.93, 0.97),
          "nash_mp": (0.88, 0.93)}


def synthetic_evals(run, seed):
    """Evaluations at x = 0, 5, 10 on one prompt with 16 samples: the first c correct (so the win
    rate against the initial 6 is 0.5 + (c - 6) / 32), pass@1 = c / 16."""
    def one(step, c, p8, p16):
        samples = [" 2"] * c + [" 3"] * (16 - c)
        return {"step": step, "metrics": {P1: c / 16, P8: p8, "eval/pass@16": p16, "eval/pass@1_greedy": 0.5},
                "n": 16, "ks": [1, 8, 16], "records": [record(0, "1+1=", "2", samples)]}

    (mid, final), (p8, p16) = COUNTS[run], PASS_K[run]
    eps = 0.01 * seed
    return [one(-1, 6, 0.9, 0.95), one(4, mid[seed], 0.88, 0.9), one(9, final[seed], p8 + eps, p16 + eps)]


def synthetic_config(run):
    return {"model": {"path": "no-such-model"}, "roles": {"teacher": {"path": None}},
            "trainer": {"max_steps": 10, "eval_every": 5, "eval_max_prompts": 1, "eval_n": 16, "eval_ks": [1, 8, 16]},
            "algorithm": {"name": run}}


# Five runs and every claim kind but the precondition, on the addition task's settings.
SYNTHETIC = rep.Task(
    label="synthetic", description="five runs of fake evaluations",
    runs=(rep.RunSpec("grpo", "GRPO", "configs/grpo.yaml"), rep.RunSpec("kdrl", "KDRL", "configs/kdrl.yaml"),
          rep.RunSpec("dph_rl_forward_kl", "DPH-RL (forward KL)", "configs/dph_rl.yaml"),
          rep.RunSpec("dph_rl_js", "DPH-RL (JS)", "configs/dph_rl.yaml"),
          rep.RunSpec("nash_mp", "Nash-MP", "configs/nash_mp.yaml")),
    overrides=rep.ADDITION.overrides,
    metrics=("eval/pass@1", "eval/pass@8", "eval/pass@16", "eval/pass@1_greedy", "win_rate"),
    claims=(
        rep.FinalVsInitial("grpo", "eval/pass@1", +1),
        rep.FinalVsInitial("grpo", "eval/pass@8", -1),
        rep.FinalVsInitial("grpo", "eval/pass@16", -1),
        rep.FinalVsFinal("dph_rl_forward_kl", "grpo", "eval/pass@8", +1),
        rep.FinalVsFinal("dph_rl_js", "grpo", "eval/pass@8", +1),
        rep.FinalVsFinal("dph_rl_forward_kl", "grpo", "eval/pass@16", +1),
        rep.FinalVsFinal("dph_rl_js", "grpo", "eval/pass@16", +1),
        rep.StepsToReach("kdrl", "grpo", "eval/pass@1", rep.FinalOf("grpo")),
        rep.FinalVsInitial("nash_mp", "win_rate", +1,
                           text="Nash-MP's final win rate against the initial policy is above the initial 0.5"),
    ),
)


def test_whole_analysis_on_synthetic_runs_writes_every_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(rep.TASKS, "synthetic", SYNTHETIC)
    out = tmp_path / "rep"
    argv = ["--tasks", "synthetic", "--seeds", "0,1,2", "--out", str(out)]
    args = rep.parse_args(argv)
    task = rep.TASKS["synthetic"]
    for seed in args.seeds:
        for run in task.runs:
            d = str(out / "synthetic" / run.name / f"seed{seed}")
            write_run(d, rep.train_command(task, run, seed, d, args), synthetic_evals(run.name, seed),
                      synthetic_config(run.name))
    (out / "synthetic" / "conclusions.md").write_text("The fake KDRL is faster because we made it so.\n")
    assert rep.main(argv) == 0  # every run reused: no training
    assert capsys.readouterr().out.count("reusing the finished run") == 15
    claims = json.loads((out / "claims.json").read_text())
    assert len(claims) == len(task.claims)
    for c in claims:
        assert set(rep.CLAIM_FIELDS) <= set(c) and c["seeds"] == [0, 1, 2], c
        assert (out / c["plot"]).stat().st_size > 1000
    verdicts = {c["claim"]: (c["verdict"], pytest.approx(c["difference"])) for c in claims}
    assert verdicts["GRPO's final pass@1 is above the initial policy's"] == ("holds", (10 + 10 + 11) / 48 - 0.375)
    assert verdicts["GRPO's final pass@8 is below the initial policy's"] == ("holds", 0.9 - 0.81)
    assert verdicts["DPH-RL (forward KL)'s final pass@8 is above GRPO's"] == ("does not hold", -0.1)
    assert verdicts["DPH-RL (JS)'s final pass@16 is above GRPO's"] == ("holds", 0.12)
    # GRPO's final pass@1 is 10, 10, 11 of 16: KDRL has it at x = 5 in every seed, GRPO at x = 10 (SE 0)
    assert verdicts["KDRL reaches GRPO's final pass@1 in fewer steps than GRPO"] == ("holds", 5)
    nash = next(c for c in claims if c["claim"].startswith("Nash-MP"))  # win rates 15/32, 19/32, 17/32
    assert (nash["verdict"], nash["algorithms"]) == ("inconclusive at this noise", ["Nash-MP"])
    assert nash["difference"] == pytest.approx(1 / 32)
    assert nash["standard_error"] == pytest.approx(2 / 32 / math.sqrt(3))
    md = (out / "synthetic" / "results.md").read_text()
    assert "## Claims" in md and "0.375" in md and "seed 2" in md and "All 15 step -1 evaluations" in md
    assert "(reused)" in md and "equals 0.5 + (pass@1 - initial pass@1) / 2" in md
    assert "synthetic/results.md" in (out / "README.md").read_text()
    assert "## What we conclude\n\nThe fake KDRL is faster because we made it so." in md  # a person's words, kept
    assert "### synthetic\n\nThe fake KDRL" in (out / "README.md").read_text()


# ----------------------------------------------------------------------------- the whole script
# The smoke runs the tasks that hold every kind of run (each config, term and run override); the
# other tasks repeat those runs on other data, teachers or budgets (checked below), and every claim
# kind's analysis is tested on synthetic runs above. Smoking them too adds 9 runs, 7 minutes of CI.
SMOKED_TASKS = ("diversity", "teacher_only", "styles", "distillation_low_overlap")
SMOKE_LAYOUT = ("rollout.backend=hf", "trainer.num_ranks=1")  # the cheapest actors to start (~24 s a run, not 40)
RUNS_SMOKED = sum(len(rep.TASKS[name].runs) for name in SMOKED_TASKS)
DATA_AND_BUDGET_KEYS = {"data.train_path", "roles.teacher.path", "trainer.eval_group_by", "trainer.lr", "trainer.max_steps",
                        "trainer.eval_every", "trainer.eval_max_prompts", "trainer.eval_n", "trainer.eval_ks"}


def test_the_smoked_tasks_hold_every_kind_of_run():
    smoked = {(run.name, run.config, run.overrides) for name in SMOKED_TASKS for run in rep.TASKS[name].runs}
    for name, task in rep.TASKS.items():
        if name in SMOKED_TASKS:
            continue
        assert {(run.name, run.config, run.overrides) for run in task.runs} <= smoked, name
        assert {o.partition("=")[0] for o in task.overrides} <= DATA_AND_BUDGET_KEYS, name
        assert task.smoke_overrides == rep.SMOKE_SIZES, name


@pytest.mark.runtime
@pytest.mark.timeout(360 * RUNS_SMOKED + 120)
def test_replicate_smoke_runs_every_kind_of_run(tmp_path, tiny_models):
    out = tmp_path / "replication"
    # The HF engine and one trainer rank: the smoke checks the harness and that every kind of run
    # finishes and is analysed; vLLM and data-parallel ranks are exercised by tests/test_e2e.py.
    cmd = [sys.executable, "benchmarks/replicate.py", "--smoke", "--tasks", ",".join(SMOKED_TASKS), "--out", str(out),
           "--set", *SMOKE_LAYOUT]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=360 * RUNS_SMOKED)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    claims = json.loads((out / "claims.json").read_text())
    tasks = {name: rep.TASKS[name] for name in SMOKED_TASKS}
    expected = [(name, c.describe(t.labels())) for name, t in tasks.items() for c in t.claims]
    assert [(c["task"], c["claim"]) for c in claims] == expected
    for c in claims:
        assert set(rep.CLAIM_FIELDS) <= set(c), c
        assert c["seeds"] == [0] and c["verdict"] == "inconclusive (one seed)", c  # every run finished: all tested
        assert c["standard_error"] is None and isinstance(c["difference"], (int, float)), c
        assert (out / c["plot"]).is_file() and (out / c["plot"]).stat().st_size > 1000, c["plot"]
    for name, task in tasks.items():
        assert (out / name / "results.md").read_text().startswith(f"# {task.label}")
        result = json.loads((out / name / "results.json").read_text())
        for run in task.runs:
            run_dir = out / name / run.name / "seed0"
            assert (run_dir / "train.log").is_file() and not (run_dir / "checkpoints").exists()
            steps = [p["x"] for p in result["curves"][run.name][task.metrics[0]]]
            assert steps == [0, 1, 2], (run.name, steps)  # the initial policy and both steps
    assert (out / "README.md").is_file()
