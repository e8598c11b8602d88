"""``EnginePool``: the rollout engines of a run, driven as one: sampling, weights, recovery.

    engines = EnginePool(cfg, policy_path, tokenizer_path, prompt_ids, pad_id)   # actors start loading
    engines.connect(trainer, probe)                 # wait for them; form the weight-sync group
    pending = engines.launch(rows, group_size, seed=s)   # submitted now, on the weights held now
    batch = engines.collect(pending)                # Batch (B = len(rows) * group_size rows)
    metrics = engines.sync()                        # trainer -> every engine; sync/* and async/* metrics

Prompts are split into contiguous chunks, one per engine, so group ids stay unique and prompt i's
samples are seeded ``seed + i * group_size + j`` whichever engine draws them. Engines run their
calls in order, so a sync submitted after a launch waits for it (bounded staleness relies on it).

The pool owns its engines' recovery: a call that finds an engine lost (Ray restarts it, up to
``resources.max_actor_restarts`` times) or holding other weights than the pool's version
(``StaleWeightsError``) waits for every engine to answer, pushes the current weights (which
re-forms a collective group around the restarted engine) and runs the same seeded call again,
so no sample is lost or duplicated (retried rows carry the newer weight version).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import ray
import torch

from actors.recovery import ACTOR_LOST, log_loss, wait_until_answering
from actors.rollout import ROLLOUT_BACKENDS, StaleWeightsError
from actors.rollout.weight_sync import WEIGHT_SYNCS
from rlplat.batch import Batch
from rlplat.data import PromptRow

RETRYABLE = ACTOR_LOST + (StaleWeightsError,)


@dataclasses.dataclass
class PendingRollout:
    """A submitted generation: ``calls`` submit it again (recovery), ``refs`` the first submission."""

    calls: List[Callable[[], Any]]
    refs: List[Any]


class EnginePool:
    """``rollout.num_engines`` engines named ``rollout-<i>`` (``ROLLOUT_BACKENDS[rollout.backend]``).

    ``prompt_ids`` maps a ``PromptRow.index`` to its rendered token ids; ``weight_version``
    counts the pushes (0: the weights at ``policy_path``); engines refuse to sample from another.
    """

    def __init__(self, cfg: Any, policy_path: str, tokenizer_path: str, prompt_ids: Mapping[int, Sequence[int]],
                 pad_id: int) -> None:
        self.cfg, self.prompt_ids, self.pad_id = cfg, prompt_ids, pad_id
        res, rollout = cfg.resources, cfg.rollout
        remote = ray.remote(num_cpus=res.rollout_cpus, num_gpus=res.rollout_gpus * rollout.tensor_parallel_size,
                            max_restarts=res.max_actor_restarts)(ROLLOUT_BACKENDS.get(rollout.backend))
        # vLLM's engine core runs inside the actor process (no extra processes on a CPU budget).
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        self.engines = [
            remote.options(name=f"rollout-{i}", runtime_env={"env_vars": env}).remote(
                policy_path, tokenizer_path, rollout, cfg.model.dtype, cfg.trainer.seed + i, cfg.model.trust_remote_code)
            for i in range(rollout.num_engines)
        ]
        self.weight_version = 0
        self.restarts = 0  # recoveries of a lost or stale engine
        self.trainer = self.probe = self.weight_sync = None
        self.syncs, self.check_due = 0, True  # the probe check's cadence (sync)

    def connect(self, trainer: Any, probe: Batch) -> None:
        """Wait until every engine has loaded, then form the weight sync with ``trainer`` (a
        ``TrainerGroup``); ``probe`` (one row) is the sequence whose log-probs must agree after a sync."""
        ray.get([e.ready.remote() for e in self.engines])
        self.trainer, self.probe = trainer, probe
        # rollout.weight_sync: collective (a torch.distributed group formed now) | object_store
        self.weight_sync = WEIGHT_SYNCS.get(self.cfg.rollout.weight_sync)(trainer, self.engines, self.cfg.rollout)

    # ---------------------------------------------------------------- sampling
    def launch(self, rows: Sequence[PromptRow], group_size: int, group_offset: int = 0,
               seed: Optional[int] = None) -> PendingRollout:
        """Submit ``group_size`` samples per row to the engines now, on the weights they hold now."""
        bounds = torch.linspace(0, len(rows), len(self.engines) + 1).round().long().tolist()
        calls = []
        for engine, (a, b) in zip(self.engines, zip(bounds, bounds[1:])):
            if a == b:
                continue
            chunk = rows[a:b]
            meta = {"prompt": [r.prompt for r in chunk], "answer": [r.answer for r in chunk],
                    "row_index": [r.index for r in chunk], "extra": [r.extra for r in chunk]}  # extra: reward columns
            ids = [self.prompt_ids[r.index] for r in chunk]
            chunk_seed = None if seed is None else seed + a * group_size
            # weight_version is read when the call is (re)submitted: a retry samples on the current weights.
            calls.append(lambda e=engine, i=ids, o=group_offset + a, m=meta, sd=chunk_seed: e.generate.remote(
                i, group_size, o, self.pad_id, m, sd, weight_version=self.weight_version))
        return PendingRollout(calls, [call() for call in calls])

    def collect(self, pending: PendingRollout) -> Batch:
        """The Batch of a launched generation (resubmitted after a recovery)."""
        first = [pending.refs]

        def get() -> Batch:
            refs = first.pop() if first else [call() for call in pending.calls]
            return Batch.concat(ray.get(refs), pad_id=self.pad_id)

        return self.recoverable(get)

    def generate(self, rows: Sequence[PromptRow], group_size: int, group_offset: int = 0,
                 seed: Optional[int] = None) -> Batch:
        return self.collect(self.launch(rows, group_size, group_offset, seed))

    def generate_fn(self, greedy: bool = False) -> Callable[..., Batch]:
        """A ``rlplat.held_out.GenerateFn`` on the engines' current weights (held-out evaluation):
        ``fn(prompt_ids, group_size, meta, seed=None) -> Batch``, prompts chunked as ``launch``."""

        def generate(prompt_ids: List[List[int]], group_size: int, meta: Dict[str, List[Any]],
                     seed: Optional[int] = None) -> Batch:
            bounds = [round(i * len(prompt_ids) / len(self.engines)) for i in range(len(self.engines) + 1)]

            def get() -> Batch:
                refs = [e.generate.remote(prompt_ids[a:b], group_size, a, self.pad_id, {k: v[a:b] for k, v in meta.items()},
                                          None if seed is None else seed + a * group_size, greedy=greedy, ignore_eos=False,
                                          weight_version=self.weight_version)
                        for e, a, b in zip(self.engines, bounds, bounds[1:]) if a < b]
                return Batch.concat(ray.get(refs), pad_id=self.pad_id)

            return self.recoverable(get)

        return generate

    # ----------------------------------------------------------------- weights
    def sync(self) -> Dict[str, float]:
        """The trainer's weights into every engine (``rollout.weight_sync``), as version
        ``weight_version + 1``, then the probe check (on the first sync, after every recovery and
        every ``trainer.sync_check_every`` syncs). Metrics: ``sync/seconds``, ``sync/gbytes_per_s``,
        ``sync/buckets``, ``sync/engine_load_s`` and ``async/idle_s`` (engines waiting for these
        weights), with ``trainer.max_staleness`` >= 1 ``async/drain_s`` (waiting for queued
        generations, not transfer time) and, when checked, ``sync/logprob_max_abs_diff``.

        With ``trainer.max_staleness`` >= 1 and no check due, the push returns once the weights
        are sent and the engines load them while the trainer trains the next batch
        (``push(wait=False)``); ``sync/engine_load_s`` and ``async/idle_s`` are then the previous
        push's, and absent when that one was waited for."""
        out: Dict[str, float] = {}
        overlap = self.cfg.trainer.max_staleness >= 1
        if overlap:
            t0 = time.perf_counter()
            self.recoverable(lambda: ray.get([e.ready.remote() for e in self.engines]))
            out["async/drain_s"] = time.perf_counter() - t0
        check = self.check_due or (self.syncs + 1) % self.cfg.trainer.sync_check_every == 0
        t0 = time.perf_counter()
        self.weight_version += 1
        # With overlap the engines load while the trainer goes on to its next batch (a probe check
        # needs the load done); their next calls queue behind it.
        sent = self.recoverable(lambda: self.weight_sync.push(self.weight_version, wait=not overlap or check))
        out.update(sent.metrics(time.perf_counter() - t0))
        self.syncs += 1
        if check:
            out["sync/logprob_max_abs_diff"] = self.check()
            self.check_due = False
        return out

    def check(self) -> float:
        """Largest |engine log-prob - trainer log-prob| over the probe's tokens, across engines.
        Both at temperature 1: the engines report raw log-probs whatever rollout.temperature is."""
        trainer_lp = self.trainer.compute_logprobs(self.probe, temperature=1.0)[0]
        p, r = self.probe.prompt_ids[0].tolist(), self.probe.response_ids[0].tolist()
        engine_lps = self.recoverable(lambda: ray.get([e.sequence_logprobs.remote(p, r) for e in self.engines]))
        return max((torch.tensor(lp) - trainer_lp).abs().max().item() for lp in engine_lps)

    def weights_ref(self) -> Any:
        """ObjectRef of the weights of the last sync (``PackedWeights``), for loops that need them
        whole (Mirror-Prox's snapshot); with ``collective`` rank 0 produces it on first use."""
        return self.weight_sync.weights_ref(self.weight_version)

    # ---------------------------------------------------------------- recovery
    def recoverable(self, call: Callable[[], Any]) -> Any:
        """Run ``call``; after an engine loss (or an engine without the pool's weights) bring every
        engine back to ``weight_version`` and run it again. Trainer errors pass through."""
        retries = self.cfg.resources.max_actor_restarts
        for attempt in range(retries + 1):
            try:
                return call()
            except RETRYABLE as exc:
                if attempt == retries:
                    raise
                self._recover(exc)

    def _recover(self, exc: Exception, timeout_s: float = 600.0) -> None:
        log_loss("rollout engine", exc)
        self.restarts += 1
        self.check_due = True
        wait_until_answering([e.ready.remote for e in self.engines], timeout_s)
        if self.weight_version:  # a collective sync re-forms its group around a restarted engine
            self.weight_sync.push(self.weight_version)

    def kill(self) -> None:
        for e in self.engines:
            ray.kill(e)
