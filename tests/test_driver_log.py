"""The driver log is for the user: a default run (configs/grpo.yaml, 3 steps, through the CLI)
prints mostly rlplat's own lines, and at most 20% third-party ones (``actors.quiet``)."""
import os
import subprocess
import sys

import pytest

from tests.test_e2e import ROOT, SMALL

pytestmark = pytest.mark.runtime

OWN = ("rlplat:", "step ", "eval ")  # rlplat's own lines: notices, progress lines, held-out evaluations


def third_party_lines(log: str):
    """The non-blank lines of ``log`` that rlplat did not print."""
    return [line for line in log.splitlines() if line.strip() and not line.startswith(OWN)]


def test_third_party_lines_are_told_apart():
    log = "rlplat: grpo on a embedded Ray cluster\n\nstep 1/3 reward 0.5\n(VLLMRolloutEngine pid=1) INFO x\neval after step 3: ..."
    assert third_party_lines(log) == ["(VLLMRolloutEngine pid=1) INFO x"]


def test_default_run_driver_log_is_mostly_rlplat(tmp_path, tiny_models):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.train", "--config", "configs/grpo.yaml", f"trainer.output_dir={out}",
           "trainer.max_steps=3", *SMALL]
    env = {k: v for k, v in os.environ.items() if k not in ("RLPLAT_LOG_LEVEL", "VLLM_LOGGING_LEVEL")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]
    lines = [line for line in log.splitlines() if line.strip()]
    noise = third_party_lines(log)
    share = len(noise) / len(lines)
    print(f"driver log: {len(lines)} lines, {len(noise)} third-party ({share:.0%})")
    assert share <= 0.20, "third-party lines in the driver log:\n" + "\n".join(noise)
    progress = [line for line in lines if line.startswith("step ")]
    assert [p.split()[1] for p in progress] == ["1/3", "2/3", "3/3"], progress
    assert all("div/kl_ref " in p and "ETA" in p for p in progress), progress
