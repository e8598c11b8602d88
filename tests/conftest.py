"""Shared fixtures and the suite's one Ray cluster policy.

One real local Ray cluster (bound to 127.0.0.1) serves every runtime test: starting Ray costs
seconds on 2 cores, so it is started once per session, on the first test marked ``runtime``, and
its address is exported as ``RAY_ADDRESS``: the pytest process uses it in-process, and every
``python -m launch.train`` (or benchmark) that a test starts joins it instead of starting an
embedded cluster of its own. No test module calls ``ray.init`` / ``ray.shutdown`` itself. A test
that must own a cluster (``ray job submit`` against its own head, the dashboard, a multi-node
cluster, an embedded run's refusal) starts it in a subprocess whose environment has no
``RAY_ADDRESS`` (``own_cluster_env``), so it can never collide with the session cluster.
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Dict

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep every Ray port of the test clusters on 127.0.0.1 (see launch.cluster.pin_to_loopback).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Token authentication, Ray's default for a head started with `ray start`: set before anything
# imports ray (it reads the mode once), so this process and every driver it starts present the token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Logical CPUs of the session cluster. More than the machine's 2 cores on purpose: an actor that a
# test leaves idle (a module fixture not yet torn down) must not make a later run wait for ever; a
# run's own actors ask for at most 2 (launch.placement), as on the embedded cluster.
SESSION_CPUS = 4


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items):
    """A test that needs the trained built-in models (the ``tiny_models`` fixture) is a runtime
    test: on a cold machine the builds take minutes, so the fast tier (``-m "not runtime"``) never
    waits for them, and CI can build them while the fast tier runs."""
    for item in items:
        if "tiny_models" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.runtime)


def own_cluster_env(**extra: str) -> Dict[str, str]:
    """This process's environment without ``RAY_ADDRESS``, plus ``extra``: for a subprocess that
    starts (and owns) its own Ray cluster rather than joining the session's."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster: a head started with ``ray start`` in a process group of its own,
    every port chosen free (the dashboard agent's default 52365 stays free for a cluster a test
    owns) and a temp dir of its own (so a plain ``ray.init()`` never finds it); this process joins
    it, and ``RAY_ADDRESS`` makes every driver a test starts join it too."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    address = f"127.0.0.1:{free_port()}"
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    # The head and every driver authenticate with ~/.ray/auth_token: made here on a machine without one.
    subprocess.run([ray_bin, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=120)
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1",
         "--port", address.rsplit(":", 1)[1], "--num-cpus", str(SESSION_CPUS), "--include-dashboard", "false",
         "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", "--temp-dir", temp_dir],
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)  # its process group: the head's processes stay in it
    try:
        log, _ = head.communicate(timeout=180)
        assert head.returncode == 0, log
        os.environ["RAY_ADDRESS"] = address
        ray.init(address=address, namespace="rlplat-tests", log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        yield ray
    finally:  # also when the head or the join failed: no Ray process outlives the session
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # `ray start` has exited; its group is the head's processes
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _runtime_tests_use_the_session_cluster(request):
    """Every test marked ``runtime`` runs with the session cluster up (and ``RAY_ADDRESS`` set)."""
    if request.node.get_closest_marker("runtime") is not None:
        request.getfixturevalue("ray_cluster")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Paths of the built-in tiny policy and teacher (built once into a per-session cache, unless
    ``RLPLAT_CACHE`` already names one: CI builds them in a stage of its own first)."""
    from rlplat.models.tiny import ensure_tiny_models

    # The CLI runs in the tests resolve builtin:tiny-* through the same cache (inherited env).
    if not os.environ.get("RLPLAT_CACHE"):
        os.environ["RLPLAT_CACHE"] = str(tmp_path_factory.mktemp("rlplat-cache"))
    return ensure_tiny_models(["policy", "teacher"])  # built side by side, one process each


@pytest.fixture(scope="session")
def grpo_reference_run(tiny_models, ray_cluster, tmp_path_factory):
    """One uninterrupted 4-step GRPO run (HF engine, ``tests.test_e2e.SMALL`` sizes, a checkpoint
    every step, the last 2 kept) that the resume and fault tests compare with: (run dir, metrics rows).
    Checkpoints do not change what a run computes, so a run without them is compared with it too."""
    from tests.test_resume import metrics, run

    out = tmp_path_factory.mktemp("grpo-reference") / "run"
    code, log = run(out)
    assert code == 0, log[-5000:]
    return out, metrics(out)
