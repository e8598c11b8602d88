"""Re-running vLLM's post-load step on a live model after weights were copied into it.

vLLM processes each layer once its weights are loaded
(``quant_method.process_weights_after_loading``: on CPU, packing a linear layer's weight for
oneDNN, a copy the layer then computes with). A weight update that copies into the parameters
must re-run that step for the layers it wrote, or they keep computing with the old weights. No
side effects on import (unlike ``vllm_transfer``), so the object-store path uses it too.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch


class PostLoadLayers:
    """The layers of ``model`` that have a post-load step, indexed by the vLLM parameter names
    (as ``load_weights`` returns them) each one holds. A tied parameter counts for every layer
    holding it: a tied LM head keeps its own packed copy of the embedding on CPU, which a copy
    into the embedding does not reach. Built once per model; the index holds modules and names,
    which a post-load step does not replace."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers: List[torch.nn.Module] = [
            m for m in model.modules() if getattr(m, "quant_method", None) is not None
        ]
        holders: Dict[int, List[torch.nn.Module]] = {}
        for layer in self.layers:
            for param in layer.parameters(recurse=False):
                holders.setdefault(id(param), []).append(layer)
        self.by_name: Dict[str, List[torch.nn.Module]] = {
            name: holders[id(param)]
            for name, param in model.named_parameters(remove_duplicate=False)
            if id(param) in holders
        }
        self.tied_names: List[str] = [name for name, layers in self.by_name.items() if len(layers) > 1]

    def process(self, param_names: Optional[Iterable[str]] = None) -> None:
        """Re-run the post-load step of every layer holding one of ``param_names`` (None: every
        layer), once each, in model order."""
        if param_names is None:
            layers = self.layers
        else:
            # A name outside the index (a norm's weight, a buffer some model's load_weights
            # reports) belongs to no layer with a post-load step: nothing to re-run for it.
            touched = {id(layer) for name in param_names for layer in self.by_name.get(name, ())}
            layers = [layer for layer in self.layers if id(layer) in touched]
        for layer in layers:
            layer.quant_method.process_weights_after_loading(layer)


def reprocess_tied_layers(worker: Any) -> None:
    """``LLM.collective_rpc`` callable, run after vLLM's ``reload_weights``: its layerwise reload
    does not reload a tied LM head ("ParallelLMHead: Failed to load weights"), which on CPU keeps
    sampling from the old embedding; re-process every layer whose parameter another layer shares."""
    if worker.model_config.quantization is not None:  # post-load steps that are not idempotent
        return
    layers = PostLoadLayers(worker.model_runner.model)
    if layers.tied_names:
        layers.process(layers.tied_names)
