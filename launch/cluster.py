"""Join a Ray cluster (under ``ray job submit``) or start an embedded one bound to 127.0.0.1."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, NamedTuple, Optional

from actors import quiet
from rlplat.config.schema import RayConfig

ACTOR_ENV = {"TOKENIZERS_PARALLELISM": "false"}
_LOOPBACK = ("127.0.0.1", "localhost")
# Set by Ray in the environment of a `ray job submit` entrypoint (ray._private.runtime_env.constants).
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


# Options of an embedded cluster: a driver joining a running one cannot change how it was started.
EMBEDDED_ONLY = ("host", "num_cpus", "include_dashboard")


class Cluster(NamedTuple):
    mode: str  # "joined" or "embedded"
    dashboard_url: Optional[str]  # "http://127.0.0.1:8265"; None without a dashboard


def _dashboard_url(context) -> Optional[str]:
    """The dashboard's URL from ``ray.init``'s context. Ray moves to the next free port when 8265 is
    taken (another cluster on the machine), so the URL is read back, never assumed."""
    url = getattr(context, "dashboard_url", None)
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def joining_address(cfg: RayConfig) -> Optional[str]:
    """The cluster this job joins (``ray.address``, else RAY_ADDRESS), or None: start an embedded one."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def ignored_options(cfg: RayConfig) -> List[str]:
    """One warning per ``ray.host`` / ``ray.num_cpus`` / ``ray.include_dashboard`` set away from its
    default while the job joins an existing cluster, where ``start_ray`` cannot apply it."""
    address = joining_address(cfg)
    if not address:
        return []
    source = "ray.address" if cfg.address else "RAY_ADDRESS"
    default = RayConfig()
    return [f"ray.{key}={getattr(cfg, key)!r} is ignored: the job joins the existing Ray cluster at {address} "
            f"({source}), which keeps the settings it was started with"
            for key in EMBEDDED_ONLY if getattr(cfg, key) != getattr(default, key)]


def pin_to_loopback(cfg: RayConfig) -> None:
    """Make an embedded cluster really bind to 127.0.0.1.

    Ray replaces a loopback ``_node_ip_address`` by the machine's outward address unless its
    "local-only cluster" switch is set, which Ray reads once at import: call this before anything
    imports ray. A driver joining a cluster by a loopback address (a cluster on this machine bound
    to 127.0.0.1) is pinned too: without the switch Ray would look for that cluster's GCS at the
    machine's outward address. A driver joining any other address is left alone (the other nodes
    must reach it)."""
    address = joining_address(cfg)
    if (address is None and cfg.host in _LOOPBACK) or (address is not None and _address_host(address) in _LOOPBACK):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _address_host(address: str) -> str:
    """The host of a Ray address: ``127.0.0.1:6379``, ``ray://localhost:10001``, ``http://127.0.0.1:8265``."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")


def actor_environment(log_level: str) -> Dict[str, str]:
    """Environment variables of the run's actors: tokenizer threads off, ``actors.quiet``'s level,
    and the driver's working directory on PYTHONPATH, so that user code given as module:function
    (rewards, judges) imports in actors as on the driver."""
    env = {**ACTOR_ENV, **quiet.environment(log_level)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    return env


def start_ray(cfg: RayConfig, log_level: str = quiet.DEFAULT) -> Cluster:
    """Connect to ``cfg.address`` / ``RAY_ADDRESS`` if given, else start a local cluster.

    Returns the mode ("joined" or "embedded") and the dashboard URL, if the cluster has one. The
    embedded cluster and its dashboard bind to ``cfg.host`` (127.0.0.1 by default), never to a
    public interface. ``log_level`` is ``trainer.log_level``:
    it sets the driver's "ray" logger and, through the job's runtime_env, what actors print
    (``actors.quiet``). ``log_to_driver`` stays on in every case: actor errors must reach the user.
    """
    import ray

    if ray.is_initialized():
        return Cluster("joined", None)
    # "Started a local Ray instance." and the like are Ray's INFO lines.
    ray_level = logging.WARNING if quiet.is_quiet(log_level) else logging.INFO
    address = joining_address(cfg)
    runtime_env = {"env_vars": actor_environment(log_level)}
    if address:
        # Under `ray job submit` the job's own runtime_env (working_dir) puts user code on the path
        # and wins over a driver's (Ray merges and refuses conflicts): pass none there. A driver
        # joining by address (`ray.address`, RAY_ADDRESS) gives its actors what an embedded run does.
        submitted = RAY_JOB_CONFIG_ENV in os.environ
        context = ray.init(address=address, namespace=cfg.namespace, log_to_driver=True, logging_level=ray_level,
                           runtime_env=None if submitted else runtime_env)
        return Cluster("joined", _dashboard_url(context))
    context = ray.init(
        address="local",  # a new cluster: never one that `ray start` left running (/tmp/ray/ray_current_cluster)
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.host,
        _node_ip_address=cfg.host,
        namespace=cfg.namespace,
        runtime_env=runtime_env,
        log_to_driver=True,
        logging_level=ray_level,
    )
    return Cluster("embedded", _dashboard_url(context))
