"""Re-running vLLM's post-load step on a live model after weights were copied into it.

vLLM processes each layer once its weights are loaded
(``quant_method.process_weights_after_loading``: on CPU, packing a linear layer's weight for
oneDNN, a copy the layer then computes with). A weight update that copies into the parameters
must re-run that step for the layers it wrote, or they keep computing with the old weights. No
side effects on import (unlike ``vllm_transfer``), so the object-store path uses it too.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import torch


def process_layers(model: torch.nn.Module, param_names: Optional[Iterable[str]] = None) -> None:
    """Re-run the post-load step (``quant_method.process_weights_after_loading``) of every layer
    holding one of ``param_names`` (vLLM parameter names, as ``load_weights`` returns them; None:
    every layer). A tied parameter counts for every layer holding it: a tied LM head keeps its own
    packed copy of the embedding on CPU, which a copy into the embedding does not reach."""
    layers = [m for m in model.modules() if getattr(m, "quant_method", None) is not None]
    if param_names is not None:
        params = dict(model.named_parameters(remove_duplicate=False))
        touched = {id(params[name]) for name in param_names}
        layers = [m for m in layers if any(id(p) in touched for p in m.parameters(recurse=False))]
    for layer in layers:
        layer.quant_method.process_weights_after_loading(layer)


def reprocess_tied_layers(worker: Any) -> None:
    """``LLM.collective_rpc`` callable, run after vLLM's ``reload_weights``: its layerwise reload
    does not reload a tied LM head ("ParallelLMHead: Failed to load weights"), which on CPU keeps
    sampling from the old embedding; re-process every layer whose parameter another layer shares."""
    if worker.model_config.quantization is not None:  # post-load steps that are not idempotent
        return
    model = worker.model_runner.model
    seen: Dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    names = [name for name, param in model.named_parameters(remove_duplicate=False) if seen[id(param)] > 1]
    if names:
        process_layers(model, names)
