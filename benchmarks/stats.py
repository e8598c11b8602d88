"""What the seed-sweep benchmarks share: seed statistics, the verdict rule, and the report's
machine and commit lines."""
from __future__ import annotations

import math
import os
import subprocess
from typing import Any, Dict, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and standard error of the mean."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / math.sqrt(n), "n": n}


def compare(a: Sequence[float], b: Sequence[float], direction: int) -> Dict[str, Any]:
    """Difference of means ``mean(a) - mean(b)`` with its standard error ``sqrt(se_a^2 + se_b^2)``
    and a verdict on the claim that it has the sign of ``direction`` (+1: a > b, -1: a < b, 0: a != b):
    "holds" / "does not hold" only beyond twice the standard error, else "inconclusive at this noise"."""
    sa, sb = mean_std(a), mean_std(b)
    diff = sa["mean"] - sb["mean"]
    se = math.sqrt(sa["se"] ** 2 + sb["se"] ** 2)
    if min(sa["n"], sb["n"]) < 2:
        verdict = "not tested: one seed"
    elif abs(diff) <= 2 * se:
        verdict = "inconclusive at this noise"
    elif direction == 0 or diff * direction > 0:
        verdict = "holds"
    else:
        verdict = "does not hold"
    return {"difference": diff, "standard_error": se, "verdict": verdict}


def machine_text(m: Dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return f"{m['cpu']}, {m['usable_cores']} usable cores, {m['ram_gib']} GiB, Python {m['python']} ({versions})"


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
