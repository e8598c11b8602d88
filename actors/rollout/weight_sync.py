"""Trainer -> rollout engine weight sync, as the driver drives it (``rollout.weight_sync``).

Both kinds share one interface, so the engine pool (``actors.rollout.pool``) holds one object and never branches::

    sync = WEIGHT_SYNCS.get(cfg.rollout.weight_sync)(trainer_group, engines, cfg.rollout)
    stats = sync.push(version)   # every engine now holds the trainer's weights, labelled version
    stats = sync.push(version, wait=False)   # sent; the engines load them before their next call
    ref = sync.weights_ref(version)   # ObjectRef of PackedWeights, for loops that need full weights

``collective`` (default): the trainer's rank 0 and every engine worker form a torch.distributed
group (``transfer_group``: a TCPStore hosted by rank 0 + gloo on CPU / NCCL on GPU), formed at
start. Each push first asks every engine which group it is in (one small RPC): an engine that
Ray restarted is in none, and then every member leaves and joins a fresh group on a new port
before anything is sent, so a restart never leaves the others blocked in a broadcast. The push
then starts rank 0's bucketed broadcast (every rank under ZeRO-3, which gathers one bucket at a
time) and every engine's receive together and waits for both: the driver only sends and
receives small control messages.

``object_store``: rank 0 gathers and packs the full state dict and returns it through Ray into the
object store once per version (the driver holds only its ObjectRef); every engine reads that copy
(the fallback when no collective group can form).

``push(version, wait=False)`` returns as soon as the trainer side has sent (collective) or the
rank 0 has packed (object store) the weights: the engines finish loading while the caller goes on
(``trainer.max_staleness`` >= 1: while the trainer trains the next batch). Engines run their calls
in order, so whatever the caller asks of an engine next runs on the new weights; an engine whose
load failed is left at ``actors.rollout.LOADING`` and refuses the next versioned call
(``StaleWeightsError``), which the engine pool recovers from by pushing again. Such a push's
engine figures (``engine_load_s``, ``engine_idle_s``) are those of the loads it waited for: the
previous push's, if that one did not wait.

A member that dies mid-push makes the push raise: ``RayActorError`` if an engine died (the
engine pool's recovery waits for Ray's restart and pushes again, which re-forms the group), else
a ``RuntimeError`` naming what broke. The survivors of a death mid-broadcast are blocked until
the group's timeout (``transfer_group.DEFAULT_TIMEOUT_S``) at most.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ray

from actors.recovery import ACTOR_LOST
from actors.rollout.common import StaleWeightsError
from actors.rollout.transfer_group import GroupAddress
from rlplat.registry import Registry

WEIGHT_SYNCS: Registry[type] = Registry("rollout.weight_sync")



@dataclass
class SyncStats:
    """What one push moved: ``bytes`` sent by the trainer side, in ``buckets`` buffers; per
    engine, ``engine_idle_s`` (seconds it had waited for these weights, ``IdleClock``) and
    ``engine_load_s`` (seconds it spent receiving and loading them)."""

    bytes: int
    buckets: int
    engine_idle_s: List[float] = field(default_factory=list)
    engine_load_s: List[float] = field(default_factory=list)

    def metrics(self, seconds: float) -> Dict[str, float]:
        """``sync/seconds`` (the whole sync, as the caller timed it), ``sync/gbytes_per_s`` =
        bytes / seconds / 1e9, ``sync/buckets``, and when engine figures came with the push,
        ``sync/engine_load_s`` (slowest engine) and ``async/idle_s`` (mean over engines)."""
        out = {"sync/seconds": seconds, "sync/gbytes_per_s": self.bytes / 1e9 / max(seconds, 1e-9),
               "sync/buckets": float(self.buckets)}
        if self.engine_load_s:
            out["sync/engine_load_s"] = max(self.engine_load_s)
            out["async/idle_s"] = sum(self.engine_idle_s) / len(self.engine_idle_s)
        return out


def _outcomes(refs: Sequence[Any]) -> List[Tuple[Any, Optional[BaseException]]]:
    """(value, None) or (None, exception) for every ref, waiting for all of them."""
    out = []
    for ref in refs:
        try:
            out.append((ray.get(ref), None))
        except Exception as exc:  # noqa: BLE001 - sorted by the caller
            out.append((None, exc))
    return out


class PendingLoads:
    """The engines' load calls of a push that did not wait for them."""

    def __init__(self) -> None:
        self.refs: List[Any] = []

    def settle(self) -> Tuple[List[float], List[float], bool]:
        """Wait for them: ``(idle_s, load_s, failed)``, the figures of the loads that finished and
        whether any failed. A failure is not raised here: the engine is left at ``LOADING`` (or
        is lost) and its next versioned call raises what the engine pool recovers from."""
        refs, self.refs = self.refs, []
        outcomes = _outcomes(refs)
        done = [got for got, exc in outcomes if exc is None]
        return [g["idle_s"] for g in done], [g["seconds"] for g in done], len(done) < len(outcomes)


def _raise_first(engine_errors: List[BaseException], trainer_errors: List[str], what: str) -> None:
    """An engine that died or was restarted wins (the caller recovers from that); else one
    error naming all."""
    for exc in engine_errors:
        if isinstance(exc, ACTOR_LOST):
            raise exc
    for exc in engine_errors:
        if isinstance(exc, StaleWeightsError):
            raise exc
    if engine_errors or trainer_errors:
        lines = [f"engine: {str(e).splitlines()[0][:300]}" for e in engine_errors]
        lines += [f"trainer rank 0: {e[:300]}" for e in trainer_errors]
        raise RuntimeError(f"collective weight sync: {what} failed\n" + "\n".join(lines))


