"""Join a Ray cluster (under ``ray job submit``) or start an embedded one bound to 127.0.0.1."""
from __future__ import annotations

import logging
import os
from typing import List, NamedTuple, Optional

from actors import quiet
from rlplat.config.schema import RayConfig

ACTOR_ENV = {"TOKENIZERS_PARALLELISM": "false"}
_LOOPBACK = ("127.0.0.1", "localhost")


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
    imports ray. A driver joining a cluster is left alone (the other nodes must reach it)."""
    if cfg.host in _LOOPBACK and not joining_address(cfg):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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
    if address:  # under `ray job submit` the job's working_dir already puts user code on the path
        # No runtime_env here: a submitted job's own one would win anyway (Ray warns); the actors
        # quiet themselves (actors.quiet.apply in each __init__).
        context = ray.init(address=address, namespace=cfg.namespace, log_to_driver=True, logging_level=ray_level)
        return Cluster("joined", _dashboard_url(context))
    env = {**ACTOR_ENV, **quiet.environment(log_level)}
    # User code given as module:function (rewards, judges) must import in actors as on the driver.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    runtime_env = {"env_vars": env}
    context = ray.init(
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
