"""Placement of the run's actors: what they ask Ray for, and whether the cluster can give it.

Without colocation every actor is placed by Ray wherever its ``num_cpus`` / ``num_gpus`` fit.
With ``resources.colocate: true`` one PACK placement group holds one bundle per trainer rank;
scorer ``j`` shares bundle ``j % num_ranks`` with a rank, so on GPUs a rank and a forward-only
scorer share a device when ``trainer_gpus + scorer_gpus <= 1`` (e.g. 0.8 + 0.2).

Ray never refuses a request no node can meet: the actor waits for one (the autoscaler logs
"No available node types can fulfill resource request") and the run sits there for ever.
``check_fits`` looks first, against the nodes the cluster has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from rlplat.algorithms.base import AlgorithmPlan
from rlplat.config.errors import ConfigError
from rlplat.config.schema import ResourcesConfig, RunConfig

_EPS = 1e-6  # Ray keeps resource amounts to 4 decimals


@dataclass(frozen=True)
class Demand:
    """``count`` actors of one kind (``what``), each asking Ray for ``each`` (resource name ->
    amount, zero amounts left out); ``keys``: the config keys that set ``each``."""

    what: str
    keys: str
    count: int
    each: Dict[str, float]


def _nonzero(**amounts: float) -> Dict[str, float]:
    return {k: v for k, v in amounts.items() if v > 0}


def scorer_counts(cfg: RunConfig, plan: AlgorithmPlan) -> Dict[str, int]:
    """Scorers per role, in role order: ``roles.<role>.num_actors``; the snapshot role (the
    policy itself, no role config) has one."""
    return {role: getattr(cfg.roles, role).num_actors if getattr(cfg.roles, role, None) is not None else 1
            for role in sorted(plan.scorer_roles)}


def demands(cfg: RunConfig, plan: AlgorithmPlan) -> List[Demand]:
    """What the actors every run starts ask for: engines, trainer ranks, scorers (or, colocated,
    the bundles holding ranks and scorers) and the reward worker. A loop's own actors (Nash-MP's
    judge, ``resources.reward_cpus``) come on top."""
    res, ranks = cfg.resources, cfg.trainer.num_ranks
    scorers = sum(scorer_counts(cfg, plan).values())
    out = [Demand("rollout engine", "resources.rollout_cpus, resources.rollout_gpus x rollout.tensor_parallel_size",
                  cfg.rollout.num_engines,
                  _nonzero(CPU=res.rollout_cpus, GPU=res.rollout_gpus * cfg.rollout.tensor_parallel_size))]
    if res.colocate:
        out += [Demand(f"colocated bundle {i} (trainer rank {i} and its scorers)",
                       "resources.trainer_cpus/_gpus + scorer_cpus/_gpus", 1, b)
                for i, b in enumerate(bundles(res, ranks, scorers))]
    else:
        out.append(Demand("trainer rank", "resources.trainer_cpus, resources.trainer_gpus", ranks,
                          _nonzero(CPU=res.trainer_cpus, GPU=res.trainer_gpus)))
        if scorers:
            out.append(Demand("scorer", "resources.scorer_cpus, resources.scorer_gpus", scorers,
                              _nonzero(CPU=res.scorer_cpus, GPU=res.scorer_gpus)))
    out.append(Demand("reward worker", "resources.reward_cpus", 1, _nonzero(CPU=res.reward_cpus)))
    return out


def _amounts(each: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(each.items())) or "nothing"


def shortfalls(wanted: Sequence[Demand], nodes: Sequence[Mapping[str, float]]) -> List[str]:
    """Why ``wanted`` cannot all be placed on ``nodes`` (each node's total resources, as
    ``ray.nodes()`` gives them); empty when they may be. Two necessary conditions: each actor
    fits on some node (an actor never spans nodes), and the sum fits the cluster's total."""
    problems = []
    for d in wanted:
        if d.count and not any(all(node.get(k, 0.0) + _EPS >= v for k, v in d.each.items()) for node in nodes):
            largest = max(nodes, key=lambda n: tuple(n.get(k, 0.0) for k in sorted(d.each)), default={})
            problems.append(f"one {d.what} asks for {_amounts(d.each)} ({d.keys}), more than any node has "
                            f"(the largest: {_amounts({k: largest.get(k, 0.0) for k in d.each})})")
    for resource in sorted({k for d in wanted for k in d.each}):
        need = sum(d.count * d.each.get(resource, 0.0) for d in wanted)
        have = sum(node.get(resource, 0.0) for node in nodes)
        if need > have + _EPS:
            parts = " + ".join(f"{d.count} x {d.each[resource]:g} ({d.what})" for d in wanted
                               if d.count and d.each.get(resource))
            problems.append(f"the actors ask for {need:g} {resource} in all ({parts}), the cluster has {have:g}")
    return problems


def cluster_nodes() -> List[Dict[str, float]]:
    """The total resources of each live node of the connected Ray cluster."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def check_fits(cfg: RunConfig, plan: AlgorithmPlan, nodes: Sequence[Mapping[str, float]], joined: bool) -> None:
    """Refuse (``ConfigError``) a run whose actors the embedded cluster's ``nodes``
    (``cluster_nodes()``) cannot hold. On a joined cluster an autoscaler may still add nodes, so a
    shortfall is printed as a warning instead."""
    problems = shortfalls(demands(cfg, plan), nodes)
    if not problems:
        return
    if joined:
        print(f"rlplat: warning: {'; '.join(problems)}. Ray waits until nodes that have them join.", flush=True)
        return
    raise ConfigError(f"{'; '.join(problems)}. Lower those resources.* keys, or give the embedded cluster more "
                      f"with ray.num_cpus (Ray would wait for ever instead)")


def bundles(res: ResourcesConfig, num_ranks: int, num_scorers: int) -> List[Dict[str, float]]:
    out = []
    for i in range(num_ranks):
        hosted = len(range(i, num_scorers, num_ranks))  # scorers placed in this bundle
        b = {"CPU": res.trainer_cpus + hosted * res.scorer_cpus, "GPU": res.trainer_gpus + hosted * res.scorer_gpus}
        out.append({k: v for k, v in b.items() if v > 0})
    return out


def colocated_group(res: ResourcesConfig, num_ranks: int, scorer_roles: Sequence[str], timeout_s: float = 600) -> Optional[Any]:
    """A ready placement group for ``resources.colocate``, or None when colocation is off."""
    if not res.colocate:
        return None
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(bundles(res, num_ranks, len(scorer_roles)), strategy="PACK", name="rlplat-colocated")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(f"resources.colocate: the cluster cannot fit bundles {bundles(res, num_ranks, len(scorer_roles))} "
                           f"within {timeout_s:.0f} s; lower trainer_/scorer_ cpus or gpus") from None
    return pg
