"""``Scorer``: a forward-only causal LM serving one role's log-probs (reference, teacher, snapshot).

A plain class; ``create_scorer_actor`` wraps it in ``ray.remote``. It uses exactly the trainer's
numerics (``rlplat.modeling``), so a scorer holding the policy's weights returns the trainer's
log-probs, and the same ``temperature`` must be passed to both.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from actors import quiet
from actors.rollout.common import check_weight_version
from actors.trainer.oom import budget_on_oom
from rlplat.batch import Batch
from rlplat.divergences.topk import TopK, teacher_topk
from rlplat.modeling import load_causal_lm, micro_batch_forward, response_logprobs

# What ``Scorer.score`` returns: log-probs Float32 [B, R], or (log-probs, TopK) with top_k > 0.
Scores = Union[torch.Tensor, Tuple[torch.Tensor, TopK]]


class Scorer:
    """Log-probs of sampled tokens under the model at ``model_path`` for role ``role``.

    ``micro_batch_tokens``: token budget of one forward pass. Runs on CUDA when the actor has a
    GPU, else CPU. Inputs and outputs are CPU tensors. ``top_k`` > 0 (``roles.<role>.top_k_logits``):
    ``score`` also returns the role's top-k next-token distribution at every response position
    (for full-distribution divergence terms), from the same forward pass.
    """

    def __init__(
        self,
        role: str,
        model_path: str,
        dtype: str = "float32",
        micro_batch_tokens: int = 4096,
        trust_remote_code: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        attn_implementation: Optional[str] = None,
    ):
        quiet.apply()  # third-party log noise off (trainer.log_level, via RLPLAT_LOG_LEVEL)
        if micro_batch_tokens <= 0:
            raise ValueError(f"scorer '{role}': micro_batch_tokens must be > 0, got {micro_batch_tokens}")
        self.role, self.model_path = role, model_path
        self.micro_batch_tokens = micro_batch_tokens
        self.temperature = temperature
        if top_k < 0:
            raise ValueError(f"scorer '{role}': top_k must be >= 0, got {top_k}")
        self.top_k = top_k
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.weights_version = 0  # 0: the weights at model_path; a restarted actor is back at 0
        self.model = load_causal_lm(model_path, dtype, trust_remote_code, attn_implementation).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def score(self, batch: Batch, weights_version: Optional[int] = None) -> Scores:
        """Float32 [B, R]: log-prob (nats) of each ``response_ids`` token under this role; 0 on padding.
        With ``top_k`` > 0, the pair ``(log-probs, TopK)`` (``score_topk``).

        ``weights_version``: raise ``StaleWeightsError`` unless this actor holds that version (a
        call queued on an actor Ray restarted must not score with its initial weights)."""
        check_weight_version(self.weights_version, weights_version)
        key = f"roles.{self.role}.micro_batch_tokens" if self.role != "snapshot" else "trainer.micro_batch_tokens"
        with budget_on_oom(key, self.micro_batch_tokens, self.micro_batch_tokens):
            if self.top_k:
                return self.score_topk(batch)
            return response_logprobs(
                self.model, batch, self.micro_batch_tokens, temperature=self.temperature, device=self.device
            )

    @torch.no_grad()
    def score_topk(self, batch: Batch) -> Tuple[torch.Tensor, TopK]:
        """(Float32 [B, R] log-probs, ``TopK``) from one forward pass per micro-batch: the TopK is
        ``teacher_topk`` of the temperature-scaled logits (log-probs normalised over the FULL
        vocabulary, exact tail), compact for the trip through Ray: ``logp`` Float32 [B, R, k],
        ``ids`` Int32 [B, R, k], ``tail_logp`` Float32 [B, R]. Padding positions hold 0."""
        b, r = batch.response_ids.shape
        k = self.top_k
        logp = torch.zeros((b, r), dtype=torch.float32)
        top = TopK(torch.zeros((b, r, k), dtype=torch.float32), torch.zeros((b, r, k), dtype=torch.int32),
                   torch.zeros((b, r), dtype=torch.float32))
        for idx in batch.split_by_token_budget(self.micro_batch_tokens):
            mb = batch.select(idx).trimmed().to(self.device)
            fwd = micro_batch_forward(self.model, mb, temperature=self.temperature)
            t = teacher_topk(fwd.logits, k)  # logits already divided by the temperature
            keep = mb.loss_mask.bool()  # the model's tokens: observations get no teacher distribution
            w = fwd.logp.shape[1]
            logp[idx, :w] = fwd.logp.cpu()
            top.logp[idx, :w] = torch.where(keep[..., None], t.logp.float(), 0.0).cpu()
            top.ids[idx, :w] = torch.where(keep[..., None], t.ids, 0).to(torch.int32).cpu()
            top.tail_logp[idx, :w] = torch.where(keep, t.tail_logp.float(), 0.0).cpu()
        return logp, top

    def score_rows(self, start: int, end: int, weights_version: Optional[int], *parts: Batch) -> Scores:
        """``score`` of rows ``start:end`` of the row-wise concatenation of ``parts`` (the rollout
        engines' outputs, passed as ObjectRefs so this call starts when they are generated):
        Float32 [end - start, R], R = the longest response of all parts (and the TopK with ``top_k``)."""
        batch = parts[0] if len(parts) == 1 else Batch.concat(parts, pad_id=0)  # padding is masked
        return self.score(batch.select(torch.arange(start, end)), weights_version)

    @torch.no_grad()
    def load_weights(self, named: Sequence[Tuple[str, torch.Tensor]], version: Optional[int] = None) -> int:
        """Copy ``[(HF parameter name, tensor)]`` or ``PackedWeights`` (``TrainerGroup.weights_ref()``'s
        object, resolved by Ray) into the model; every parameter must be covered, names and shapes must match. ``version`` (if
        given) is reported by ``info()["weights_version"]``, so a caller can tell an actor that
        Ray restarted (back at version 0) from one holding its weights. Returns the count."""
        from actors.rollout.weights import as_named_tensors

        params = dict(self.model.named_parameters())
        given = dict(as_named_tensors(named))
        unknown = sorted(set(given) - set(params))
        missing = sorted(set(params) - set(given))
        if unknown or missing:
            raise KeyError(f"scorer '{self.role}': load_weights names do not match the model "
                           f"(unknown: {unknown[:5]}, missing: {missing[:5]})")
        for name, tensor in given.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(f"scorer '{self.role}': '{name}' has shape {tuple(tensor.shape)}, "
                                 f"model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor.to(device=self.device, dtype=params[name].dtype))
        if version is not None:
            self.weights_version = int(version)
        return len(given)

    def info(self) -> Dict[str, Any]:
        return {
            "role": self.role,
            "model_path": self.model_path,
            "vocab_size": int(self.model.get_output_embeddings().weight.shape[0]),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "attn_implementation": self.model.config._attn_implementation,
            "weights_version": self.weights_version,
            "pid": os.getpid(),  # changes when Ray restarts the actor
        }


def create_scorer_actor(
    role: str,
    model_path: str,
    *,
    dtype: str = "float32",
    micro_batch_tokens: int = 4096,
    trust_remote_code: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    attn_implementation: Optional[str] = None,
    num_cpus: float = 0.25,
    num_gpus: float = 0.0,
    name: Optional[str] = None,
    placement_group: Any = None,
    bundle_index: int = 0,
    max_restarts: int = 0,
):
    """A Ray actor handle running ``Scorer`` (named ``f"scorer-{role}"`` unless ``name`` is given)."""
    import ray

    opts: Dict[str, Any] = dict(name=name or f"scorer-{role}", num_cpus=num_cpus, num_gpus=num_gpus,
                                max_restarts=max_restarts)
    if placement_group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=placement_group, placement_group_bundle_index=bundle_index
        )
    return ray.remote(Scorer).options(**opts).remote(
        role, model_path, dtype, micro_batch_tokens, trust_remote_code, temperature, top_k, attn_implementation
    )
