"""Which split of a data source a run reads, and reading the sources that have splits: a
``save_to_disk`` ``DatasetDict`` and a hub dataset (``datasets.load_dataset``).

``data.train_split`` (default ``train``) and ``data.eval_split`` (default null: the first of
``eval``, ``validation``, ``test`` present) pick the split. A source without splits (a jsonl or
parquet file, a saved ``Dataset``, ``builtin:<task>``) refuses a split other than these defaults,
so a key that cannot act is never silently ignored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Tuple

from rlplat.config.schema import DataConfig

DEFAULT_EVAL_SPLITS = ("eval", "validation", "test")


@dataclass(frozen=True)
class SplitChoice:
    names: Tuple[str, ...]  # split names to read; the first one the source has wins
    key: str  # the config key that chose them, for errors
    chosen: bool  # set by the user (not the default): a source without splits refuses it


def split_choice(data_cfg: DataConfig, split: str) -> SplitChoice:
    """The split names ``split`` (``train`` | ``eval``) reads."""
    if split == "train":
        return SplitChoice((data_cfg.train_split,), "data.train_split", data_cfg.train_split != DataConfig.train_split)
    if data_cfg.eval_split is not None:
        return SplitChoice((data_cfg.eval_split,), "data.eval_split", True)
    return SplitChoice(DEFAULT_EVAL_SPLITS, "data.eval_split", False)


def has_splits(path: str) -> bool:
    """A saved ``DatasetDict`` directory (its ``dataset_dict.json``) or a hub dataset id."""
    from rlplat.hub_ids import is_hub_dataset

    return os.path.isfile(os.path.join(os.path.expanduser(path), "dataset_dict.json")) or is_hub_dataset(path)


def select_split(splits: Mapping[str, Any], choice: SplitChoice, where: str) -> Any:
    """``splits[name]`` for the first of ``choice.names`` present; else ``ValueError`` naming the
    key and listing the splits there are."""
    for name in choice.names:
        if name in splits:
            return splits[name]
    available = sorted(splits)
    if len(choice.names) == 1:
        raise ValueError(f"{where}: {choice.key}='{choice.names[0]}' is not one of its splits {available}")
    raise ValueError(f"{where}: none of the splits {available} is one of {list(choice.names)}; "
                     f"set {choice.key} to the held-out one")


def refuse_choice(choice: SplitChoice, where: str, what: str) -> None:
    """``ValueError`` when the user chose a split of a source that has none (``what`` says what it is)."""
    if choice.chosen:
        raise ValueError(f"{where}: {choice.key}='{choice.names[0]}' selects a split of a saved DatasetDict or a "
                         f"hub dataset, but this is {what}, which has no splits; drop {choice.key}")


def _rows(ds: Any) -> Iterator[Tuple[int, str, Any]]:
    for row, obj in enumerate(ds):
        yield row, f"row {row}", obj


def read_saved(path: str, choice: SplitChoice) -> Iterator[Tuple[int, str, Any]]:
    """Rows of a ``save_to_disk`` directory: a ``Dataset``, or the chosen split of a ``DatasetDict``."""
    import datasets  # ~2 s to import: only when such a source is used

    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load with datasets.load_from_disk: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = select_split(ds, choice, f"{path} (saved DatasetDict)")
    else:
        refuse_choice(choice, path, "a saved Dataset")
    return _rows(ds)


def read_hub(path: str, path_key: str, data_cfg: DataConfig, choice: SplitChoice) -> Iterator[Tuple[int, str, Any]]:
    """Rows of the chosen split of hub dataset ``path`` (``data.config_name``: its config name).
    A dataset that cannot load (unknown id, no network, a config name missing) raises ``ValueError``
    naming ``path_key``."""
    import datasets

    where = f"{path_key}='{path}'"
    if data_cfg.format != "auto":
        raise ValueError(f"{where} is a hub dataset id, read with datasets.load_dataset; data.format="
                         f"'{data_cfg.format}' applies to local files: set data.format=auto")
    try:
        # Every split is downloaded and prepared anyway; loading them all lets one rule pick the split.
        dd = datasets.load_dataset(path, name=data_cfg.config_name)
    except Exception as exc:  # hub, network and builder errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{where}: not a local file or directory, and datasets.load_dataset('{path}', "
                         f"name={data_cfg.config_name!r}) failed: {type(exc).__name__}: {first}") from None
    return _rows(select_split(dd, choice, f"{where} (hub dataset)"))
