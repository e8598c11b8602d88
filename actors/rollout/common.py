"""What every rollout engine shares: the ``Sample`` an engine draws, the ``Batch`` built from them
(``build_rollout_batch``), prompt-length checks, the weight-version rule and the idle clock.
The engine modules import this, not their package (``actors/rollout/__init__.py`` imports them).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from rlplat.batch import Batch
from rlplat.rewards.builtin import ENV_REWARD_COLUMN

@dataclass
class Sample:
    """One sampled response: ``token_ids`` (EOS included when generated) and the log-prob (nats)
    with which the engine's sampler drew each of them (temperature, top-k/top-p applied).
    A multi-turn episode (``actors.rollout.episodes``) also has ``loss_mask`` (1 on the model's
    tokens, 0 on observations, whose log-probs are 0.0) and ``episode`` (its turns, counters,
    finish reason and environment reward)."""

    token_ids: List[int]
    logprobs: List[float]
    text: str
    finish_reason: str  # "stop" (EOS / stop token) | "length" (hit max_new_tokens)
    loss_mask: Optional[List[int]] = None
    episode: Optional[Dict[str, Any]] = None


class StaleWeightsError(RuntimeError):
    """The engine does not hold the weights the caller expects (it was restarted, say)."""


class IdleClock:
    """Seconds an engine waited for weights: from the end of its last ``generate`` to the start
    of the next weight load (0 when weights come before any generation since the last load).
    Ray runs an actor's calls one at a time, so this is time with no call to run."""

    def __init__(self) -> None:
        self.free_since: Optional[float] = None

    def generated(self) -> None:
        self.free_since = time.monotonic()

    def weights_arrived(self) -> float:
        idle = 0.0 if self.free_since is None else time.monotonic() - self.free_since
        self.free_since = None
        return idle


LOADING = -1
"""``weight_version`` of an engine while it loads weights, and after a load that failed: every
call that names a version (``generate(weight_version=...)``) then raises ``StaleWeightsError``,
so the engine pool recovers it (pushes the weights again) instead of sampling from half-loaded
weights. Matters when the pool does not wait for a load (``EnginePool.sync`` with overlap)."""


@contextmanager
def weight_load(engine: Any, version: Optional[int]) -> Iterator[Dict[str, float]]:
    """The bookkeeping of one weight load into ``engine`` (which has ``weight_version`` and an
    ``IdleClock`` as ``idle``): the engine is at ``LOADING`` inside the block; when the block ends
    without raising it holds ``version`` (None: one past its previous version), and the yielded
    dict, which the load method returns, has ``seconds`` (the load) and ``idle_s``. A block that
    raises leaves the engine at ``LOADING``."""
    figures = {"idle_s": engine.idle.weights_arrived()}
    t0 = time.perf_counter()
    previous, engine.weight_version = engine.weight_version, LOADING
    yield figures
    engine.weight_version = previous + 1 if version is None else version
    figures["seconds"] = time.perf_counter() - t0


def check_weight_version(have: int, want: Optional[int]) -> None:
    """Refuse to sample from weights other than the caller's ``want`` (None: no check)."""
    if want is not None and have != want:
        raise StaleWeightsError(f"engine holds weight version {have}, the caller expects {want}")


def check_prompts(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, max_model_len: int) -> None:
    """Raise ``ValueError`` naming the first prompt that is empty or leaves no room for
    ``max_new_tokens`` within ``max_model_len`` (both engines enforce the same contract)."""
    if not prompt_ids:
        raise ValueError("generate() got no prompts")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (it needs at least a BOS token)")
        if len(p) + max_new_tokens > max_model_len:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; with rollout.max_new_tokens={max_new_tokens} that exceeds "
                f"rollout.max_model_len={max_model_len}"
            )


