"""What the seed-sweep benchmarks share: seed statistics, the verdict rule, and the report's
machine and commit lines."""
from __future__ import annotations

import math
import os
import subprocess
from typing import Any, Dict, List, Optional, Sequence, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and standard error of the mean."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / math.sqrt(n), "n": n}


ONE_SEED = "inconclusive (one seed)"


def verdict(difference: float, standard_error: Optional[float], n: int, one_seed: str = ONE_SEED) -> str:
    """Verdict on a claim from its ``difference`` signed so that positive = as claimed, and that
    difference's standard error, with ``n`` seeds behind it (the fewer of its sides): "holds"
    beyond +2 standard errors, "does not hold" below -2, else "inconclusive at this noise";
    with ``n < 2`` the standard error is undefined and the verdict is ``one_seed``."""
    if n < 2:
        return one_seed
    if difference > 2 * standard_error:
        return "holds"
    if difference < -2 * standard_error:
        return "does not hold"
    return "inconclusive at this noise"


def claim_difference(a: Sequence[float], b: Union[Sequence[float], float], direction: int) -> Dict[str, Any]:
    """The claim that ``mean(a)`` exceeds ``b`` (``direction`` +1) or falls below it (-1).

    a  one value per seed;  b  one value per seed, or a float: an exact constant (a threshold),
       which adds no standard error and no seed count
    returns  difference ``direction * (mean(a) - mean(b))`` (positive = as claimed), standard_error
             ``sqrt(se_a^2 + se_b^2)`` with ``se = sample std / sqrt(n)`` per side (None with fewer than
             two seeds), n (seeds of the smaller side) and ``verdict`` (``verdict``)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    sa = mean_std(a)
    sb = {"mean": float(b), "se": 0.0, "n": sa["n"]} if isinstance(b, (int, float)) else mean_std(b)
    diff = direction * (sa["mean"] - sb["mean"]) + 0.0  # + 0.0: no -0.0
    n = min(sa["n"], sb["n"])
    se = math.sqrt(sa["se"] ** 2 + sb["se"] ** 2) if n >= 2 else None
    return {"difference": diff, "standard_error": se, "n": n, "verdict": verdict(diff, se, n)}


def compare(a: Sequence[float], b: Sequence[float], direction: int) -> Dict[str, Any]:
    """Difference of means ``mean(a) - mean(b)`` with its standard error ``sqrt(se_a^2 + se_b^2)``
    and a verdict on the claim that it has the sign of ``direction`` (+1: a > b, -1: a < b, 0: a != b):
    "holds" / "does not hold" only beyond twice the standard error, else "inconclusive at this noise"
    (one seed: "not tested: one seed")."""
    sa, sb = mean_std(a), mean_std(b)
    diff = sa["mean"] - sb["mean"]
    se = math.sqrt(sa["se"] ** 2 + sb["se"] ** 2)
    signed = diff * direction if direction else abs(diff)
    return {"difference": diff, "standard_error": se,
            "verdict": verdict(signed, se, min(sa["n"], sb["n"]), one_seed="not tested: one seed")}


def machine_text(m: Dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return f"{m['cpu']}, {m['usable_cores']} usable cores, {m['ram_gib']} GiB, Python {m['python']} ({versions})"


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_dirty() -> List[str]:
    """Tracked files with uncommitted changes (``git status --porcelain``; [] outside git)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]
