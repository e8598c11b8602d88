"""Faults caused for real (``RLPLAT_FAULT`` kills named actors the way a crash does)."""
import json
import os
import subprocess
import sys

import pytest

from tests.test_e2e import ROOT, SMALL

pytestmark = pytest.mark.runtime


def run(out, fault, *overrides):
    env = {**os.environ, "RLPLAT_FAULT": fault}
    cmd = [sys.executable, "-m", "launch.train", "--config", "configs/grpo.yaml", f"trainer.output_dir={out}",
           "trainer.max_steps=4", "rollout.backend=hf", *SMALL, *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_killed_rollout_scorer_and_reward_actors_are_restarted(tmp_path, tiny_models):
    out = tmp_path / "run"
    proc = run(out, "kill:rollout-0:1,kill:scorer-reference-0:2,kill:reward-0:3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("injected fault: killing actor") == 3 and "recovering and retrying" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["samples"] == 16 for r in rows)  # 4 prompts x 4 samples, every step: none lost or doubled
    assert rows[-1]["faults/actor_restarts"] >= 1
    assert all(r["sync/logprob_max_abs_diff"] < 1e-3 for r in rows)  # restarted engines got the weights back


def test_trainer_rank_failure_stops_with_a_clear_message_and_checkpoint_intact(tmp_path, tiny_models):
    out = tmp_path / "run"
    proc = run(out, "kill:trainer-rank1:2", "trainer.save_every=1")
    assert proc.returncode != 0
    assert "a trainer rank died" in proc.stderr and "trainer.resume=auto" in proc.stderr
    assert "checkpoints/step_000001" in proc.stderr
    assert sorted(os.listdir(out / "checkpoints")) == ["step_000000", "step_000001"]
    assert (out / "checkpoints" / "step_000001" / "hf" / "config.json").is_file()


def test_two_reference_scorers_match_one_and_survive_a_kill(tmp_path, grpo_reference_run):
    """``roles.reference.num_actors=2``: two named scorers share each step's rows, one of them is
    killed at step 1, and every step's reference log-probs (through ``div/kl_ref`` and the loss)
    equal a one-scorer run's (the shared reference run: the same config, checkpoints aside)."""
    two = tmp_path / "two"
    proc = run(two, "kill:scorer-reference-1:1", "roles.reference.num_actors=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "injected fault: killing actor scorer-reference-1 at step 1" in proc.stdout
    assert {"scorer-reference-0", "scorer-reference-1"} <= set(json.loads((two / "actors.json").read_text()))
    one_rows = grpo_reference_run[1]
    two_rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_rows] == [0, 1, 2, 3] and all(r["samples"] == 16 for r in two_rows)
    assert two_rows[0]["div/kl_ref"] < 1e-6  # step 0: the reshuffled reference rows equal the trainer's
    for a, b in zip(one_rows, two_rows):
        for key in ("div/kl_ref", "loss/policy", "reward/mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key, a[key], b[key])
    assert one_rows[-1]["div/kl_ref"] > 0  # the policy moved: the comparison is not of zeros
