"""Placement of the trainer ranks and scorers (``resources.colocate``).

Without colocation every actor is placed by Ray wherever its ``num_cpus`` / ``num_gpus`` fit.
With ``resources.colocate: true`` one PACK placement group holds one bundle per trainer rank;
scorer ``j`` shares bundle ``j % num_ranks`` with a rank, so on GPUs a rank and a forward-only
scorer share a device when ``trainer_gpus + scorer_gpus <= 1`` (e.g. 0.8 + 0.2).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from rlplat.config.schema import ResourcesConfig


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
