"""``ScorerPool``: the ``Scorer`` actors of one role (``roles.<role>.num_actors``), driven as one.

A batch's rows are split over the actors, balanced by real tokens (``split_rows``), every part is
in flight at the same time, and the log-probs come back in the batch's row order. A scorer's
log-probs of a row do not depend on which other rows share its forward pass (padding is masked,
positions count from the first real token), so a pool of N returns what one actor returns.

The pool owns its actors' recovery: Ray restarts a crashed actor (``max_restarts``); a call that
finds an actor lost waits until every actor answers again, reloads the last weights the pool was
given (``load_weights``) into any actor that came back without them, and resubmits only the parts
that failed. Every score call carries the pool's weights version, so a call that Ray queued while
the actor restarted fails (``StaleWeightsError``) instead of scoring with the initial weights: a
restarted Nash-MP snapshot scorer never answers with pi_0 for pi_k.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import ray
import torch

from actors.recovery import ACTOR_LOST, log_loss, wait_until_answering
from actors.rollout.common import StaleWeightsError
from actors.scorer import Scores, create_scorer_actor
from actors.trainer.group import split_rows
from rlplat.batch import Batch
from rlplat.divergences.topk import TopK

# The actor was lost, or it is back but without the weights the pool last loaded (a call queued while it restarted).
RETRYABLE = ACTOR_LOST + (StaleWeightsError,)


class ScorerPool:
    """``num_actors`` ``Scorer`` actors for ``role``, named ``scorer-<role>-0 .. N-1``.

    Keyword arguments are ``create_scorer_actor``'s; ``bundle_indices[i]`` is actor i's bundle in
    ``placement_group`` (default: all in bundle 0). ``max_restarts``: Ray's restarts per actor and
    the retries of one call. ``restart_timeout_s``: how long a recovery waits for an actor.
    """

    def __init__(
        self,
        role: str,
        model_path: str,
        num_actors: int = 1,
        *,
        dtype: str = "float32",
        micro_batch_tokens: int = 4096,
        trust_remote_code: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        attn_implementation: Optional[str] = None,
        num_cpus: float = 0.25,
        num_gpus: float = 0.0,
        placement_group: Any = None,
        bundle_indices: Optional[Sequence[int]] = None,
        max_restarts: int = 0,
        restart_timeout_s: float = 600.0,
    ):
        if num_actors < 1:
            raise ValueError(f"scorer pool '{role}': num_actors must be >= 1, got {num_actors}")
        bundle_indices = list(bundle_indices) if bundle_indices is not None else [0] * num_actors
        if len(bundle_indices) != num_actors:
            raise ValueError(f"scorer pool '{role}': {len(bundle_indices)} bundle indices for {num_actors} actors")
        self.role, self.max_restarts, self.restart_timeout_s = role, max_restarts, restart_timeout_s
        self.top_k = top_k  # > 0: results are (log-probs, TopK) pairs (Scorer.score_topk)
        self.names = [f"scorer-{role}-{i}" for i in range(num_actors)]
        self.actors = [
            create_scorer_actor(
                role, model_path, dtype=dtype, micro_batch_tokens=micro_batch_tokens,
                trust_remote_code=trust_remote_code, temperature=temperature, top_k=top_k,
                attn_implementation=attn_implementation, num_cpus=num_cpus,
                num_gpus=num_gpus, name=name, placement_group=placement_group, bundle_index=bundle,
                max_restarts=max_restarts)
            for name, bundle in zip(self.names, bundle_indices)
        ]
        self.recoveries = 0  # calls that found an actor lost and waited for it
        self._weights_ref: Optional[ray.ObjectRef] = None  # the last load_weights, kept for restarts
        self._weights_version = 0  # 0: the weights at model_path

    def __len__(self) -> int:
        return len(self.actors)

    # ------------------------------------------------------------------ calls
    def score_async(self, batch: Batch) -> "PendingScores":
        """Submit ``batch``'s parts to every actor now; ``.result()`` collects them."""
        return PendingScores(self, batch)

    def score_rows_async(self, part_refs: Sequence[ray.ObjectRef], num_rows: int) -> "PendingRowScores":
        """Submit the scoring of rows not generated yet: ``part_refs`` are the rollout engines'
        pending Batches (``num_rows`` rows in all); each actor takes an equal share of rows and
        starts as soon as the parts exist. ``.result(batch)`` collects them."""
        return PendingRowScores(self, part_refs, num_rows)

    def score(self, batch: Batch) -> Scores:
        """Float32 [B, R]: log-prob (nats) of each ``response_ids`` token under this role; 0 on padding.
        With ``top_k`` > 0: ``(log-probs, TopK)`` (``Batch.set_scores`` stores either)."""
        return self.score_async(batch).result()

    def load_weights(self, named: Union[ray.ObjectRef, Sequence[Tuple[str, torch.Tensor]]]) -> int:
        """Copy weights into every actor (one object-store copy) and remember them: an actor Ray
        restarts later gets them again. ``named``: an ObjectRef of ``PackedWeights`` made by another
        actor (``TrainerGroup.weights_ref()``: the weights never pass through this process), or
        ``[(HF parameter name, tensor)]`` put here. Returns the parameter count."""
        self._weights_ref = named if isinstance(named, ray.ObjectRef) else ray.put(list(named))
        self._weights_version += 1
        counts = self._retry(lambda: ray.get([a.load_weights.remote(self._weights_ref, self._weights_version)
                                              for a in self.actors]))
        return counts[0]

    def info(self) -> List[Dict[str, Any]]:
        """``Scorer.info()`` of every actor, in actor order."""
        return self._retry(lambda: ray.get([a.info.remote() for a in self.actors]))

    def ready(self) -> bool:
        """Block until every actor has loaded its model (an actor that failed to load raises)."""
        self.info()
        return True

    def kill(self) -> None:
        """Kill every actor for good (frees their names)."""
        for a in self.actors:
            ray.kill(a)

    # --------------------------------------------------------------- recovery
    def restore(self, timeout_s: Optional[float] = None) -> None:
        """Wait until every actor answers (a restarting one refuses calls until it is back), then
        reload the last weights into any actor that does not hold them (Ray restarted it)."""
        infos = wait_until_answering([a.info.remote for a in self.actors],
                                     self.restart_timeout_s if timeout_s is None else timeout_s)
        stale = [a for a, info in zip(self.actors, infos) if info["weights_version"] != self._weights_version]
        if stale and self._weights_ref is not None:
            ray.get([a.load_weights.remote(self._weights_ref, self._weights_version) for a in stale])

    def recover(self, exc: Exception, name: str = "") -> None:
        """Log the loss, count it and ``restore``."""
        log_loss(name or f"scorer-{self.role}-*", exc)
        self.recoveries += 1
        self.restore()

    def _retry(self, call):
        for attempt in range(self.max_restarts + 1):
            try:
                return call()
            except ACTOR_LOST as exc:
                if attempt == self.max_restarts:
                    raise
                self.recover(exc)


