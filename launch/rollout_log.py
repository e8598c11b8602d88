"""``rollouts.jsonl``: N of each step's trained rollouts, so a user can read what the policy generates.

One JSON object per rollout: ``step`` (0-based, as in ``metrics.jsonl``), ``weight_version`` (the
engine weights that sampled it; ``step`` minus staleness), ``prompt``, ``response``, ``answer``,
``reward`` (the trained reward; null for a rehearsal row without one) and, with several reward
functions, ``rewards`` (each function's own value); with a tokenizer, ``prompt_text``: the prompt
as the policy saw it (its token ids decoded, special tokens and chat template included). Rows are drawn uniformly without replacement
from the step's trained batches with a generator seeded by (``trainer.seed``, step): a resumed run
writes the rows an uninterrupted one would, and the controller drops rows past the checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from rlplat.batch import Batch

FILENAME = "rollouts.jsonl"


def _plain(value: Any) -> Any:
    """JSON has no NaN (a failed reward): None instead."""
    return None if isinstance(value, float) and math.isnan(value) else value


def rollout_rows(step: int, batches: Sequence[Batch], n: int, seed: int,
                 decode: Optional[Callable[[List[int]], str]] = None) -> List[Dict[str, Any]]:
    """Up to ``n`` rows (fewer when the batches hold fewer rollouts) from ``batches``' rows that
    have a response text, in batch order. ``decode`` (token ids -> text): add ``prompt_text``."""
    rows: List[Dict[str, Any]] = []
    sources = []  # (batch, row) of each entry of rows: only the kept prompts are decoded
    for b in batches:
        m = b.meta
        if "response_text" not in m:  # not a rollout batch (preference pairs)
            continue
        none = [None] * len(b)
        rewards = b.rewards.tolist() if b.rewards is not None else none
        for i in range(len(b)):
            row = {"step": step, "weight_version": m.get("weight_version", none)[i], "prompt": m.get("prompt", none)[i],
                   "response": m["response_text"][i], "answer": m.get("answer", none)[i], "reward": _plain(rewards[i])}
            if m.get("reward_fns", none)[i] is not None:  # None: a rehearsal row, not rewarded this step
                row["rewards"] = {k: _plain(v) for k, v in m["reward_fns"][i].items()}
            rows.append(row)
            sources.append((b, i))
    keep = range(len(rows)) if len(rows) <= n else sorted(
        np.random.default_rng([seed, step]).choice(len(rows), n, replace=False).tolist())
    out = []
    for k in keep:
        if decode is not None:
            b, i = sources[k]
            rows[k]["prompt_text"] = decode(b.prompt_ids[i][b.prompt_mask[i].bool()].tolist())
        out.append(rows[k])
    return out


class RolloutLog:
    """Appends ``n`` rollouts per step to ``<run_dir>/rollouts.jsonl`` (``n`` = 0: writes nothing,
    creates no file)."""

    def __init__(self, run_dir: str, n: int, seed: int, tokenizer: Any = None) -> None:
        self.path = os.path.join(run_dir, FILENAME)
        self.n, self.seed = n, seed
        self.last_rows: List[Dict[str, Any]] = []  # the last step's rows (wandb shows them as a table)
        # Special tokens kept: a user checking the chat template wants to see its <bos> and markers.
        self.decode = None if tokenizer is None else (lambda ids: tokenizer.decode(ids, skip_special_tokens=False))

    def write(self, step: int, batches: Sequence[Batch]) -> List[Dict[str, Any]]:
        """Writes and returns the step's rows."""
        if self.n <= 0:
            return []
        rows = self.last_rows = rollout_rows(step, batches, self.n, self.seed, self.decode)
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return rows


__all__ = ["FILENAME", "RolloutLog", "rollout_rows"]
