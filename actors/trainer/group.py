"""``TrainerGroup``: N ``TrainerRank`` Ray actors driven as one data-parallel trainer.

The group owns everything that needs the WHOLE mini-batch: the global loss normalisers
(``LossTotals``), the split of rows over ranks (whole groups per rank, balanced by tokens), and
the merge of per-rank metrics. Every fan-out call waits on all ranks and, if one fails, kills
the group instead of leaving the others blocked in a collective.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from actors.trainer.rank import LossSpec, RankMetrics, TrainerRank, resolve_loss
from rlplat import lr_schedules
from rlplat.batch import Batch
from rlplat.config.schema import ResourcesConfig, RunConfig


# ============================================================================ splitting
def balanced_split(weights: Sequence[float], units: Sequence[Sequence[int]], num_parts: int) -> List[torch.Tensor]:
    """Assign each unit (a list of row indices) to one of ``num_parts`` parts, heaviest first to
    the lightest part (LPT). Returns Long row-index tensors, each sorted ascending (possibly empty)."""
    loads = [0.0] * num_parts
    parts: List[List[int]] = [[] for _ in range(num_parts)]
    for u in sorted(range(len(units)), key=lambda i: (-weights[i], i)):
        k = min(range(num_parts), key=lambda j: (loads[j], j))
        loads[k] += weights[u]
        parts[k].extend(units[u])
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


def split_rows(batch: Batch, num_parts: int, keep_groups: bool) -> List[torch.Tensor]:
    """Row indices per rank, balanced by real tokens. ``keep_groups``: rows of one group id stay
    on one rank (group-level masks and statistics need the whole group)."""
    tokens = batch.num_tokens.tolist()
    if keep_groups:
        order: Dict[int, List[int]] = {}
        for i, g in enumerate(batch.group_ids.tolist()):
            order.setdefault(g, []).append(i)
        units = list(order.values())
    else:
        units = [[i] for i in range(len(batch))]
    weights = [float(sum(tokens[i] for i in u)) for u in units]
    return balanced_split(weights, units, num_parts)


def merge_rank_metrics(results: Sequence[RankMetrics]) -> Dict[str, float]:
    """One metrics dict from the ranks: ``loss/*`` summed per rank then averaged over ranks
    (they carry the world_size factor), mean-type metrics weighted by their token counts,
    counts summed, times maxed, the rest (grad norm: identical on all ranks) from rank 0."""
    out: Dict[str, float] = {}
    n = len(results)
    for key in {k for r in results for k in r.sums}:
        out[key] = sum(r.sums.get(key, 0.0) for r in results) / n
    for key in {k for r in results for k in r.weighted}:
        num = sum(r.weighted[key][0] for r in results if key in r.weighted)
        den = sum(r.weighted[key][1] for r in results if key in r.weighted)
        if den > 0:
            out[key] = num / den
    for key in results[0].stats:
        values = [r.stats[key] for r in results if key in r.stats]
        if key.startswith("time/"):
            out[key] = max(values)
        elif key in ("trainer/micro_batches", "trainer/padding_micro_batches", "trainer/response_tokens",
                     "trainer/nonfinite_micro_batches"):
            out[key] = sum(values)
        else:
            out[key] = values[0]
    return out


# ============================================================================ the group
class TrainerGroup:
    """``num_ranks`` DeepSpeed ranks as Ray actors named ``f"{name_prefix}-rank{i}"``.

    ``temperature``: logits are divided by it before every log-prob (default
    ``cfg.rollout.temperature``; scorers must use the same). ``placement_group``: optional; rank i
    uses bundle ``bundle_offset + i``. The optimizer (``trainer.lr``, ``adam_betas``, ``adam_eps``,
    ``weight_decay``), its learning-rate schedule over the algorithm's S updates
    (``rlplat.lr_schedules.from_config``) and the DeepSpeed passthrough (``trainer.deepspeed``)
    come from ``cfg``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        model_path: str,
        num_ranks: Optional[int] = None,
        resources: Optional[ResourcesConfig] = None,
        *,
        placement_group: Any = None,
        bundle_offset: int = 0,
        temperature: Optional[float] = None,
        name_prefix: str = "trainer",
        tokenizer_path: Optional[str] = None,
    ):
        import ray

        self.cfg = cfg
        self.model_path = model_path
        self.num_ranks = int(num_ranks if num_ranks is not None else cfg.trainer.num_ranks)
        if self.num_ranks < 1:
            raise ValueError(f"trainer.num_ranks must be >= 1, got {self.num_ranks}")
        res = resources if resources is not None else cfg.resources
        self.tokenizer_path = tokenizer_path or cfg.model.tokenizer or model_path
        self.zero_stage = int(cfg.trainer.zero_stage)
        self._snapshot_dir: Optional[str] = None
        temp = cfg.rollout.temperature if temperature is None else temperature
        self.lr_schedule = lr_schedules.from_config(cfg)

        remote_cls = ray.remote(TrainerRank)
        self.ranks = []
        for i in range(self.num_ranks):
            opts: Dict[str, Any] = dict(name=f"{name_prefix}-rank{i}", num_cpus=res.trainer_cpus, num_gpus=res.trainer_gpus)
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle_offset + i
                )
            self.ranks.append(
                remote_cls.options(**opts).remote(
                    i, self.num_ranks, model_path, cfg.model, cfg.trainer, temp, self.lr_schedule,
                )
            )
        t0 = time.perf_counter()
        master_addr, master_port = self._all([self.ranks[0].node_address.remote()])[0]
        self.setup_times: List[Dict[str, float]] = self._all([r.setup.remote(master_addr, master_port) for r in self.ranks])
        self.setup_s = time.perf_counter() - t0

    # ------------------------------------------------------------- plumbing
    def _all(self, refs: List[Any]) -> List[Any]:
        """ray.get of every ref; on the first failure kill the group (the others would block in
        a collective forever) and re-raise."""
        import ray

        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception:
                self.shutdown()
                raise
        return ray.get(refs)

    # ----------------------------------------------------------------- train
    def train(self, batch: Batch, step: int, loss_spec: LossSpec) -> Dict[str, float]:
        """One optimizer update on the mini-batch ``batch`` (whole groups per rank). Returns merged metrics."""
        loss_fn = resolve_loss(loss_spec)
        totals = loss_fn.totals(batch, self.num_ranks)
        shards = [batch.select(idx) if len(idx) else None for idx in split_rows(batch, self.num_ranks, keep_groups=True)]
        results = self._all([r.train_mini_batch.remote(s, loss_fn, step, totals) for r, s in zip(self.ranks, shards)])
        return merge_rank_metrics(results)

    def compute_logprobs(self, batch: Batch, temperature: Optional[float] = None) -> torch.Tensor:
        """Float32 [B, R] log-probs of ``batch``'s responses under the current policy (eval mode),
        rows split across ranks and re-assembled in order. ``temperature`` divides the logits
        (default: the group's, as in training; 1.0: raw log-probs, as the rollout engines report)."""
        parts = split_rows(batch, self.num_ranks, keep_groups=False)
        shards = [batch.select(idx) if len(idx) else None for idx in parts]
        results = self._all([r.compute_logprobs.remote(s, temperature) for r, s in zip(self.ranks, shards)])
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        for idx, res in zip(parts, results):
            if len(idx):
                out[idx] = res
        return out

    # ---------------------------------------------------------------- weights
    def _weights_callers(self) -> List[Any]:
        # ZeRO-3 keeps each parameter partitioned over ranks: gathering is collective.
        return self.ranks if self.zero_stage == 3 else self.ranks[:1]

    def get_weights(self, dtype: Optional[str] = None) -> List[Tuple[str, torch.Tensor]]:
        """[(HF name, full CPU tensor)] of the current policy (from rank 0)."""
        return self._all([r.get_weights.remote(dtype) for r in self._weights_callers()])[0]

    def weights_ref(self) -> Any:
        """An ObjectRef of the current weights as ``PackedWeights``, produced by rank 0 (never
        fetched here): pass it to the actor that needs the full weights."""
        refs = [r.packed_weights.remote() for r in self._weights_callers()]
        self._all(refs[1:])  # ZeRO-3: the other ranks only gather (they return None)
        return refs[0]

    def param_distance(self, weights_ref: Any) -> float:
        """L2 distance between the current parameters and the weights ``weights_ref`` holds (an
        ObjectRef of ``PackedWeights``, e.g. an earlier ``weights_ref()``), computed on rank 0:
        the weights travel actor to actor, only the number comes back."""
        callers = self._weights_callers()
        return self._all([r.param_distance.remote(weights_ref if i == 0 else None) for i, r in enumerate(callers)])[0]

    # ----------------------------------------------------------- weight sync
    # The collective sync (actors.rollout.weight_sync.CollectiveSync) runs the trainer side and the
    # engine side at the same time, so these return ObjectRefs; ``wait`` collects them.
    def weight_plan(self, bucket_bytes: int) -> List[Any]:
        """Bucket plan of the policy's weights (metadata only; see ``TrainerRank.weight_plan``)."""
        return self._all([self.ranks[0].weight_plan.remote(bucket_bytes)])[0]

    def weight_group_host(self) -> Tuple[str, int]:
        """(address, free port) on rank 0's node, where rank 0 hosts the transfer group's store."""
        return self._all([self.ranks[0].node_address.remote()])[0]

    def start_join_weight_group(self, address: Any, plan: List[Any]) -> List[Any]:
        return [r.join_weight_group.remote(address, plan) for r in self._weights_callers()]

    def start_broadcast_weights(self) -> List[Any]:
        return [r.broadcast_weights.remote() for r in self._weights_callers()]

    def wait(self, refs: List[Any]) -> List[Any]:
        """Results of ``refs`` from the ``start_*`` calls; a rank that raised stops the group."""
        return self._all(refs)

    def export_hf(self, out_dir: str) -> str:
        """A ``from_pretrained``-loadable directory with the current weights and the tokenizer."""
        self._all([r.export_hf.remote(out_dir, self.tokenizer_path) for r in self.ranks])
        return out_dir

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, ckpt_dir: str, tag: Optional[str] = None, client_state: Optional[Dict] = None) -> str:
        return self._all([r.save_checkpoint.remote(ckpt_dir, tag, client_state) for r in self.ranks])[0]

    def load_checkpoint(self, ckpt_dir: str, tag: Optional[str] = None) -> Dict[str, Any]:
        return self._all([r.load_checkpoint.remote(ckpt_dir, tag) for r in self.ranks])[0]

    def snapshot_state(self, base_dir: Optional[str] = None) -> None:
        """Keep parameters AND optimizer state for ``restore_state`` (a DeepSpeed checkpoint, so
        about 16 bytes per parameter for fp32 AdamW) in a fresh directory under ``base_dir``
        (default /dev/shm when writable, else the system temp dir). All ranks must see it: one
        node, or a shared ``base_dir``. A new snapshot replaces the previous one."""
        if self._snapshot_dir is None:
            if base_dir is None and os.access("/dev/shm", os.W_OK):
                base_dir = "/dev/shm"
            self._snapshot_dir = tempfile.mkdtemp(prefix="rlplat-snapshot-", dir=base_dir)
        self._all([r.snapshot_state.remote(self._snapshot_dir) for r in self.ranks])

    def restore_state(self) -> None:
        if self._snapshot_dir is None:
            raise RuntimeError("restore_state() before any snapshot_state()")
        self._all([r.restore_state.remote(self._snapshot_dir) for r in self.ranks])

    def global_steps(self) -> int:
        return self._all([self.ranks[0].global_steps.remote()])[0]

    def shutdown(self) -> None:
        """Kill the rank actors and delete the snapshot directory. Idempotent."""
        import ray

        for r in self.ranks:
            try:
                ray.kill(r)
            except Exception:
                pass
        self.ranks = []
        if self._snapshot_dir is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            self._snapshot_dir = None
