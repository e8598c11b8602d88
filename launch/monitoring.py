"""Live per-step metrics: Ray (Prometheus, hence the Ray dashboard / Grafana) and TensorBoard.

``metrics.jsonl`` (``launch.metrics.MetricsWriter``) stays the record of a run; this module only
mirrors each step's dict to the two viewers.

Prometheus names: ``prometheus_name(key)`` is ``"rlplat_" + key`` with every character outside
``[a-zA-Z0-9_]`` replaced by ``"_"`` ("reward/mean" -> "rlplat_reward_mean", "half/loss/policy"
-> "rlplat_half_loss_policy"); case is kept. The prefix makes every name start with a letter and
groups the platform's metrics. Ray's exporter adds its own ``ray_`` prefix, so the scraped series
is ``ray_rlplat_reward_mean{run="<run name>", ...}``. Two keys that sanitise to the same name (e.g.
"a/b" and "a_b") would overwrite one another, so the later one seen gets ``"_" + sha1(key)[:8]``
appended and a warning: names stay a pure function of the key sequence, and no series is lost.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Dict, Optional

logger = logging.getLogger(__name__)

PREFIX = "rlplat_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(key: str) -> str:
    """The Prometheus metric name of a metrics key, before collision handling (see module doc)."""
    return PREFIX + _INVALID.sub("_", key)


def _as_float(value) -> Optional[float]:
    """A number as float; None for what no viewer can plot (strings, None, lists, multi-element tensors)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


class MetricsExporter:
    """Mirrors each step's ``{key: float}`` dict (with ``"step"``) to Ray gauges and TensorBoard.

    Ray: one ``ray.util.metrics.Gauge`` per key, created on first sight, tagged ``run=<run_name>`` so
    several runs on one cluster are told apart. Gauges only export from a process connected to Ray
    (the driver is), so with Ray not initialised the Ray side is skipped silently. A value reaches the
    node's ``/metrics`` endpoint (what Prometheus scrapes) within ``RAY_metrics_report_interval_ms``
    (10 s by default).
    TensorBoard: scalars under ``<run_dir>/tensorboard`` with ``global_step = metrics["step"]``,
    flushed every step. Values that are not numbers are skipped by both.
    """

    def __init__(self, run_dir: str, run_name: str, enable_ray: bool = True, enable_tensorboard: bool = True) -> None:
        self.run_name = run_name
        self.enable_ray = enable_ray
        self._gauges: Dict[str, object] = {}  # metrics key -> Gauge
        self._names: Dict[str, str] = {}  # metrics key -> Prometheus name
        self._owner: Dict[str, str] = {}  # Prometheus name -> metrics key (collision check)
        self._tb = None
        if enable_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir = os.path.join(run_dir, "tensorboard")
            self._tb = SummaryWriter(log_dir=self.tensorboard_dir)

    def name_of(self, key: str) -> str:
        """The Prometheus name given to ``key`` (assigned on first call, then fixed)."""
        if key not in self._names:
            name = prometheus_name(key)
            if self._owner.get(name, key) != key:
                clash = self._owner[name]
                name = f"{name}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
                logger.warning("metrics keys %r and %r share the Prometheus name; %r is exported as %s",
                               clash, key, key, name)
            self._names[key] = name
            self._owner[name] = key
        return self._names[key]

    def write(self, metrics: Dict[str, float]) -> None:
        if "step" not in metrics:
            raise KeyError(f"MetricsExporter.write needs a 'step' key; got keys {sorted(metrics)}")
        step = int(metrics["step"])
        values = {k: v for k, v in ((k, _as_float(v)) for k, v in metrics.items()) if v is not None}
        if self._tb is not None:
            for key, value in values.items():
                if key != "step":  # the x axis already
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if self.enable_ray:
            self._write_ray(values)

    def _write_ray(self, values: Dict[str, float]) -> None:
        import ray

        if not ray.is_initialized():
            return
        from ray.util.metrics import Gauge

        tags = {"run": self.run_name}
        for key, value in values.items():
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = self._gauges[key] = Gauge(self.name_of(key), description=f"rlplat metric {key}", tag_keys=("run",))
            gauge.set(value, tags=tags)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
