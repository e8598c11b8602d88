"""What third-party libraries may print into the driver log: the one place that decides it.

The driver log (the terminal, or the job log in the Ray dashboard) is for the user: rlplat's own
lines (``rlplat: ...``, ``step N/M ...``, ``eval ...``) and real problems. Ray forwards every actor's
stdout/stderr to it (``log_to_driver`` stays on: an actor's traceback must reach the user), so
noise is silenced at its source, in each process:

* ``environment(level)``: variables read when a library is imported. The driver passes them to
  every actor through the job's ``runtime_env`` (``launch.cluster``) and sets them in itself.
* ``apply(level)``: the same settings for the running process, called at driver start and first
  thing in each actor's ``__init__`` (covers a cluster joined under ``ray job submit``, whose
  runtime_env rlplat does not own; the level then comes from ``RLPLAT_LOG_LEVEL`` or the default).

``trainer.log_level``: ``warning`` (default) keeps third-party output at WARNING and drops the known
harmless warnings below; ``info`` / ``debug`` bring everything back (nothing filtered).
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Dict, Optional, Tuple

from rlplat.config.schema import TrainerConfig

DEFAULT = TrainerConfig.log_level  # "warning"; allowed values: rlplat.config.schema.LOG_LEVELS
ENV = "RLPLAT_LOG_LEVEL"  # carries trainer.log_level to the actors

# Warnings of vLLM that are expected on every run here and carry nothing the user can act on,
# as (emitting logger, message start, why it is harmless). Filters sit on the emitting logger:
# vLLM re-runs dictConfig when an engine starts, which replaces its handlers (and their filters)
# but leaves other loggers' filters alone.
HARMLESS: Tuple[Tuple[str, str, str], ...] = (
    ("vllm.model_executor.model_loader.reload.layerwise", "RotaryEmbedding: Failed to load weights",
     "every weight sync: the rotary embedding has no weights (its cos/sin cache is computed), so the "
     "layerwise reload finds none to load; the sync check compares log-probs after every sync"),
    ("vllm.v1.worker.cpu_worker", "CPU backend doesn't allow to use `torch.set_num_threads`",
     "every generate on CPU: vLLM binds threads once; the request is a no-op"),
    ("vllm.v1.worker.cpu_worker", "libtcmalloc is not found", "CPU performance advice (LD_PRELOAD)"),
    ("vllm.v1.worker.cpu_worker", "libiomp is not found", "CPU performance advice (LD_PRELOAD)"),
    ("vllm.v1.worker.cpu_worker", "libiomp5 is not found", "CPU performance advice (LD_PRELOAD)"),
    ("vllm.engine.arg_utils", "The global random seed is set", "rlplat seeds each request itself"),
    ("vllm.config.vllm", "Enforce eager set", "rollout.enforce_eager is rlplat's choice on CPU"),
    ("vllm.config.vllm", "Inductor compilation was disabled", "follows from enforce_eager"),
    ("vllm.config.vllm", "Model Runner V2 requires Triton", "CPU build: the V1 runner is used"),
    ("vllm.platforms.cpu", "Triton is not installed", "CPU build without triton-cpu"),
    ("vllm.platforms.cpu", "Reset SSM cache type", "Mamba setting; no Mamba model here"),
    ("vllm.triton_utils.importing", "Triton is installed, but doesn't include CPU backend",
     "CPU build: Triton is disabled, as intended"),
)


def is_quiet(level: Optional[str] = None) -> bool:
    """True at ``warning``: third-party output is cut to real warnings, progress bars are off."""
    return resolve(level) == "warning"


def resolve(level: Optional[str] = None) -> str:
    """``level``, else ``RLPLAT_LOG_LEVEL``, else the default."""
    return (level or os.environ.get(ENV) or DEFAULT).lower()


def environment(level: Optional[str] = None) -> Dict[str, str]:
    """Variables libraries read at import. ``trainer.log_level`` decides them all (one knob): an
    exported ``VLLM_LOGGING_LEVEL`` or ``PYTHONWARNINGS`` is replaced, so ``info`` always means info."""
    level = resolve(level)
    env = {ENV: level, "VLLM_LOGGING_LEVEL": level.upper()}
    if level == "warning":
        env.update({
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
            # Deprecation notices of torch / vLLM internals: nothing for an rlplat user to change.
            "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
            "TORCH_CPP_LOG_LEVEL": "ERROR",  # C++ "[W ...] Warning: NUMA binding ..." at vLLM start on CPU
        })
    return env


class HarmlessFilter(logging.Filter):
    """Drops records whose message starts with ``prefix`` (see ``HARMLESS`` for why each is safe)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def apply(level: Optional[str] = None) -> str:
    """Quiet (or not) the libraries of this process; returns the level applied. Idempotent."""
    level = resolve(level)
    os.environ.update(environment(level))
    # Else DeepSpeed detects, then prints "Setting accelerator to CPU" in every rank. An accelerator
    # the user named stays.
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    number = getattr(logging, level.upper())
    logging.getLogger("DeepSpeed").setLevel(number)
    if level != "warning":
        return level
    for name, prefix, _why in HARMLESS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HarmlessFilter) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(HarmlessFilter(prefix))
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:  # transformers read HF_HUB_DISABLE_PROGRESS_BARS at import; it may be imported already
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return level


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
