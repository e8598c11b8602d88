"""Rollout engines: sample ``group_size`` responses per prompt and return a ``Batch``.

Every backend is a plain class with the same interface, which the controller wraps with
``ray.remote``::

    engine_cls = ROLLOUT_BACKENDS.get(cfg.rollout.backend)
    engine = ray.remote(num_cpus=cfg.resources.rollout_cpus)(engine_cls).remote(
        model_path, tokenizer_path, cfg.rollout, cfg.model.dtype, seed, cfg.model.trust_remote_code)
    batch = ray.get(engine.generate.remote(prompt_ids, group_size, group_offset, pad_id, meta))
    got = ray.get(engine.update_weights.remote(packed_ref))   # object_store sync; see weight_sync

Interface (``E`` = an engine):

    E(model_path, tokenizer_path, rollout: RolloutConfig, dtype: str, seed: int, trust_remote_code: bool = False)
    E.generate(prompt_ids, group_size, group_offset, pad_id, meta=None) -> Batch
    E.sequence_logprobs(prompt_ids, response_ids) -> list[float]
    E.update_weights(named_tensors, version=None) -> {"seconds", "idle_s"}; ``version`` labels the
        weights, and ``generate(..., weight_version=v)`` raises StaleWeightsError unless the
        engine holds version v (a restarted engine is back at version 0, its initial weights)
    E.join_weight_group(address, rank_offset, plan) -> None;  E.receive_weights(version) -> {"seconds", "idle_s"};
    E.weight_group_address() -> GroupAddress | None;  E.leave_weight_group() -> None: the
        collective sync (``rollout.weight_sync=collective``, ``actors.rollout.weight_sync``): join
        the trainer's transfer group, then receive each broadcast of the weights in place while
        the trainer's rank 0 sends it; an engine in no group raises StaleWeightsError.
        Both weight calls report ``seconds`` (loading) and ``idle_s``: how long the engine sat
        with nothing to do between its last ``generate`` and these weights (``IdleClock``)
    E.ready() -> True;  E.info() -> dict

Backends: ``vllm`` (``VLLMRolloutEngine``, the default) and ``hf`` (``HFRolloutEngine``,
transformers ``generate``; the fallback and the reference the vLLM engine is tested against).
Both report ``logprobs["rollout"]`` as the behaviour policy's log-probs: the distribution each token
was sampled from, ``log_softmax(logits / rollout.temperature)`` renormalised over the tokens top-k /
top-p keep (without truncation, exactly what the trainer recomputes as "old"; with it, the
difference is the truncation, which ``algorithm.rollout_correction`` corrects too).
``sequence_logprobs`` returns *raw* log-probs (temperature 1, untruncated) for the post-sync check.

Importing this package imports neither vLLM nor a model: the vLLM engine imports vLLM in its
constructor (after setting the environment variables vLLM reads at import time).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from rlplat.batch import Batch
from rlplat.registry import Registry

ROLLOUT_BACKENDS: Registry[type] = Registry("rollout backend")


@dataclass
class Sample:
    """One sampled response: ``token_ids`` (EOS included when generated) and the log-prob (nats)
    with which the engine's sampler drew each of them (temperature, top-k/top-p applied)."""

    token_ids: List[int]
    logprobs: List[float]
    text: str
    finish_reason: str  # "stop" (EOS / stop token) | "length" (hit max_new_tokens)


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
    left, responses and their log-probs (0.0) on the right.
    """
    meta = dict(meta or {})
    if len(samples) != len(prompt_ids):
        raise ValueError(f"got samples for {len(samples)} prompts, expected {len(prompt_ids)}")
    for key, values in meta.items():
        if len(values) != len(prompt_ids):
            raise ValueError(
                f"meta['{key}'] has {len(values)} entries, expected one per prompt ({len(prompt_ids)})"
            )
    for key in ("response_text", "finish_reason", "weight_version"):
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

    out_meta: Dict[str, List[Any]] = {key: [values[i] for i, _ in rows] for key, values in meta.items()}
    out_meta["response_text"] = [s.text for _, s in rows]
    out_meta["finish_reason"] = [s.finish_reason for _, s in rows]
    out_meta["weight_version"] = [weight_version] * len(rows)
    return Batch(
        prompt_ids=prompt,
        prompt_mask=prompt_mask,
        response_ids=response,
        response_mask=response_mask,
        group_ids=torch.tensor([group_offset + i for i, _ in rows], dtype=torch.long),
        logprobs={"rollout": logprobs},
        meta=out_meta,
    )


# Imported after the shared pieces above, which the engine modules import from this package.
from actors.rollout.hf_engine import HFRolloutEngine  # noqa: E402
from actors.rollout.vllm_engine import VLLMRolloutEngine  # noqa: E402

ROLLOUT_BACKENDS.register("hf")(HFRolloutEngine)
ROLLOUT_BACKENDS.register("vllm")(VLLMRolloutEngine)


def make_engine(backend: str, **kwargs: Any) -> Any:
    """Construct the ``backend`` engine in this process (``ROLLOUT_BACKENDS.get(backend)(**kwargs)``);
    to run it as an actor, wrap ``ROLLOUT_BACKENDS.get(backend)`` with ``ray.remote`` instead."""
    return ROLLOUT_BACKENDS.get(backend)(**kwargs)


__all__ = [
    "ROLLOUT_BACKENDS",
    "IdleClock",
    "Sample",
    "build_rollout_batch",
    "check_prompts",
    "make_engine",
    "HFRolloutEngine",
    "VLLMRolloutEngine",
]
