"""The vLLM side of ``rollout.weight_sync=collective``: a backend for vLLM's weight-transfer API.

vLLM 0.32 drives weight updates through ``LLM.init_weight_transfer_engine`` /
``start_weight_update`` / ``update_weights`` / ``finish_weight_update``, which run
``Worker.<same name>`` in every worker and delegate to a ``WeightTransferEngine`` chosen by
``WeightTransferConfig(backend=...)`` from ``WeightTransferEngineFactory``. Its built-in
``nccl`` backend talks through vLLM's ``PyNcclCommunicator`` (CUDA only), so it cannot run the
CPU tests. This module registers one more backend, ``rlplat_collective``, whose transport is a
plain ``torch.distributed`` group (``actors.rollout.transfer_group``: gloo on CPU, NCCL on GPU)
and loads each received bucket with ``model.load_weights`` (HF names -> vLLM's fused
parameters). One code path on CPU and GPU, in one of two ways:

- **in place** (unquantized models, the usual RL case): ``load_weights`` copies each bucket
  into the live parameters, then the layers it wrote re-run their own post-load step (on CPU
  the oneDNN re-pack of each linear layer; on GPU nothing) while the next bucket is on the
  wire. On CPU vLLM normally frees a linear layer's weight once it is packed
  (``dispatch_cpu_unquantized_gemm(..., remove_weight=True)``), leaving nothing to copy into;
  importing this module makes it keep them (``_keep_cpu_linear_weights``), at the cost of a
  second copy of the linear weights in the engine's memory. Measured on the 5.0M-parameter
  tiny policy, one thread: 11-12 ms an update against 27-28 ms for the lifecycle below, with
  identical log-probs.
- **vLLM's layerwise-reload lifecycle** otherwise (quantized weights or KV cache, a layer with
  another quantization method, a model-level post-load step, weights not kept): ``start`` =
  ``initialize_layerwise_reload``, ``finish`` = ``finalize_layerwise_reload``, which re-runs
  the whole post-load processing exactly like ``reload_weights(..., is_checkpoint_format=True)``
  does on the object-store path. ``in_place_refusal`` says why a model takes this way.

Registration and ``_keep_cpu_linear_weights`` must happen in every worker process before the
worker loads its model (``load_model``, which then builds the transfer engine). With
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and one worker that is the rollout actor's own process
(the import in ``VLLMRolloutEngine`` registers); with spawned workers
(``tensor_parallel_size > 1``) ``WeightSyncWorkerExtension`` is passed as vLLM's
``worker_extension_cls``, which vLLM imports in each worker at start-up, registering there too.

Import this module only after ``vllm_engine._prepare_environment()`` (it imports vLLM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from actors.rollout.buckets import Bucket
from actors.rollout.transfer_group import GroupAddress, TransferGroup
from actors.rollout.vllm_layers import PostLoadLayers

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


def _keep_cpu_linear_weights() -> None:
    """Make vLLM's CPU linear layers keep their weight after packing it (see the module
    docstring). Must run before the engine loads its model; idempotent. A vLLM without that
    function is left alone: its weights are then not kept, and ``in_place_refusal`` says so."""
    from vllm.model_executor.layers import utils

    dispatch = getattr(utils, "dispatch_cpu_unquantized_gemm", None)
    if dispatch is None or getattr(dispatch, "rlplat_keeps_weight", False):
        return

    def keeping(layer: torch.nn.Module, remove_weight: bool) -> None:
        dispatch(layer, remove_weight=False)

    keeping.rlplat_keeps_weight = True
    utils.dispatch_cpu_unquantized_gemm = keeping


def in_place_refusal(model: torch.nn.Module, model_config: Any, cache_config: Any) -> Optional[str]:
    """None when weights can be updated in place (see the module docstring), else why not."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    if model_config.quantization is not None:
        return f"quantization={model_config.quantization}"
    if cache_config.cache_dtype != "auto":
        return f"kv_cache_dtype={cache_config.cache_dtype}"
    if hasattr(model, "process_weights_after_loading"):
        return f"{type(model).__name__} has a model-level post-load step"
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        if not isinstance(method, (UnquantizedLinearMethod, UnquantizedEmbeddingMethod)):
            return f"{name}: {type(method).__name__}"
        weight = getattr(module, "weight", None)
        if weight is None or weight.is_meta or weight.numel() == 0:
            return f"{name}: its weight was not kept after loading"
    return None


class CollectiveWeightTransferEngine(WeightTransferEngine[CollectiveInitInfo, CollectiveUpdateInfo]):
    """Receives rank 0's bucket broadcasts and loads them into the live model, in place when
    ``in_place_refusal`` has no objection, else through vLLM's layerwise reload."""

    init_info_cls = CollectiveInitInfo
    update_info_cls = CollectiveUpdateInfo

    def __init__(self, config: Any, vllm_config: Any, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: TransferGroup | None = None
        self.refusal = in_place_refusal(model, vllm_config.model_config, vllm_config.cache_config)
        self.layers = PostLoadLayers(model) if self.refusal is None else None
        self._updating = False

    def init_transfer_engine(self, init_info: CollectiveInitInfo) -> None:
        self.shutdown()  # re-forming: leave the old group first
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group = TransferGroup(init_info.address, rank, torch.device(self.device), init_info.hostname)

    def start_weight_update(self) -> None:
        if self.refusal is not None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)
        self._updating = True

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
                    loaded = self.model.load_weights(named)
                    if self.layers is not None:
                        # While the next bucket is on the wire. A layer whose weights span two
                        # buckets is processed twice; the second time is after its last weight.
                        self.layers.process(loaded)
        except BaseException:
            # vLLM's worker forgets the update on an error; finish here so no layer is left on
            # the meta device or unpacked. The next full sync (recovery re-sends everything)
            # repairs the values.
            if self.layers is not None:
                self.layers.process()
            self.finish_weight_update()
            raise

    def finish_weight_update(self) -> None:
        if self._updating and self.refusal is not None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)
        self._updating = False

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


class WeightSyncWorkerExtension:
    """vLLM ``worker_extension_cls``: importing it registers ``BACKEND`` (and keeps CPU linear
    weights) in the worker process. Its method says how the worker's updates run."""

    def rlplat_weight_update(self) -> str:
        """``"in place"``, or ``"layerwise reload: <why>"`` (``in_place_refusal``)."""
        refusal = self.weight_transfer_engine.refusal
        return "in place" if refusal is None else f"layerwise reload: {refusal}"


_keep_cpu_linear_weights()
try:
    WeightTransferEngineFactory.register_engine(BACKEND, CollectiveWeightTransferEngine)
except ValueError:  # already registered in this process
    pass