class _Collected:
    """A pool call's output for B rows, filled part by part: log-probs Float32 [B, R] and, with
    ``k`` > 0, the ``TopK`` ([B, R, k] log-probs and Int32 ids, [B, R] tail), 0 on padding."""

    def __init__(self, b: int, r: int, k: int) -> None:
        self.logp = torch.zeros((b, r), dtype=torch.float32)
        self.topk = None if not k else TopK(torch.zeros((b, r, k), dtype=torch.float32),
                                            torch.zeros((b, r, k), dtype=torch.int32),
                                            torch.zeros((b, r), dtype=torch.float32))

    def put(self, rows: Any, part: Scores) -> None:
        """Place one actor's ``part`` (its rows' scores, possibly shorter in R) at ``rows``."""
        lp, top = (part, None) if self.topk is None else part
        w = lp.shape[1]
        self.logp[rows, :w] = lp
        if top is not None:
            for dst, src in zip(self.topk, top):
                dst[rows, :w] = src

    def value(self) -> Scores:
        return self.logp if self.topk is None else (self.logp, self.topk)


class PendingScores:
    """One pool call in flight: the row indices of each actor's part and their object refs."""

    def __init__(self, pool: ScorerPool, batch: Batch):
        self.pool, self.batch = pool, batch
        parts = split_rows(batch, len(pool), keep_groups=False) if len(batch) else []
        self.parts = {k: idx for k, idx in enumerate(parts) if len(idx)}  # actor index -> rows
        self.refs = {k: self._submit(k) for k in self.parts}

    def _submit(self, k: int) -> ray.ObjectRef:
        return self.pool.actors[k].score.remote(self.batch.select(self.parts[k]), self.pool._weights_version)

    def result(self) -> Scores:
        """Float32 [B, R] (with ``top_k``: and the TopK) in the batch's row order; parts lost with
        their actor are resubmitted after the pool's recovery (at most ``max_restarts`` times)."""
        out = _Collected(*self.batch.response_ids.shape, self.pool.top_k)
        pending = dict(self.refs)
        for attempt in range(self.pool.max_restarts + 1):
            lost: Optional[Tuple[int, Exception]] = None
            for k in list(pending):
                try:
                    out.put(self.parts[k], ray.get(pending.pop(k)))
                except RETRYABLE as exc:
                    pending[k] = None
                    lost = (k, exc)
            if not pending:
                return out.value()
            if attempt == self.pool.max_restarts:
                raise lost[1]
            self.pool.recover(lost[1], self.pool.names[lost[0]])
            pending = {k: self._submit(k) for k in pending}
        raise AssertionError("unreachable")


class PendingRowScores:
    """``Scorer.score_rows`` in flight on every actor, each on its contiguous share of the rows."""

    def __init__(self, pool: ScorerPool, part_refs: Sequence[ray.ObjectRef], num_rows: int) -> None:
        self.pool = pool
        bounds = torch.linspace(0, num_rows, len(pool) + 1).round().long().tolist()
        self.ranges = [(a, b) for a, b in zip(bounds, bounds[1:]) if a < b]
        self.refs = [pool.actors[k].score_rows.remote(a, b, pool._weights_version, *part_refs)
                     for k, (a, b) in enumerate(self.ranges)]

    def result(self, batch: Batch) -> Scores:
        """Float32 [B, R] (with ``top_k``: and the TopK) for ``batch``, the collected rows. If any share failed (its actor or an
        engine was lost, or the actor came back without the pool's weights), the pool scores
        ``batch`` afresh, with its recovery: the retried rows are the same seeded samples."""
        try:
            parts = ray.get(self.refs)
        except ray.exceptions.RayError:  # StaleWeightsError arrives as a RayTaskError too
            return self.pool.score(batch)
        out = _Collected(*batch.response_ids.shape, self.pool.top_k)
        for (a, b), part in zip(self.ranges, parts):
            out.put(slice(a, b), part)
        return out.value()