def build_rollout_batch(
    prompt_ids: Sequence[Sequence[int]],
    samples: Sequence[Sequence[Sample]],
    group_offset: int,
    pad_id: int,
    meta: Optional[Dict[str, Sequence[Any]]] = None,
    weight_version: int = 0,
) -> Batch:
    """Lay out ``samples[i][j]`` (response j of prompt i) as a ``Batch`` of B = sum_i len(samples[i]) rows.

    Rows are prompt-major (all responses of prompt 0, then prompt 1, ...). ``group_ids`` =
    ``group_offset + i``. ``meta[key]`` (one entry per prompt) is repeated once per response;
    ``meta["response_text"]``, ``meta["finish_reason"]`` and ``meta["weight_version"]`` (the version
    of the weights that sampled every row, for staleness) are added. Padding: prompts on the
    left, responses and their log-probs (0.0) on the right. Episodes (samples with ``episode``)
    add ``loss_mask`` rows from their samples, ``meta["episode"]`` (one summary per row) and the
    environment's reward to each row's columns (``meta["extra"][row]["env_reward"]``).
    """
    meta = dict(meta or {})
    if len(samples) != len(prompt_ids):
        raise ValueError(f"got samples for {len(samples)} prompts, expected {len(prompt_ids)}")
    for key, values in meta.items():
        if len(values) != len(prompt_ids):
            raise ValueError(
                f"meta['{key}'] has {len(values)} entries, expected one per prompt ({len(prompt_ids)})"
            )
    for key in ("response_text", "finish_reason", "weight_version", "episode"):
        if key in meta:
            raise ValueError(f"meta['{key}'] is filled by the rollout engine; do not pass it")

    rows = [(i, s) for i, group in enumerate(samples) for s in group]
    if not rows:
        raise ValueError("build_rollout_batch got no samples")
    b = len(rows)
    p = max(len(prompt_ids[i]) for i, _ in rows)
    r = max(1, max(len(s.token_ids) for _, s in rows))

    prompt = torch.full((b, p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p), dtype=torch.long)
    response = torch.full((b, r), pad_id, dtype=torch.long)
    response_mask = torch.zeros((b, r), dtype=torch.float32)
    logprobs = torch.zeros((b, r), dtype=torch.float32)
    loss_mask = torch.zeros((b, r), dtype=torch.float32)
    for row, (i, s) in enumerate(rows):
        if len(s.logprobs) != len(s.token_ids):
            raise ValueError(
                f"sample of prompt {i} has {len(s.token_ids)} tokens but {len(s.logprobs)} log-probs"
            )
        n_p, n_r = len(prompt_ids[i]), len(s.token_ids)
        if n_p:
            prompt[row, p - n_p :] = torch.as_tensor(list(prompt_ids[i]), dtype=torch.long)
            prompt_mask[row, p - n_p :] = 1
        if n_r:
            response[row, :n_r] = torch.as_tensor(s.token_ids, dtype=torch.long)
            response_mask[row, :n_r] = 1.0
            logprobs[row, :n_r] = torch.as_tensor(s.logprobs, dtype=torch.float32)
            if s.loss_mask is not None and len(s.loss_mask) != n_r:
                raise ValueError(f"sample of prompt {i} has {n_r} tokens but a loss mask of {len(s.loss_mask)}")
            loss_mask[row, :n_r] = 1.0 if s.loss_mask is None else torch.as_tensor(s.loss_mask, dtype=torch.float32)

    out_meta: Dict[str, List[Any]] = {key: [values[i] for i, _ in rows] for key, values in meta.items()}
    out_meta["response_text"] = [s.text for _, s in rows]
    out_meta["finish_reason"] = [s.finish_reason for _, s in rows]
    out_meta["weight_version"] = [weight_version] * len(rows)
    episodes = [s.episode for _, s in rows]
    if any(e is not None for e in episodes):
        if any(e is None for e in episodes):
            raise ValueError("build_rollout_batch got episodes and single completions in one batch")
        out_meta["episode"] = episodes
        extra = out_meta.get("extra") or [{} for _ in rows]
        out_meta["extra"] = [{**(x or {}), ENV_REWARD_COLUMN: e["reward"]} for x, e in zip(extra, episodes)]
    return Batch(
        prompt_ids=prompt,
        prompt_mask=prompt_mask,
        response_ids=response,
        response_mask=response_mask,
        group_ids=torch.tensor([group_offset + i for i, _ in rows], dtype=torch.long),
        logprobs={"rollout": logprobs},
        meta=out_meta,
        loss_mask=loss_mask,
    )
