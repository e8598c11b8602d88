"""The DeepSpeed config keys rlplat sets itself, so ``trainer.deepspeed`` may not (``actors.trainer.ds_config``).

``trainer.deepspeed`` is merged into the DeepSpeed config for engine settings rlplat has no
option for (``zero_optimization.offload_optimizer``, ``overlap_comm``, bucket sizes, ...). A key
below is derived from another option or would break how the trainer drives the engine, so
setting it there is refused with the option to set instead. A dotted key covers everything
under it (``optimizer`` covers ``optimizer.params.lr``).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Tuple

_BATCHES = ("rlplat accumulates gradients itself over token-budget micro-batches (DeepSpeed sees one micro-batch "
            "per update); set data.prompts_per_step, algorithm.mini_batches and trainer.micro_batch_tokens")
_OPTIMIZER = ("rlplat builds torch.optim.AdamW itself; set trainer.lr, trainer.adam_betas, trainer.adam_eps "
              "and trainer.weight_decay")

OWNED: Dict[str, str] = {
    "train_batch_size": _BATCHES,
    "train_micro_batch_size_per_gpu": _BATCHES,
    "gradient_accumulation_steps": _BATCHES,
    "gradient_clipping": "set trainer.grad_clip",
    "zero_optimization.stage": "set trainer.zero_stage",
    "optimizer": _OPTIMIZER,
    "zero_allow_untested_optimizer": _OPTIMIZER,
    "zero_force_ds_cpu_optimizer": _OPTIMIZER + " (with offload_optimizer it runs on the CPU as torch AdamW)",
    "scheduler": "set trainer.lr_scheduler, trainer.warmup_steps or trainer.warmup_ratio, and trainer.min_lr_ratio",
    "bf16.enabled": "set model.dtype (bfloat16 turns on DeepSpeed's bf16 mode)",
    "fp16.enabled": "set model.dtype (float16 turns on DeepSpeed's fp16 mode)",
}


# Sections rlplat fills in: an override merges into them, so it must be a mapping too.
SECTIONS = ("zero_optimization", "bf16", "fp16")


def _paths(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted path of ``tree``, inner nodes included."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, Mapping):
            yield from _paths(value, path + ".")


def owned_keys(overrides: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """(dotted key of ``overrides``, what to set instead) for every key rlplat owns, in order."""
    out = []
    for path in _paths(overrides):
        for owned, instead in OWNED.items():
            if path == owned or path.startswith(owned + "."):
                out.append((path, instead))
    return out


def check_overrides(overrides: Mapping[str, Any], key: str = "trainer.deepspeed") -> None:
    """Raise ValueError naming the first owned key in ``overrides`` and what to set instead."""
    for section in SECTIONS:
        if section in overrides and not isinstance(overrides[section], Mapping):
            raise ValueError(f"{key}.{section}={overrides[section]!r} must be a mapping of DeepSpeed's "
                             f"{section} settings (it is merged into rlplat's)")
    found = owned_keys(overrides)
    if found:
        path, instead = found[0]
        raise ValueError(f"{key}.{path} is set by rlplat: {instead}")
