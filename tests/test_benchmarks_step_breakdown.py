"""benchmarks/step_breakdown.py: the busy-time arithmetic (union of task intervals clipped to a
step's window, step windows from the driver's progress lines, roles from actor classes) on
hand-made intervals, and a runtime smoke run of the script (2 real training steps)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("step_breakdown", os.path.join(ROOT, "benchmarks", "step_breakdown.py"))
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)


def test_busy_seconds_merges_overlaps_and_clips_to_the_window():
    assert bd.busy_seconds([], 0, 10) == 0.0
    assert bd.busy_seconds([(1, 3), (2, 4), (6, 7)], 0, 10) == pytest.approx(4.0)  # (1, 4) + (6, 7)
    assert bd.busy_seconds([(-5, 2), (9, 20)], 0, 10) == pytest.approx(3.0)  # clipped at both ends
    assert bd.busy_seconds([(11, 12), (-3, -1)], 0, 10) == 0.0  # outside the window
    assert bd.busy_seconds([(1, 9), (2, 3), (4, 5)], 0, 10) == pytest.approx(8.0)  # nested


def test_step_windows_place_steps_from_progress_lines_and_leave_evaluation_out():
    # Run started at t=1000; the progress lines arrive 0.01-0.05 s after each row is written.
    rows = [{"step": 0, "time/wall": 12.0, "time/step": 5.0},
            {"step": 1, "time/wall": 20.0, "time/step": 3.0, "eval/seconds": 2.0}]
    progress = [(1012.05, 0), (1020.01, 1)]
    windows = bd.step_windows(rows, progress)
    assert windows[0] == pytest.approx((1007.01, 1012.01))
    assert windows[1] == pytest.approx((1015.01, 1018.01))  # ends before the step's evaluation
    with pytest.raises(RuntimeError, match="no progress line"):
        bd.step_windows(rows, [])


def test_busy_by_role_sums_actors_of_a_role_and_keeps_unknown_classes():
    actors = {
        "a": ("VLLMRolloutEngine", [(0, 4)]),
        "b": ("TrainerRank", [(3, 6)]), "c": ("TrainerRank", [(3, 5), (4, 6)]),
        "d": ("Scorer", [(2, 3)]), "e": ("RewardWorker", [(2.5, 3)]), "f": ("Judge", [(0, 1)]),
    }
    busy, active, counts = bd.busy_by_role(actors, [(0, 5), (5, 10)])
    assert counts == {"rollout": 1, "trainer": 2, "scorer": 1, "reward": 1, "Judge": 1}
    assert list(busy[0]) == ["rollout", "scorer", "trainer", "reward", "Judge"]
    assert busy[0] == pytest.approx({"rollout": 4, "scorer": 1, "trainer": 4, "reward": 0.5, "Judge": 1})
    assert busy[1] == pytest.approx({"rollout": 0, "scorer": 0, "trainer": 2, "reward": 0, "Judge": 0})
    # Time a role has at least one actor at work: the two trainer ranks' (3, 5) counts once.
    assert active[0] == pytest.approx({"rollout": 4, "scorer": 1, "trainer": 2, "reward": 0.5, "Judge": 1})
    steps = bd.report_rows([{"step": 0, "time/step": 5.0}, {"step": 1, "time/step": 5.0}], busy, active)
    assert steps[0]["total_busy_over_wall"] == pytest.approx(10.5 / 5)  # overlap shows as > 1
    assert steps[0]["roles_over_wall"] == pytest.approx(8.5 / 5)
    assert steps[1]["roles_over_wall"] == pytest.approx(1 / 5)  # the ranks side by side, no other role
    assert steps[0]["busy_over_wall"]["trainer"] == pytest.approx(0.8)
    table = bd.format_table(steps, counts)
    assert "trainer(2)" in table and "rollout(1)" in table and "total/w" in table and "roles/w" in table


def test_timed_lines_note_progress_lines_split_across_writes():
    import io

    sink = io.StringIO()
    stream = bd._TimedLines(sink)
    stream.write("rlplat: grpo on an embedded Ray cluster\nstep 1/2 reward")
    stream.write(" 0.5 ...\n")
    stream.write("step 2/2 reward 0.6\nstep 3 is not a progress line\n")
    assert [step for _, step in stream.progress] == [0, 1]
    assert sink.getvalue().count("\n") == 4


def test_output_dir_override_is_the_last_one():
    assert bd.output_dir_of(["a=1", "trainer.output_dir=x", "trainer.output_dir=y"]) == "y"
    assert bd.output_dir_of(["a=1"]) is None


@pytest.mark.runtime
def test_step_breakdown_smoke_writes_into_the_given_output_dir(tmp_path, tiny_models):
    from tests.test_e2e import SMALL

    out = tmp_path / "breakdown"
    cmd = [sys.executable, "benchmarks/step_breakdown.py", "--config", "configs/grpo.yaml",
           f"trainer.output_dir={out}", "trainer.max_steps=3", *SMALL]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    report = json.loads((out / "step_breakdown.json").read_text())
    assert report["run_dir"] == str(out) and (out / "step_breakdown.log").is_file()
    assert report["actors"] == {"rollout": 1, "scorer": 1, "trainer": 2, "reward": 1}
    for role, n in report["actors"].items():
        assert f"{role}({n})" in proc.stdout
    assert [s["step"] for s in report["steps"]] == [0, 1]  # the last step's task events may be lost: not reported
    for s in report["steps"]:
        for role, n in report["actors"].items():
            # every role works in every step of the synchronous loop, and no actor more than the step lasts
            assert 0 < s["busy_s"][role] <= n * s["wall_s"] + 1e-6, (role, s)
        assert s["total_busy_over_wall"] == pytest.approx(sum(s["busy_s"].values()) / s["wall_s"])
        assert 0 < s["roles_over_wall"] <= s["total_busy_over_wall"] + 1e-9
