"""Files a loop prepares once before training and reuses while nothing they depend on changed
(DPH-RL's pi_0 rehearsal samples, f-DPO's reference log-probs): a ``torch.save``d dict whose
``"fingerprint"`` entry says what it was made under."""
from __future__ import annotations

import os
from typing import Optional

import torch


def load_store(path: str, expected: dict) -> Optional[dict]:
    """The store at ``path`` if it exists and was made under the fingerprint ``expected``, else None
    (saying which fingerprint entries differ)."""
    if not os.path.isfile(path):
        return None
    store = torch.load(path, weights_only=False)
    found = store.get("fingerprint") or {}
    if found == expected:
        return store
    changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    print(f"rlplat: {path} was made under another {', '.join(changed)}; preparing it again", flush=True)
    return None


def save_store(path: str, store: dict) -> None:
    """Write ``store`` to ``path`` atomically: a half-written store is never picked up."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(store, path + ".tmp")
    os.replace(path + ".tmp", path)
