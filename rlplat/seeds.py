"""Sampling seeds: one disjoint stream of per-sample seeds for every (step, phase) of a run.

Why 32 bits. The engines seed one ``torch.Generator`` per sample: vLLM builds one per request
(``vllm/v1/worker/gpu_model_runner.py``, also the CPU runner's) and gives child ``j`` of an
``n > 1`` request ``seed + j`` (``vllm/v1/engine/parallel_sampling.py``); the HF engine reseeds
torch once per call. Both accept 64-bit seeds, but torch's CPU generator (mt19937) keeps only the
low 32 bits (``ATen/core/MT19937RNGEngine.h: init_with_uint32``), so seeds that differ only above
bit 31 sample identically on CPU. Every seed here is therefore in ``[0, 2**32)`` and two draws
are disjoint iff their seeds differ mod 2**32 (on CUDA, whose Philox keeps 64 bits, too).

Layout. A draw's samples are seeded consecutively: prompt ``i``, child ``j`` of a call with seed
``s`` gets ``s + i * group_size + j``, and ``EnginePool.launch`` adds ``a * group_size`` for
the engine chunk starting at prompt ``a``. The run's 2**32 seeds, rotated by a 32-bit hash of
the run seed, are cut into streams of consecutive seeds:

    PREPARE    once, 2**24 samples   DPH-RL's pi_0 split (prompt p's samples at offset p * k)
    EVAL       once, 2**20 samples   held-out evaluation (the same seeds at every evaluation)
    ROLLOUT    per step, 2**16       the step's on-policy samples
    OPPONENTS  per step, 2**16       Nash-MP's opponent samples from pi_{k+1/2}

so within one run no two (step, phase, sample) draws share a seed while ``step < MAX_STEPS``
(32_632) and each draw stays within its stream's size. Runs with different ``trainer.seed``
start at unrelated places of the same 2**32 seeds, so two runs may share some streams by chance.
Validation refuses configs beyond these limits, naming the keys.
"""
from __future__ import annotations

from typing import Dict

SEED_SPACE = 1 << 32  # distinct seeds torch's CPU generator tells apart

# Phases: which draw of a run a stream serves.
ROLLOUT = 0
OPPONENTS = 1
PREPARE = 2
EVAL = 3
PHASES: Dict[str, int] = {"rollout": ROLLOUT, "opponents": OPPONENTS, "prepare": PREPARE, "eval": EVAL}

STEP_SAMPLES = 1 << 16  # samples per per-step stream (ROLLOUT, OPPONENTS)
_PER_STEP = (ROLLOUT, OPPONENTS)
_ONCE_START = {PREPARE: 0, EVAL: 1 << 24}  # where the one-off streams start
_ONCE_SAMPLES = {PREPARE: 1 << 24, EVAL: 1 << 20}
_STEPS_START = (1 << 24) + (1 << 20)
MAX_STEPS = (SEED_SPACE - _STEPS_START) // (len(_PER_STEP) * STEP_SAMPLES)  # 32_632

_MASK64 = (1 << 64) - 1


def samples_per_stream(phase: int) -> int:
    """How many samples one draw of ``phase`` may take."""
    _check_phase(phase)
    return _ONCE_SAMPLES.get(phase, STEP_SAMPLES)


def _check_phase(phase: int) -> None:
    if phase not in PHASES.values():
        raise ValueError(f"unknown sampling phase {phase}; known: {PHASES}")


def _mix(x: int) -> int:
    """A 64-bit integer hash (the splitmix64 finaliser): nearby run seeds land far apart."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(run_seed: int, step: int, phase: int, offset: int = 0) -> int:
    """Seed in ``[0, 2**32)`` of sample ``offset`` of the draw ``phase`` at ``step`` (0 for the
    one-off phases PREPARE and EVAL). The draw's later samples use ``seed + n`` (mod 2**32, which
    is what torch's CPU generator reads) up to ``samples_per_stream(phase)``. Deterministic: a
    resumed run draws exactly what an uninterrupted one did."""
    size = samples_per_stream(phase)
    if phase in _ONCE_START:
        if step != 0:
            raise ValueError(f"sampling phase {phase} is drawn once per run (step 0), got step {step}")
        start = _ONCE_START[phase]
    else:
        if not 0 <= step < MAX_STEPS:
            raise ValueError(f"step {step} is outside the seed streams' range [0, {MAX_STEPS})")
        start = _STEPS_START + (step * len(_PER_STEP) + _PER_STEP.index(phase)) * STEP_SAMPLES
    if not 0 <= offset < size:
        raise ValueError(f"sample offset {offset} is outside the phase's stream [0, {size})")
    return (_mix(int(run_seed) & _MASK64) + start + offset) % SEED_SPACE


def check_draw_size(samples: int, phase: int, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (the config keys) when one draw of ``phase`` would take
    more samples than its stream holds."""
    if samples > samples_per_stream(phase):
        raise ValueError(f"{what} = {samples} samples in one draw; its seed stream holds at most "
                         f"{samples_per_stream(phase)}")