@WEIGHT_SYNCS.register("collective")
class CollectiveSync:
    """Broadcast from the trainer's rank 0 to every engine worker; see the module docstring.

    ``engines``: rollout engine actor handles (Ray restarts them in place, so the list never
    changes); engine i's workers take ranks ``1 + i * tensor_parallel_size + w``."""

    def __init__(self, trainer: Any, engines: Sequence[Any], rollout: Any) -> None:
        self.trainer, self.engines = trainer, list(engines)
        self.workers_per_engine = int(rollout.tensor_parallel_size)
        self.bucket_bytes = max(1, int(rollout.weight_sync_bucket_mb * (1 << 20)))
        self.plan = trainer.weight_plan(self.bucket_bytes)  # names, dtypes, shapes: no tensors
        self.address: Optional[GroupAddress] = None  # the group every member is in; None: re-form
        self.generation = 0  # groups formed so far (1 + re-formations)
        self._ref: Tuple[Optional[int], Any] = (None, None)
        self.pending = PendingLoads()
        self.form()

    def form(self) -> None:
        """Every member leaves its old group (if any) and joins a new one on a fresh port."""
        self.address = None
        host, port = self.trainer.weight_group_host()
        address = GroupAddress(host, port, world_size=1 + len(self.engines) * self.workers_per_engine)
        trainer_refs = self.trainer.start_join_weight_group(address, self.plan)
        engine_refs = [e.join_weight_group.remote(address, 1 + i * self.workers_per_engine, self.plan)
                       for i, e in enumerate(self.engines)]
        engine_errors = [exc for _, exc in _outcomes(engine_refs) if exc is not None]
        trainer_errors = [err for err in self.trainer.wait(trainer_refs) if err]
        _raise_first(engine_errors, trainer_errors, "forming the transfer group")
        self.address = address
        self.generation += 1

    def push(self, version: int, wait: bool = True) -> SyncStats:
        idle, load, failed = self.pending.settle()
        if failed:
            self.address = None  # a load broke mid-broadcast: its group may be too
        # A restarted engine reports no group (an engine being restarted raises ACTOR_LOST here).
        members = ray.get([e.weight_group_address.remote() for e in self.engines])
        if self.address is None or any(m != self.address for m in members):
            self.form()
        trainer_refs = self.trainer.start_broadcast_weights()
        engine_refs = [e.receive_weights.remote(version) for e in self.engines]
        if not wait:
            # Rank 0 is done once its buffers are on the wire; the engines finish receiving and loading.
            sent = self.trainer.wait(trainer_refs)[0]
            if not sent["error"]:
                self.pending.refs = engine_refs
                return SyncStats(bytes=sent["bytes"], buckets=sent["buckets"], engine_idle_s=idle, engine_load_s=load)
        outcomes = _outcomes(engine_refs)
        engine_errors = [exc for _, exc in outcomes if exc is not None]
        sent = self.trainer.wait(trainer_refs)[0]
        if engine_errors or sent["error"]:
            self.address = None  # whatever broke, the next push starts from a fresh group
            _raise_first(engine_errors, [sent["error"]] if sent["error"] else [], f"push of version {version}")
        return SyncStats(bytes=sent["bytes"], buckets=sent["buckets"], engine_idle_s=[got["idle_s"] for got, _ in outcomes],
                         engine_load_s=[got["seconds"] for got, _ in outcomes])

    def weights_ref(self, version: int) -> Any:
        """The trainer's current weights as an ObjectRef made by rank 0 (the driver never holds
        them), produced on first use after each sync."""
        if self._ref[0] != version:
            self._ref = (version, self.trainer.weights_ref())
        return self._ref[1]


@WEIGHT_SYNCS.register("object_store")
class ObjectStoreSync:
    """Rank 0 packs its full state dict once per version and returns it through Ray, so it lands in
    the object store without passing through the driver (which holds only the ObjectRef); every
    engine reads that one copy (zero-copy) and reloads."""

    def __init__(self, trainer: Any, engines: Sequence[Any], rollout: Any) -> None:
        self.trainer, self.engines = trainer, list(engines)
        self._ref: Tuple[Optional[int], Any] = (None, None)
        self._bytes = 0
        self.pending = PendingLoads()

    def _put(self, version: int) -> Any:
        if self._ref[0] != version:
            if not self._bytes:  # the model's size, from the plan's metadata (names, dtypes, shapes)
                self._bytes = sum(spec.nbytes for bucket in self.trainer.weight_plan(2**62) for spec in bucket.params)
            self._ref = (version, self.trainer.weights_ref())
        return self._ref[1]

    def push(self, version: int, wait: bool = True) -> SyncStats:
        idle, load, _ = self.pending.settle()
        ref = self._put(version)
        refs = [e.update_weights.remote(ref, version) for e in self.engines]
        if not wait:
            self.pending.refs = refs
            return SyncStats(bytes=self._bytes, buckets=1, engine_idle_s=idle, engine_load_s=load)
        got = ray.get(refs)
        return SyncStats(bytes=self._bytes, buckets=1, engine_idle_s=[g["idle_s"] for g in got],
                         engine_load_s=[g["seconds"] for g in got])

    def weights_ref(self, version: int) -> Any:
        return self._put(version)
