"""Shared fixtures. One real local Ray cluster (bound to 127.0.0.1) serves every runtime test:
starting Ray costs ~15 s on 2 cores, so it is started once per session, on first use."""
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep every Ray port of the test clusters on 127.0.0.1 (see launch.cluster.pin_to_loopback).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="rlplat-tests",
                 log_to_driver=False, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Paths of the built-in tiny policy and teacher (built once into a per-session cache)."""
    from rlplat.models.tiny import ensure_tiny_models

    # The CLI runs in the tests resolve builtin:tiny-* through the same cache (inherited env).
    os.environ.setdefault("RLPLAT_CACHE", str(tmp_path_factory.mktemp("rlplat-cache")))
    return ensure_tiny_models(["policy", "teacher"])  # built side by side, one process each
