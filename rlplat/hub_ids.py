"""Whether a path that is not on disk reads as a Hugging Face hub id (``org/name`` or ``name``).

One rule for models (``model.path``, ``roles.*.path``) and data (``data.train_path``,
``data.eval_path``), so a mistyped local path is reported as missing instead of being sent to the hub.
"""
from __future__ import annotations

import os
import re

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# A data path ending like a file is a local file that is missing, never a hub dataset id.
_DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".pq", ".csv", ".txt", ".arrow")


def looks_like_hub_id(path: str) -> bool:
    """``org/name`` or ``name``: no leading ``/ . ~``, at most one ``/``, word characters, ``.`` and ``-``."""
    return not path.startswith(("/", ".", "~")) and bool(_HUB_ID.match(path))


def looks_like_hub_dataset(path: str) -> bool:
    """``looks_like_hub_id`` and not named like a data file (``train.jsonl``)."""
    return looks_like_hub_id(path) and not path.lower().endswith(_DATA_FILE_SUFFIXES)


def is_hub_dataset(path: str) -> bool:
    """A data source read with ``datasets.load_dataset``: not ``builtin:``, not on disk, shaped like a hub id."""
    return not path.startswith("builtin:") and not os.path.exists(os.path.expanduser(path)) and looks_like_hub_dataset(path)
