"""Bounded staleness (``trainer.max_staleness``) through the real CLI: generation of the next step
runs while the trainer updates, every trained batch is at most K weight versions old, and the
fault and resume guarantees of the synchronous loop still hold."""
import json

import pytest

from tests.test_e2e import assert_weights_arrived, train
from tests.test_faults import run as run_with_fault
from tests.test_resume import metrics, run as run_resumable

pytestmark = pytest.mark.runtime
ASYNC = ["trainer.max_staleness=1"]


def test_one_step_off_policy_grpo(tmp_path, tiny_models):
    out, rows, _ = train(tmp_path, "grpo", *ASYNC, "trainer.sync_check_every=2", steps=4)
    # Step 0 trains the batch its own weights sampled; every later batch was sampled one version back.
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert all(r["async/staleness_mean"] <= r["async/staleness_max"] <= 1 for r in rows)
    assert all(r["async/wait_s"] >= 0 and r["samples"] == 16 for r in rows)
    # The probe check runs on the first sync and every 2nd one: syncs 1, 2 and 4.
    assert ["sync/logprob_max_abs_diff" in r for r in rows] == [True, True, False, True]
    assert_weights_arrived([r for r in rows if "sync/logprob_max_abs_diff" in r])
    assert all(r["async/drain_s"] >= 0 for r in rows)
    # Sync 3 (no check) does not wait for the engines' load, and sync 2 before it was waited for:
    # sync 3 has no engine figures (sync 4, waited for, reports its own).
    assert ["async/idle_s" in r for r in rows] == [True, True, False, True]
    assert all(r["async/idle_s"] >= 0 and r["sync/engine_load_s"] > 0 for r in rows if "async/idle_s" in r)


def test_killed_rollout_actor_loses_and_duplicates_nothing_with_staleness(tmp_path, tiny_models):
    out = tmp_path / "run"
    proc = run_with_fault(out, "kill:rollout-0:2", *ASYNC)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "recovering and retrying" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["samples"] == 16 and r["async/staleness_max"] <= 1 for r in rows)


def test_resume_with_staleness_logs_each_step_once(tmp_path, tiny_models):
    out = tmp_path / "crashed"
    code, log = run_resumable(out, *ASYNC, fault="after_generate:2")
    assert code == 3, log[-5000:]
    code, log = run_resumable(out, *ASYNC, "trainer.resume=auto")
    assert code == 0, log[-5000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["async/staleness_max"] <= 1 for r in rows)
