"""Packing a state dict for ``rollout.weight_sync=object_store`` (the fallback path).

The trainer's rank 0 gathers a full HF-named state dict, ``pack``s it into ONE contiguous byte
buffer plus a small index, and the controller ``ray.put``s it once; every engine receives the
same ``ObjectRef`` and ``unpack``s it. Ray stores numpy arrays out-of-band, so the buffer is
written to the shared-memory object store once and each engine reads it *zero-copy* (``unpack``
returns tensor views into the store's read-only buffer; the engine copies them into its own
parameters). A plain ``dict[str, Tensor]`` also works but is pickled tensor by tensor (one
extra copy per side).

The default, ``rollout.weight_sync=collective``, moves no tensor through the driver or the
object store: see ``actors.rollout.weight_sync`` (orchestration), ``transfer_group`` (the
torch.distributed broadcast) and ``buckets`` (the wire layout).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, List, Mapping, Tuple, Union

import numpy as np
import torch

NamedTensors = List[Tuple[str, torch.Tensor]]

# Every tensor starts on a 64-byte boundary so that torch.frombuffer views are aligned for
# any dtype (and for vectorised copies).
_ALIGN = 64


@dataclass
class PackedWeights:
    """A state dict flattened into one byte buffer.

    ``buffer``: uint8 numpy array [nbytes]; tensor k occupies
    ``buffer[offsets[k] : offsets[k] + numel_k * itemsize_k]`` in its native dtype
    (bfloat16 included: bytes are copied, never converted).
    """

    names: List[str]
    dtypes: List[str]  # torch dtype names, e.g. "float32", "bfloat16"
    shapes: List[Tuple[int, ...]]
    offsets: List[int]
    buffer: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


def pack(
    named_params: Union[Mapping[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]],
) -> PackedWeights:
    """Copy ``(name, tensor)`` pairs (any device, any dtype) into one CPU buffer (one copy each)."""
    items = list(named_params.items()) if isinstance(named_params, Mapping) else list(named_params)
    names, dtypes, shapes, offsets = [], [], [], []
    total = 0
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"pack: weight '{name}' is a {type(t).__name__}, expected a torch.Tensor")
        total = -(-total // _ALIGN) * _ALIGN
        names.append(name)
        dtypes.append(str(t.dtype).removeprefix("torch."))
        shapes.append(tuple(t.shape))
        offsets.append(total)
        total += t.numel() * t.element_size()
    buffer = np.empty(total, dtype=np.uint8)
    flat = torch.from_numpy(buffer)
    for (name, t), off in zip(items, offsets):
        n = t.numel() * t.element_size()
        if n:
            flat[off : off + n].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu())
    return PackedWeights(names=names, dtypes=dtypes, shapes=shapes, offsets=offsets, buffer=buffer)


def unpack(packed: PackedWeights) -> NamedTensors:
    """``(name, tensor)`` views into ``packed.buffer`` (no copy). The views may be read-only
    (a buffer fetched from the Ray object store is); callers copy them into their parameters."""
    with warnings.catch_warnings():
        # A buffer from the object store is read-only; we only ever read the views.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.from_numpy(packed.buffer)
    out: NamedTensors = []
    for name, dtype_name, shape, off in zip(packed.names, packed.dtypes, packed.shapes, packed.offsets):
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unpack: weight '{name}' has unknown dtype '{dtype_name}'")
        numel = int(np.prod(shape)) if shape else 1
        n = numel * torch.empty((), dtype=dtype).element_size()
        out.append((name, flat[off : off + n].view(dtype).reshape(shape)))
    return out


def as_named_tensors(
    weights: Union[PackedWeights, Mapping[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]],
) -> NamedTensors:
    """Normalise what an engine's ``update_weights`` accepts: ``PackedWeights``, a
    ``dict[name, Tensor]`` or a list of ``(name, Tensor)`` (HF parameter names)."""
    if isinstance(weights, PackedWeights):
        return unpack(weights)
    items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    out: NamedTensors = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise TypeError(f"update_weights expects (name, torch.Tensor) pairs, got {item!r:.80}")
        out.append((str(item[0]), item[1]))
    return out
