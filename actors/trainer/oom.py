"""Out-of-memory errors that say which token budget to lower."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_OOM_TEXT = ("out of memory", "can't allocate memory")  # CUDA / CPU allocator messages


class MicroBatchOOM(RuntimeError):
    """A forward/backward ran out of memory; the message names the config key to lower."""


@contextmanager
def budget_on_oom(key: str, budget: int, tokens: int) -> Iterator[None]:
    """Re-raise an allocator failure inside the block as ``MicroBatchOOM`` naming ``key``."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
        if not (isinstance(exc, torch.OutOfMemoryError) or any(t in str(exc) for t in _OOM_TEXT)):
            raise
        raise MicroBatchOOM(
            f"out of memory on a micro-batch of {tokens} padded tokens; lower {key} (now {budget}) "
            f"so micro-batches get smaller ({str(exc).splitlines()[0][:200]})") from exc
