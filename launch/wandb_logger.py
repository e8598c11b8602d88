"""Weights & Biases mirror of a run (``trainer.wandb``): every step's metrics and the resolved config.

On when ``trainer.loggers`` lists ``wandb`` (otherwise nothing is imported). ``trainer.wandb.mode``:
``offline`` (default: the run is written under ``<output_dir>/wandb/offline-run-*``; ``wandb sync``
uploads it later, for machines without network) or ``online``. With ``trainer.log_samples`` the
step's sample rows are also logged as a table ``samples`` (prompt, response, reward, answer). wandb is an optional dependency (``pip install rlplat[wandb]``); validation
refuses an enabled mode without it before Ray starts.

x axis: wandb's ``step`` is the number of updates done, ``metrics["step"] + 1`` (wandb steps must
be >= 0 and increase; the evaluation before training, step -1, is logged at 0). The run id is kept in
``<output_dir>/wandb_run_id`` so ``trainer.resume=auto`` continues the same wandb run.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Dict, List

from launch.monitoring import _as_float
from rlplat.config.schema import WandbConfig

RUN_ID_FILE = "wandb_run_id"


class WandbLogger:
    """``write(metrics)`` / ``close()`` like ``MetricsWriter``; ``config`` is the resolved config as a dict."""

    def __init__(self, run_dir: str, wandb_cfg: WandbConfig, config: Dict[str, Any]) -> None:
        import wandb  # optional: only imported when trainer.loggers lists it

        self._wandb = wandb
        id_path = os.path.join(run_dir, RUN_ID_FILE)
        if os.path.isfile(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            run_id = uuid.uuid4().hex[:8]  # wandb run ids: [a-z0-9], 8 characters as wandb makes them
            with open(id_path, "w") as f:
                f.write(run_id)
        self.run = wandb.init(project=wandb_cfg.project, name=wandb_cfg.name or os.path.basename(os.path.abspath(run_dir)),
                              mode=wandb_cfg.mode, dir=run_dir, config=config, id=run_id, resume="allow",
                              settings=wandb.Settings(console="off", silent=True))  # the driver log is ours

    def write(self, metrics: Dict[str, Any]) -> None:
        values = {k: v for k, v in ((k, _as_float(v)) for k, v in metrics.items()) if v is not None}
        self.run.log(values, step=int(metrics["step"]) + 1)

    def write_samples(self, step: int, rows: List[Dict[str, Any]]) -> None:
        """The step's ``rollouts.jsonl`` rows as a wandb table (one row per sample)."""
        columns = ["step", "prompt", "response", "reward", "answer"]
        table = self._wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        self.run.log({"samples": table}, step=int(step) + 1)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


__all__ = ["RUN_ID_FILE", "WandbLogger"]
