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

from typing import Any

from actors.rollout.common import (
    LOADING, IdleClock, Sample, StaleWeightsError, build_rollout_batch, check_prompts, check_weight_version, weight_load)
from actors.rollout.hf_engine import HFRolloutEngine
from actors.rollout.vllm_engine import VLLMRolloutEngine
from rlplat.registry import Registry

ROLLOUT_BACKENDS: Registry[type] = Registry("rollout backend")

ROLLOUT_BACKENDS.register("hf")(HFRolloutEngine)
ROLLOUT_BACKENDS.register("vllm")(VLLMRolloutEngine)


def make_engine(backend: str, **kwargs: Any) -> Any:
    """Construct the ``backend`` engine in this process (``ROLLOUT_BACKENDS.get(backend)(**kwargs)``);
    to run it as an actor, wrap ``ROLLOUT_BACKENDS.get(backend)`` with ``ray.remote`` instead."""
    return ROLLOUT_BACKENDS.get(backend)(**kwargs)


__all__ = [
    "ROLLOUT_BACKENDS",
    "LOADING",
    "StaleWeightsError",
    "check_weight_version",
    "weight_load",
    "IdleClock",
    "Sample",
    "build_rollout_batch",
    "check_prompts",
    "make_engine",
    "HFRolloutEngine",
    "VLLMRolloutEngine",
]
