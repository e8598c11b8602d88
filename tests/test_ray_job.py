"""``ray job submit`` against a real local head on 127.0.0.1: the documented cluster entry point."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import free_port, own_cluster_env
from tests.test_e2e import ROOT, SMALL

pytestmark = pytest.mark.runtime
BIN = os.path.dirname(sys.executable)


@pytest.fixture
def ray_head():
    """A head node started with ``ray start --head --block`` in its own process group."""
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = own_cluster_env(RAY_AUTH_MODE="token", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    head = subprocess.Popen(
        [f"{BIN}/ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2", "--disable-usage-stats",
         "--dashboard-agent-listen-port", str(free_port()),
         "--temp-dir", temp_dir],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while time.time() < deadline:
        probe = subprocess.run([f"{BIN}/ray", "job", "list", "--address", address], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, head.stdout.read()
        time.sleep(2)
    else:
        pytest.fail("the local Ray head did not come up within 180 s")
    yield address, env
    # SIGKILL, not SIGTERM: `ray start --block` shuts down gracefully for about 30 s (34 s of CI's
    # teardown), and nothing of this throwaway head is kept; the group holds its raylet and workers.
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_training(tmp_path, tiny_models, ray_head):
    address, env = ray_head
    out = tmp_path / "run"
    cmd = [f"{BIN}/ray", "job", "submit", "--address", address, "--working-dir", ROOT, "--",
           sys.executable, "-m", "launch.train", "--config", "configs/grpo.yaml", f"trainer.output_dir={out}",
           "trainer.max_steps=2", "rollout.backend=hf", *SMALL]
    for _ in range(30):  # on a loaded machine the head's job agent can come up after the dashboard
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode == 0 or "No available agent to submit job" not in proc.stdout + proc.stderr:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout
    assert "on a joined Ray cluster" in proc.stdout  # the driver joined the head, it did not start its own
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
