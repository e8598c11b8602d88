"""Fixed-size weight buckets: how a state dict is cut into flat buffers for a broadcast.

Pure functions, no communication. A ``Bucket`` is a run of consecutive parameters of ONE dtype
laid end to end in a 1-D buffer of that dtype (so every view into it is aligned); it holds at
most ``bucket_bytes`` bytes unless a single parameter is larger, which is then a bucket alone.
The plan depends only on names, dtypes and shapes, so the sender and every receiver compute the
same byte layout from the same plan; the bytes themselves are copied, never converted
(bfloat16 included).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import torch

NamedTensors = List[Tuple[str, torch.Tensor]]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as the receivers see it: HF name, dtype, full (unpartitioned) shape."""

    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class Bucket:
    """Parameters ``params`` packed contiguously in a 1-D ``dtype`` buffer of ``numel`` elements;
    parameter k occupies elements ``[offsets[k], offsets[k] + params[k].numel)``."""

    dtype: torch.dtype
    params: Tuple[ParamSpec, ...]
    offsets: Tuple[int, ...]

    @property
    def numel(self) -> int:
        return self.offsets[-1] + self.params[-1].numel if self.params else 0

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def names(self) -> List[str]:
        return [p.name for p in self.params]


def plan_buckets(specs: Iterable[ParamSpec], bucket_bytes: int) -> List[Bucket]:
    """Cut ``specs`` (in order) into buckets of at most ``bucket_bytes`` bytes each.

    A bucket closes when the next parameter has another dtype or would push it past
    ``bucket_bytes``; a parameter larger than ``bucket_bytes`` gets a bucket of its own.
    Concatenating the buckets' ``params`` gives back ``specs`` exactly (order preserved)."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: List[Bucket] = []
    run: List[ParamSpec] = []

    def close() -> None:
        if run:
            offsets, at = [], 0
            for p in run:
                offsets.append(at)
                at += p.numel
            buckets.append(Bucket(run[0].dtype, tuple(run), tuple(offsets)))
            run.clear()

    size = 0
    for spec in specs:
        if run and (spec.dtype != run[0].dtype or size + spec.nbytes > bucket_bytes):
            close()
            size = 0
        run.append(spec)
        size += spec.nbytes
    close()
    return buckets


def pack_bucket(bucket: Bucket, tensors: Sequence[torch.Tensor], out: torch.Tensor = None) -> torch.Tensor:
    """Copy ``tensors`` (one per ``bucket.params``, any device) into a 1-D ``bucket.dtype`` buffer
    of ``bucket.numel`` elements (``out`` if given, else a new one on the first tensor's device)."""
    if len(tensors) != len(bucket.params):
        raise ValueError(f"bucket of {len(bucket.params)} parameters got {len(tensors)} tensors")
    if out is None:
        out = torch.empty(bucket.numel, dtype=bucket.dtype, device=tensors[0].device if tensors else "cpu")
    for spec, off, t in zip(bucket.params, bucket.offsets, tensors):
        if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
            raise ValueError(f"'{spec.name}': got {t.dtype} {tuple(t.shape)}, the plan says {spec.dtype} {spec.shape}")
        out[off : off + spec.numel].copy_(t.detach().reshape(-1))
    return out


def unpack_bucket(bucket: Bucket, flat: torch.Tensor) -> NamedTensors:
    """``(name, view)`` for every parameter of ``bucket``: views into ``flat``, no copy. The views
    keep ``flat`` alive; a caller that reuses ``flat`` must be done with them first."""
    if flat.dtype != bucket.dtype or flat.numel() != bucket.numel:
        raise ValueError(f"buffer is {flat.dtype}[{flat.numel()}], the bucket needs {bucket.dtype}[{bucket.numel}]")
    return [(p.name, flat[off : off + p.numel].view(p.shape)) for p, off in zip(bucket.params, bucket.offsets)]
