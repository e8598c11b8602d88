"""Causal-LM numerics shared by the trainer and the scorers: loading, and per-token log-probs.

Every log-prob the platform compares (rollout "old", reference, teacher, snapshot, stored pi_0)
must come from the same numerics, so all of them go through ``micro_batch_logprobs``:

* inputs are ``cat([prompt_ids, response_ids])`` with LEFT-padded prompts, so positions are
  ``cumsum(attention_mask) - 1`` clipped at 0 (a left pad must not shift the real tokens' positions);
* the log-prob of ``response_ids[:, t]`` is read from the logits at position ``P + t - 1``;
* logits are divided by ``temperature`` (the sampler's), cast to float32, and the log-prob is
  ``logit[token] - logsumexp(logits)``, which never materialises a ``[B, R, V]`` log-softmax;
* padding positions are exactly 0.

Pure torch/transformers: no Ray, no DeepSpeed (a DeepSpeed engine can be passed as ``model``:
it forwards keyword arguments to the wrapped module).
"""
from __future__ import annotations

import inspect
from typing import NamedTuple, Optional, Tuple, Union

import torch

from rlplat.batch import Batch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; raises ValueError naming the bad value."""
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   attn_implementation: Optional[str] = None) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` in ``dtype``, with ``attn_implementation``
    (None: transformers' default); errors name ``path``."""
    from transformers import AutoModelForCausalLM

    torch_type = torch_dtype(dtype)
    attention = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_type, trust_remote_code=trust_remote_code,
                                                    **attention)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... depending on the cause
        raise RuntimeError(f"could not load a causal LM from '{path}' (dtype={dtype}): {exc}") from exc


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Long [B, T]: position of each token counted from the first real token (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    cached = getattr(module, "_rlplat_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(module.forward).parameters
        try:
            module._rlplat_logits_to_keep = cached
        except AttributeError:
            pass
    return cached


def response_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits [B, R, V] (model dtype) predicting ``batch.response_ids``: positions P-1 .. P+R-2.

    Models that take ``logits_to_keep`` (transformers >= 4.50) project only those R positions
    through the LM head; other models compute all T positions and are sliced.
    """
    p, r = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    if p == 0:
        raise ValueError("batch has an empty prompt: the first response token has no logits to come from")
    mask = batch.attention_mask
    kwargs = dict(input_ids=batch.input_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    if _accepts_logits_to_keep(model):
        keep = torch.arange(p - 1, p + r - 1, device=batch.prompt_ids.device)
        logits = model(**kwargs, logits_to_keep=keep).logits
    else:
        logits = model(**kwargs).logits[:, p - 1 : p + r - 1]
    if logits.shape[1] != r:
        raise RuntimeError(f"model returned logits for {logits.shape[1]} positions, expected {r}")
    return logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Float32 [B, R]: log softmax(logits)[token], as ``logit[token] - logsumexp`` in float32."""
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Float32 [B, R]: entropy (nats) of softmax(logits), the full next-token distribution
    (``rlplat.losses.token_entropy``, chunked so its float32 copy stays small)."""
    from rlplat.losses import token_entropy

    return token_entropy(logits)


class Forward(NamedTuple):
    """One forward pass over a micro-batch (``micro_batch_forward``)."""

    logp: torch.Tensor  # Float32 [B, R]: log-probs of response_ids, 0 on padding
    entropy: Optional[torch.Tensor]  # Float32 [B, R] (0 on padding) or None
    logits: torch.Tensor  # [B, R, V], model dtype, divided by the temperature; in the caller's graph


def micro_batch_forward(
    model: torch.nn.Module,
    batch: Batch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> Forward:
    """``micro_batch_logprobs`` that also hands back the temperature-scaled logits it computed
    them from, for losses that need the whole next-token distribution (full-distribution
    divergence terms): the same single forward, no second one."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = response_logits(model, batch)
    if temperature != 1.0:
        logits = logits / temperature
    # loss_mask, not response_mask: an episode's observation tokens are inputs, not the model's
    # choices; their log-probs (and entropies) are 0, as the engines report them.
    mask = batch.loss_mask.to(torch.float32)
    logp = token_logprobs(logits, batch.response_ids) * mask
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits if entropy_grad else logits.detach()) * mask
    return Forward(logp, entropy, logits)


def micro_batch_logprobs(
    model: torch.nn.Module,
    batch: Batch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """One forward pass over all of ``batch``: Float32 [B, R] log-probs of ``response_ids``
    (0 on padding), plus Float32 [B, R] entropies (0 on padding) when ``with_entropy``.

    Log-probs run under the caller's grad mode, so the trainer backpropagates through them.
    Entropies are detached (a metric: no [B, R, V] autograd buffers) unless ``entropy_grad``."""
    out = micro_batch_forward(model, batch, temperature, with_entropy, entropy_grad)
    return (out.logp, out.entropy) if with_entropy else out.logp


def response_logprobs(
    model: torch.nn.Module,
    batch: Batch,
    micro_batch_tokens: int,
    with_entropy: bool = False,
    temperature: float = 1.0,
    device: Optional[Union[str, torch.device]] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Float32 [B, R] log-probs of ``batch.response_ids`` (and entropies), computed in
    micro-batches of at most ``micro_batch_tokens`` padded tokens (``Batch.split_by_token_budget``),
    each trimmed of all-padding columns and moved to ``device`` (default: stays where it is).
    Results sit on ``batch``'s device, in row order.

    Grad mode is the caller's: wrap in ``torch.no_grad()`` for scoring."""
    if micro_batch_tokens <= 0:
        raise ValueError(f"micro_batch_tokens must be > 0, got {micro_batch_tokens}")
    out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=batch.response_ids.device)
    ent = torch.zeros_like(out) if with_entropy else None
    for idx in batch.split_by_token_budget(micro_batch_tokens):
        mb = batch.select(idx.to(batch.response_ids.device)).trimmed()
        if device is not None:
            mb = mb.to(device)
        r = mb.response_ids.shape[1]
        res = micro_batch_logprobs(model, mb, temperature=temperature, with_entropy=with_entropy)
        rows = idx.to(out.device)
        if with_entropy:
            out[rows, :r], ent[rows, :r] = res[0].to(out.device), res[1].to(out.device)
        else:
            out[rows, :r] = res.to(out.device)
    return (out, ent) if with_entropy else out


