"""benchmarks/replicate.py: the claim and win-rate logic on synthetic curves (each claim both
ways), and a runtime smoke run of the whole script (five real training runs of 2 steps)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("replicate", os.path.join(ROOT, "benchmarks", "replicate.py"))
rep = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("replicate", rep)  # dataclasses look their module up while the class is made
_spec.loader.exec_module(rep)


def curve(*points):
    """points: (updates, pass@1, pass@8, pass@16, win_rate)."""
    return [{"step": u - 1, "updates": u, "pass@1": p1, "pass@8": p8, "pass@16": p16, "pass@1_greedy": p1,
             "win_rate": w} for u, p1, p8, p16, w in points]


INITIAL = curve((0, 0.20, 0.60, 0.80, 0.5))[0]


# ----------------------------------------------------------------------------- win rate
def record(index, prompt, answer, samples):
    return {"index": index, "prompt": prompt, "answer": answer, "samples": samples}


def test_win_rate_pairs_sample_j_with_sample_j_under_the_checker_judge():
    from rlplat.rewards.judges import checker_judge

    initial = [record(0, "1+1=", "2", [" 2", " 3", " 5", " 2"]), record(7, "3+4=", "7", [" 1", " 1", " 1", " 1"])]
    assert rep.win_rate(initial, initial, checker_judge) == 0.5  # the initial policy against itself
    # prompt 0: (2 vs 2) .5, (2 vs 3) 1, (3 vs 5) .5, (5 vs 2) 0; prompt 7: 1, 1, .5, .5
    better = [record(7, "3+4=", "7", [" 7", " 7", " 2", " 2"]), record(0, "1+1=", "2", [" 2", " 2", " 3", " 5"])]
    assert rep.win_rate(better, initial, checker_judge) == pytest.approx((0.5 + 1 + 0.5 + 0 + 1 + 1 + 0.5 + 0.5) / 8)
    worse = [record(0, "1+1=", "2", [" 9"] * 4), record(7, "3+4=", "7", [" 1"] * 4)]
    assert rep.win_rate(worse, initial, checker_judge) == pytest.approx((0 + 0.5 + 0.5 + 0 + 0.5 * 4) / 8)  # < 0.5


def test_win_rate_refuses_unmatched_records_and_bad_judges():
    init = [record(0, "1+1=", "2", ["2", "3"])]
    with pytest.raises(ValueError, match="not in the initial"):
        rep.win_rate([record(1, "2+2=", "4", ["4", "4"])], init, lambda *a: 0.5)
    with pytest.raises(ValueError, match="2 samples now vs"):
        rep.win_rate(init, [record(0, "1+1=", "2", ["2"] * 3)], lambda *a: 0.5)
    with pytest.raises(ValueError, match="probability"):
        rep.win_rate(init, init, lambda *a: 1.5)


def test_curve_from_evals_puts_the_initial_policy_at_zero_updates():
    from rlplat.rewards.judges import checker_judge

    def ev(step, samples):
        m = {"eval/pass@1": 0.1 * (step + 2), "eval/pass@8": 0.5, "eval/pass@16": 0.7, "eval/pass@1_greedy": 0.0}
        return {"step": step, "metrics": m, "records": [record(0, "1+1=", "2", samples)]}

    points = rep.curve_from_evals([ev(-1, ["3", "2"]), ev(1, ["2", "2"])], checker_judge)
    assert [p["updates"] for p in points] == [0, 2]
    assert points[0]["win_rate"] == 0.5 and points[1]["win_rate"] == 0.75
    assert points[1]["pass@1"] == pytest.approx(0.3) and points[1]["pass@16"] == 0.7
    with pytest.raises(ValueError, match="step -1"):
        rep.curve_from_evals([ev(1, ["2", "2"])], checker_judge)


def test_initial_agreement_names_the_run_that_differs():
    def ev(p1, samples):
        m = {"eval/pass@1": p1, "eval/pass@8": 0.5, "eval/pass@16": 0.7, "eval/pass@1_greedy": 0.1}
        return {"step": -1, "metrics": m, "records": [record(0, "1+1=", "2", samples)]}

    same = rep.check_initial_agreement({"grpo": ev(0.2, ["1"]), "kdrl": ev(0.2, ["1"])}, "grpo")
    assert same["agree"] and same["mismatches"] == []
    diff = rep.check_initial_agreement({"grpo": ev(0.2, ["1"]), "kdrl": ev(0.2, ["1"]), "nash_mp": ev(0.3, ["2"])}, "grpo")
    assert not diff["agree"] and {m["run"] for m in diff["mismatches"]} == {"nash_mp"}
    assert {m["what"] for m in diff["mismatches"]} == {"eval/pass@1", "samples"}


# ----------------------------------------------------------------------------- claims
def test_claim_grpo_raises_pass1_both_ways():
    up = rep.claim_grpo_raises_pass1(INITIAL, curve((0, 0.2, 0.6, 0.8, 0.5), (5, 0.35, 0.6, 0.8, 0.6)))
    assert up.held is True and up.status == "held" and up.numbers["grpo_final_pass@1"] == 0.35
    flat = rep.claim_grpo_raises_pass1(INITIAL, curve((0, 0.2, 0.6, 0.8, 0.5), (5, 0.2, 0.6, 0.8, 0.5)))
    assert flat.held is False and flat.status == "did not hold"
    assert rep.claim_grpo_raises_pass1(INITIAL, None).held is None


def test_claim_dph_keeps_pass_at_k_needs_every_k_and_both_variants():
    start = (0, 0.2, 0.6, 0.8, 0.5)
    grpo_falls = curve(start, (4, 0.4, 0.5, 0.7, 0.6))
    keeps = curve(start, (4, 0.3, 0.6, 0.85, 0.55))
    ok = rep.claim_dph_keeps_pass_at_k(INITIAL, grpo_falls, {"dph_rl_forward_kl": keeps, "dph_rl_js": keeps})
    assert ok.held is True, ok.detail
    assert ok.numbers["grpo_final_pass@8"] == 0.5 and ok.numbers["dph_rl_js_final_pass@16"] == 0.85
    # one variant loses pass@16 only
    js_falls16 = curve(start, (4, 0.3, 0.7, 0.79, 0.55))
    assert rep.claim_dph_keeps_pass_at_k(INITIAL, grpo_falls, {"dph_rl_forward_kl": keeps, "dph_rl_js": js_falls16}).held is False
    # GRPO's pass@8 does not fall
    grpo_keeps8 = curve(start, (4, 0.4, 0.6, 0.7, 0.6))
    v = rep.claim_dph_keeps_pass_at_k(INITIAL, grpo_keeps8, {"dph_rl_forward_kl": keeps, "dph_rl_js": keeps})
    assert v.held is False and "does not fall" in v.detail
    assert rep.claim_dph_keeps_pass_at_k(INITIAL, grpo_falls, {"dph_rl_forward_kl": keeps, "dph_rl_js": None}).held is None


def test_first_reaching_and_claim_kdrl_faster_both_ways():
    grpo = curve((0, 0.2, 0, 0, 0.5), (2, 0.25, 0, 0, 0.5), (4, 0.32, 0, 0, 0.5), (6, 0.30, 0, 0, 0.5))
    assert rep.first_reaching(grpo, "pass@1", 0.30) == 4 and rep.first_reaching(grpo, "pass@1", 0.9) is None
    fast = curve((0, 0.2, 0, 0, 0.5), (2, 0.31, 0, 0, 0.5), (4, 0.4, 0, 0, 0.5), (6, 0.45, 0, 0, 0.5))
    v = rep.claim_kdrl_faster(grpo, fast)
    assert v.held is True and (v.numbers["kdrl_steps"], v.numbers["grpo_steps"]) == (2, 4)
    slow = curve((0, 0.2, 0, 0, 0.5), (2, 0.22, 0, 0, 0.5), (4, 0.28, 0, 0, 0.5), (6, 0.33, 0, 0, 0.5))
    v = rep.claim_kdrl_faster(grpo, slow)
    assert v.held is False and (v.numbers["kdrl_steps"], v.numbers["grpo_steps"]) == (6, 4)
    never = curve((0, 0.2, 0, 0, 0.5), (6, 0.21, 0, 0, 0.5))
    v = rep.claim_kdrl_faster(grpo, never)
    assert v.held is False and v.numbers["kdrl_steps"] is None and "never" in v.detail
    # GRPO never improves: its final is reached at x = 0 by both, a tie is not "fewer steps"
    grpo_flat = curve((0, 0.2, 0, 0, 0.5), (6, 0.1, 0, 0, 0.5))
    assert rep.claim_kdrl_faster(grpo_flat, fast).held is False
    assert rep.claim_kdrl_faster(None, fast).held is None


def test_claim_nash_win_rate_rises_both_ways():
    assert rep.claim_nash_win_rate_rises(curve((0, 0, 0, 0, 0.5), (3, 0, 0, 0, 0.56))).held is True
    assert rep.claim_nash_win_rate_rises(curve((0, 0, 0, 0, 0.5), (3, 0, 0, 0, 0.62), (6, 0, 0, 0, 0.49))).held is False
    assert rep.claim_nash_win_rate_rises(None).status == "not tested"


def test_evaluate_claims_marks_claims_of_missing_runs_not_tested():
    start = (0, 0.2, 0.6, 0.8, 0.5)
    verdicts = rep.evaluate_claims(INITIAL, {"grpo": curve(start, (2, 0.3, 0.5, 0.7, 0.55))})
    assert [v.held for v in verdicts] == [True, None, None, None]


def test_markdown_table_and_run_selection():
    table = rep.md_table(["policy", "pass@1"], [["initial policy", 0.25], ["GRPO", None]])
    assert table.splitlines() == ["| policy | pass@1 |", "| :--- | ---: |", "| initial policy | 0.250 |", "| GRPO | — |"]
    assert [r.name for r in rep.select_runs("dph_rl,grpo")] == ["grpo", "dph_rl_forward_kl", "dph_rl_js"]
    assert [r.name for r in rep.select_runs(None)] == list(rep.RUN_NAMES)
    with pytest.raises(SystemExit, match="unknown run"):
        rep.select_runs("ppo")


def test_train_command_passes_only_common_overrides(tmp_path):
    args = rep.parse_args(["--steps", "4", "--eval-every", "2", "--eval-prompts", "8", "--out", str(tmp_path),
                           "--set", "rollout.backend=hf"])
    runs = rep.runs_by_name()
    cmd = rep.train_command(runs["dph_rl_js"], str(tmp_path / "dph_rl_js"), args)
    assert cmd[1:5] == ["-m", "launch.train", "--config", "configs/dph_rl.yaml"]
    assert "trainer.max_steps=4" in cmd and "trainer.eval_ks=[1,8,16]" in cmd and "trainer.eval_n=16" in cmd
    assert cmd[-2:] == ["algorithm.divergences.0.divergence=js", "rollout.backend=hf"]  # the user's --set wins
    assert not any(c.startswith(("algorithm.group_size", "data.", "trainer.lr")) for c in cmd)  # configs decide
    smoke = rep.parse_args(["--smoke", "--out", str(tmp_path)])
    assert (smoke.steps, smoke.eval_every, smoke.eval_prompts, smoke.eval_n) == (2, 1, 8, 16)
    assert set(rep.SMOKE_SIZES) <= set(rep.train_command(runs["grpo"], str(tmp_path), smoke))
    with pytest.raises(SystemExit):
        rep.parse_args(["--eval-n", "8", "--out", str(tmp_path)])  # pass@16 needs 16 samples


# ----------------------------------------------------------------------------- the whole script
@pytest.mark.runtime
@pytest.mark.timeout(1800)
def test_replicate_smoke_runs_all_five(tmp_path, tiny_models):
    out = tmp_path / "replication"
    cmd = [sys.executable, "benchmarks/replicate.py", "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    for name in ("results.md", "results.json", "replication.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    assert set(result["runs"]) == set(rep.RUN_NAMES)
    for name, run in result["runs"].items():
        steps = [p["step"] for p in run["curve"]]
        assert steps[0] == -1 and steps[-1] == 1, (name, steps)  # the initial policy and the final (2nd) step
        assert run["curve"][0]["win_rate"] == 0.5
        assert all(0 <= p[k] <= 1 for p in run["curve"] for k in ("pass@1", "pass@8", "pass@16", "win_rate"))
        assert (out / name / "train.log").is_file() and not (out / name / "checkpoints").exists()
    assert [c["status"] in ("held", "did not hold") for c in result["claims"]] == [True] * 4
    md = (out / "results.md").read_text()
    assert "| initial policy |" in md and "## Claims" in md and result["git"]["commit"] in md
