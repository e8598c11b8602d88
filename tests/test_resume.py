"""Checkpoints and resume: a run killed mid-step and restarted with ``trainer.resume=auto`` logs
every step exactly once and, with the same seed, the same metrics as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.test_e2e import ROOT, SMALL

pytestmark = pytest.mark.runtime
COMPARED = ("reward/mean", "loss/policy", "div/kl_ref", "actor/entropy", "response/length_mean", "samples")


def train_cli(config, *args, fault=None):
    """``python -m launch.train --config configs/<config>.yaml *args`` with ``RLPLAT_FAULT=fault``;
    returns (exit status, stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "RLPLAT_FAULT"}
    if fault:
        env["RLPLAT_FAULT"] = fault
    cmd = [sys.executable, "-m", "launch.train", "--config", f"configs/{config}.yaml", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log, _ = proc.communicate(timeout=900)
    try:  # an abruptly killed driver leaves its embedded Ray behind: clean the whole session
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.returncode, log


def run(out, *overrides, fault=None):
    return train_cli("grpo", f"trainer.output_dir={out}", "trainer.max_steps=4", "trainer.save_every=1",
                     "trainer.keep_last=2", "rollout.backend=hf", *SMALL, *overrides, fault=fault)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_exactly(tmp_path, grpo_reference_run):
    crash_dir = tmp_path / "crashed"
    code, log = run(crash_dir, fault="after_generate:2")
    assert code == 3, log[-5000:]
    assert [r["step"] for r in metrics(crash_dir)] == [0, 1]
    ckpts = sorted(os.listdir(crash_dir / "checkpoints"))
    assert ckpts == ["step_000000", "step_000001"]  # keep_last=2, no half-written .tmp left as complete

    code, log = run(crash_dir, "trainer.resume=auto")
    assert code == 0, log[-5000:]
    assert "resumed from" in log and "continuing at step 3" in log
    resumed, reference = metrics(crash_dir), grpo_reference_run[1]
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    walls = [r["time/wall"] for r in resumed]  # the resumed run's clock continues the checkpoint's
    assert walls == sorted(walls)
    for a, b in zip(resumed, reference):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key, a[key], b[key])
    assert sorted(os.listdir(crash_dir / "checkpoints")) == ["step_000002", "step_000003"]


def test_fresh_run_refuses_to_overwrite_a_finished_run(grpo_reference_run):
    out, rows = grpo_reference_run
    code, log = run(out)  # the same run again, without trainer.resume=auto
    assert code == 2 and "trainer.resume=auto" in log
    assert metrics(out) == rows  # nothing written over
