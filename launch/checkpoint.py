"""Checkpoints of a run: ``<run_dir>/checkpoints/step_<N>/`` holding

    deepspeed/        DeepSpeed state of every rank (model, optimizer, scheduler)
    hf/               the policy in Hugging Face format (``from_pretrained`` and vLLM load it)
    controller.json   step, loop state (data position, Nash-MP iteration, ...), probe log-probs

A checkpoint is written under ``step_<N>.tmp`` and renamed when complete, so a crash mid-write
leaves nothing that ``latest`` would pick up; only the last ``keep_last`` are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional

_STEP_DIR = re.compile(r"^step_(\d+)$")


class Checkpointer:
    def __init__(self, run_dir: str, keep_last: int) -> None:
        self.root = os.path.join(run_dir, "checkpoints")
        self.keep_last = keep_last

    def complete(self) -> List[str]:
        """Complete checkpoint directories, oldest first."""
        if not os.path.isdir(self.root):
            return []
        found = [(int(m.group(1)), d) for d in os.listdir(self.root) if (m := _STEP_DIR.match(d))]
        return [os.path.join(self.root, d) for _, d in sorted(found)]

    def latest(self) -> Optional[str]:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, trainer, state: Dict[str, Any]) -> str:
        final = os.path.join(self.root, f"step_{step:06d}")
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        trainer.save_checkpoint(os.path.join(tmp, "deepspeed"), tag="state")
        trainer.export_hf(os.path.join(tmp, "hf"))
        with open(os.path.join(tmp, "controller.json"), "w") as f:
            json.dump({"step": step, **state}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.complete()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: str, trainer) -> Dict[str, Any]:
        """Restore the trainer from ``path`` and return the controller state saved with it."""
        with open(os.path.join(path, "controller.json")) as f:
            state = json.load(f)
        trainer.load_checkpoint(os.path.join(path, "deepspeed"), tag="state")
        return state
