"""The vLLM side of ``rollout.weight_sync=collective``: a backend for vLLM's weight-transfer API.

vLLM 0.32 drives weight updates through ``LLM.init_weight_transfer_engine`` /
``start_weight_update`` / ``update_weights`` / ``finish_weight_update``, which run
``Worker.<same name>`` in every worker and delegate to a ``WeightTransferEngine`` chosen by
``WeightTransferConfig(backend=...)`` from ``WeightTransferEngineFactory``. Its built-in
``nccl`` backend talks through vLLM's ``PyNcclCommunicator`` (CUDA only), so it cannot run the
CPU tests. This module registers one more backend, ``rlplat_collective``, whose transport is a
plain ``torch.distributed`` group (``actors.rollout.transfer_group``: gloo on CPU, NCCL on GPU)
and keeps everything else of vLLM's lifecycle: ``start`` = ``initialize_layerwise_reload``,
each received bucket -> ``model.load_weights`` (HF names -> vLLM's fused parameters),
``finish`` = ``finalize_layerwise_reload``, which re-runs the post-load processing (the CPU
backend's repacked layouts) exactly like ``reload_weights(..., is_checkpoint_format=True)``
does on the object-store path. One code path on CPU and GPU.

Registration must happen in every worker process before the worker builds its engine in
``load_model``. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and one worker that is the rollout
actor's own process (the import in ``VLLMRolloutEngine`` registers); with spawned workers
(``tensor_parallel_size > 1``) ``WeightSyncWorkerExtension`` is passed as vLLM's
``worker_extension_cls``, which vLLM imports in each worker at start-up, registering there too.

Import this module only after ``vllm_engine._prepare_environment()`` (it imports vLLM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from actors.rollout.buckets import Bucket
from actors.rollout.transfer_group import GroupAddress, TransferGroup

BACKEND = "rlplat_collective"
EXTENSION = "actors.rollout.vllm_transfer.WeightSyncWorkerExtension"


@dataclass
class CollectiveInitInfo(WeightTransferInitInfo):
    """``address`` of the group; this worker's rank there is ``rank_offset`` + its vLLM rank.
    ``hostname``: the worker's own node address (gloo binds to it)."""

    address: GroupAddress
    rank_offset: int
    hostname: str


@dataclass
class CollectiveUpdateInfo(WeightTransferUpdateInfo):
    """The bucket plan of this sync (``actors.rollout.buckets.plan_buckets``), as rank 0 sends it."""

    buckets: List[Bucket]


class CollectiveWeightTransferEngine(WeightTransferEngine[CollectiveInitInfo, CollectiveUpdateInfo]):
    """Receives rank 0's bucket broadcasts and loads them into the live model in place."""

    init_info_cls = CollectiveInitInfo
    update_info_cls = CollectiveUpdateInfo

    def __init__(self, config: Any, vllm_config: Any, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: TransferGroup | None = None
        self._reloading = False

    def init_transfer_engine(self, init_info: CollectiveInitInfo) -> None:
        self.shutdown()  # re-forming: leave the old group first
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group = TransferGroup(init_info.address, rank, torch.device(self.device), init_info.hostname)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)
        self._reloading = True

    def update_weights(self, update_info: Dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(), which raises on a CPU host.
        self.receive_weights(self.parse_update_info(update_info))
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)

    def receive_weights(self, update_info: CollectiveUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        if self.group is None:
            raise RuntimeError("collective weight transfer: init_weight_transfer_engine() has not run")
        try:
            with disable_mtp_completeness_check():  # weights arrive in several load_weights calls
                for _, named in self.group.receive(update_info.buckets):
                    self.model.load_weights(named)
        except BaseException:
            # vLLM's worker forgets the update on an error; finalise here so no layer is left on
            # the meta device. The next full sync (recovery re-sends everything) repairs the values.
            self.finish_weight_update()
            raise

    def finish_weight_update(self) -> None:
        if self._reloading:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            self._reloading = False
            finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


class WeightSyncWorkerExtension:
    """vLLM ``worker_extension_cls``: importing it registers ``BACKEND`` in the worker process.
    Its one method reports which transfer engine the worker runs (for checks and tests)."""

    def rlplat_weight_transfer_engine(self) -> str:
        engine = getattr(self, "weight_transfer_engine", None)
        return type(engine).__name__ if engine is not None else ""


try:
    WeightTransferEngineFactory.register_engine(BACKEND, CollectiveWeightTransferEngine)
except ValueError:  # already registered in this process
    pass
