"""Join a Ray cluster (under ``ray job submit``) or start an embedded one bound to 127.0.0.1."""
from __future__ import annotations

import os

from rlplat.config.schema import RayConfig

ACTOR_ENV = {"TOKENIZERS_PARALLELISM": "false"}
_LOOPBACK = ("127.0.0.1", "localhost")


def pin_to_loopback(cfg: RayConfig) -> None:
    """Make an embedded cluster really bind to 127.0.0.1.

    Ray replaces a loopback ``_node_ip_address`` by the machine's outward address unless its
    "local-only cluster" switch is set, which Ray reads once at import: call this before anything
    imports ray. A driver joining a cluster is left alone (the other nodes must reach it)."""
    if cfg.host in _LOOPBACK and not (cfg.address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start_ray(cfg: RayConfig) -> str:
    """Connect to ``cfg.address`` / ``RAY_ADDRESS`` if given, else start a local cluster.

    Returns "joined" or "embedded". The embedded cluster and its dashboard bind to ``cfg.host``
    (127.0.0.1 by default), never to a public interface.
    """
    import ray

    if ray.is_initialized():
        return "joined"
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:  # under `ray job submit` the job's working_dir already puts user code on the path
        ray.init(address=address, namespace=cfg.namespace, log_to_driver=True)
        return "joined"
    env = dict(ACTOR_ENV)
    # User code given as module:function (rewards, judges) must import in actors as on the driver.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    runtime_env = {"env_vars": env}
    ray.init(
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.host,
        _node_ip_address=cfg.host,
        namespace=cfg.namespace,
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    return "embedded"
