"""The DeepSpeed config dict of a trainer rank, built from ``TrainerConfig`` and the model dtype.

Gradient accumulation is ours, not DeepSpeed's: a mini-batch becomes a *variable* number of
token-budget micro-batches, so the config says ``gradient_accumulation_steps = 1`` (DeepSpeed
then divides each micro-batch loss by 1, i.e. not at all) and the rank marks the last
micro-batch with ``engine.set_gradient_accumulation_boundary(True)`` before calling
``engine.step()`` once. The batch-size keys are bookkeeping only (DeepSpeed never sees our
batches), set so that DeepSpeed's consistency check passes.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

ZERO_STAGES = (0, 1, 2, 3)


def _merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict update: nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_ds_config(
    zero_stage: int,
    dtype: str,
    world_size: int,
    grad_clip: float,
    overrides: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """DeepSpeed config dict.

    ``dtype``: the model's dtype name (float32 | bfloat16 | float16); half precision turns on
    DeepSpeed's mixed-precision optimizer (fp32 master weights). ``grad_clip`` <= 0 disables
    clipping (by global norm over all ranks). ``overrides`` (``trainer.deepspeed``) is merged last
    (nested dicts merge), e.g. ``{"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}``;
    a key rlplat sets from another option raises ValueError naming that option
    (``rlplat.config.deepspeed_keys``). The optimizer and the learning-rate scheduler are not
    in the config: the rank builds them and hands them to ``deepspeed.initialize``.
    """
    from rlplat.config.deepspeed_keys import check_overrides

    check_overrides(overrides or {})
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"trainer.zero_stage={zero_stage} is not a ZeRO stage; choose one of {ZERO_STAGES}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.dtype='{dtype}' is not one of float32, bfloat16, float16")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    zero: Dict[str, Any] = {"stage": zero_stage}
    if zero_stage == 3:
        # export_hf/get_weights gather parameters themselves; this makes engine.save_16bit_model work too.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": float(max(grad_clip, 0.0)),
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16", "initial_scale_power": 16},
        # The optimizer is a torch.optim.AdamW built by the rank (no cpu_adam / fused_adam JIT build).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _merge(config, overrides or {})
