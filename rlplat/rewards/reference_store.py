"""The fingerprint of a stored set of reference-policy rewards (InfAlign-CTRL's calibration data).

CTRL samples every training prompt m times with pi_ref once, before training, rewards the samples
and keeps the rewards (``Float[P, m]``, see ``rlplat.rewards.calibration``). A later run may reuse
them only if everything they depend on is unchanged; this module states what that is, as a plain
dict. Sampling, loading and saving belong to the loop (``launch/loops/ctrl.py``, with
``launch/loops/store.py``, which names the entries that differ).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Mapping, Optional, Sequence

STORE_VERSION = 1

# The sampling settings the reference samples depend on; each must be given (None allowed).
SAMPLING_KEYS = ("backend", "max_new_tokens", "temperature", "top_p", "top_k")


def fingerprint(
    *,
    reference: str,
    tokenizer: Optional[str],
    dtype: str,
    m: int,
    rows: Sequence[int],
    prompt_ids: Sequence[Sequence[int]],
    sampling: Mapping[str, Any],
    reward: str,
    seed: int,
) -> Dict[str, Any]:
    """What the stored reference rewards depend on.

    reference / tokenizer / dtype: the reference model that sampled (path or builtin name) and its dtype.
    m: samples per prompt. rows: the prompt rows' indices, in store order.
    prompt_ids: each row's rendered prompt token ids, in the same order; their sha256 stands for the
        whole rendering (tokenizer, chat template, system prompt, truncation).
    sampling: ``SAMPLING_KEYS`` (extra keys are refused, so a new setting is added here on purpose).
    reward: the reward spec (``reward.fn``). seed: the run seed the sampling streams derive from.
    """
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ValueError(f"m (reference samples per prompt) must be an int >= 1, got {m!r}")
    if len(prompt_ids) != len(rows):
        raise ValueError(f"prompt_ids has {len(prompt_ids)} entries, rows has {len(rows)}")
    missing = [k for k in SAMPLING_KEYS if k not in sampling]
    extra = sorted(set(sampling) - set(SAMPLING_KEYS))
    if missing or extra:
        raise ValueError(f"sampling must have exactly the keys {SAMPLING_KEYS}; missing {missing}, unexpected {extra}")
    rendered = json.dumps([list(map(int, ids)) for ids in prompt_ids], separators=(",", ":"))
    return {
        "version": STORE_VERSION, "reference": reference, "tokenizer": tokenizer, "dtype": dtype, "m": m,
        "rows": [int(i) for i in rows], "prompt_ids_sha256": hashlib.sha256(rendered.encode()).hexdigest(),
        **{k: sampling[k] for k in SAMPLING_KEYS}, "reward": reward, "seed": seed,
    }


__all__ = ["SAMPLING_KEYS", "STORE_VERSION", "fingerprint"]
