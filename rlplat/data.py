"""Prompt data: load rows from a built-in task or a file, render them to token ids, sample batches.

Sources (``data.train_path`` / ``data.eval_path``):

- ``builtin:<task>`` - a task in ``rlplat.tasks.TASKS`` (``builtin:arithmetic``; preference pairs
  ``builtin:arithmetic_pairs``):
  ``builtin_train_size`` rows of its train split, ``builtin_eval_size`` rows of its held-out split.
- ``*.jsonl`` - one JSON object per line (blank lines skipped).
- ``*.parquet`` - one row per record; nested structs arrive as dicts.
- a directory written by ``datasets.Dataset.save_to_disk`` (``hf_disk``). A saved ``DatasetDict``
  reads ``data.train_split`` for training and ``data.eval_split`` (default: the first of
  ``eval`` / ``validation`` / ``test``) for evaluation (``rlplat.data_splits``).
- a hub dataset id (``org/name``, not on disk): ``datasets.load_dataset(path, name=data.config_name)``,
  the same split keys.

``data.format`` = ``auto`` picks the reader from the suffix / directory contents.

Fields: ``data.prompt_key`` and ``data.answer_key`` are dotted paths into nested rows
(``reward_model.ground_truth``, ``messages.0.content``); a key that literally contains a dot is
tried first. ``answer_key: ""`` means the data has no answers (preference-only training).
The prompt is a string, or a chat message list ``[{"role", "content"}, ...]`` (verl style),
which needs ``data.chat_template: true``. Numeric answers become strings (``3`` -> ``"3"``).
Every other top-level field of a row is kept in ``PromptRow.extra``. Preference data
(``load_prompts(..., pairs=True)``) also needs ``data.chosen_key`` and ``data.rejected_key``: strings,
or message lists whose last assistant message is the response.

Over-long prompts are an error, not a silent drop (verl's default ``truncation="error"``): a
dropped prompt changes the data distribution without anyone noticing. ``render_prompts`` renders
all rows up front so a too-long prompt fails at startup, naming every offending row.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from rlplat.config.schema import DataConfig
from rlplat.data_splits import SplitChoice, has_splits, read_hub, read_saved, refuse_choice, split_choice
from rlplat.hub_ids import is_hub_dataset
from rlplat.registry import Registry

BUILTIN_PREFIX = "builtin:"
SPLITS = ("train", "eval")
# The held-out split name of the built-in tasks (rlplat.tasks).
_BUILTIN_SPLIT = {"train": "train", "eval": "heldout"}
_MAX_NAMED_ROWS = 5  # an over-long-prompt error names at most this many rows


@dataclass
class PromptRow:
    """One prompt. ``index`` = position in the loaded list (stable for a given file and config);
    ``answer`` = gold answer text or None; ``extra`` = the row's other fields plus ``messages``
    (the chat message list) when the prompt was given as one."""

    prompt: str
    answer: Optional[str]
    index: int
    extra: Dict[str, Any] = field(default_factory=dict)


def group_of(row: Any, column: str) -> Any:
    """``row``'s value in ``column`` (a ``PromptRow``'s extra column); ``ValueError`` naming the row."""
    if column not in row.extra:
        raise ValueError(f"held-out row {row.index} ({row.prompt[:60]!r}) has no column '{column}' "
                         f"(trainer.eval_group_by); its columns: {sorted(row.extra)}")
    return row.extra[column]


# A reader of ``path`` yields (row number 0-based, location text for errors, raw row dict); the
# SplitChoice is the split the run asked for (a reader of a format without splits refuses a chosen one).
RawRows = Iterator[Tuple[int, str, Any]]
READERS: Registry[Callable[[str, SplitChoice], RawRows]] = Registry("data format")


@READERS.register("jsonl")
def _read_jsonl(path: str, choice: SplitChoice) -> RawRows:
    refuse_choice(choice, path, "a jsonl file")
    row = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_no} is not valid JSON: {exc.msg} (column {exc.colno})") from None
            yield row, f"row {row} (line {line_no})", obj
            row += 1


@READERS.register("parquet")
def _read_parquet(path: str, choice: SplitChoice) -> RawRows:
    import pyarrow.parquet as pq

    refuse_choice(choice, path, "a parquet file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{path}: cannot read as parquet: {exc}") from None
    for row, obj in enumerate(table.to_pylist()):
        yield row, f"row {row}", obj


READERS.register("hf_disk")(read_saved)


def detect_format(path: str) -> str:
    """``jsonl`` / ``parquet`` / ``hf_disk`` from the suffix or directory contents."""
    if os.path.isdir(path):
        markers = ("dataset_info.json", "state.json", "dataset_dict.json")
        if any(os.path.exists(os.path.join(path, m)) for m in markers):
            return "hf_disk"
        raise ValueError(
            f"{path}: directory is not a datasets.save_to_disk output (none of {', '.join(markers)} inside)"
        )
    lower = path.lower()
    if lower.endswith(".jsonl"):
        return "jsonl"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(
        f"{path}: cannot tell the format from the suffix (.jsonl, .parquet, or a save_to_disk dir); "
        f"set data.format to one of {', '.join(READERS.names())} (jsonl for JSON Lines in a .json file)"
    )


_MISSING = object()


def lookup(obj: Any, key: str) -> Any:
    """``obj[key]`` for a dotted ``key`` (``a.b.0.c``); returns ``_MISSING`` when absent.

    A dict key that literally contains dots wins over the dotted reading.
    """
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    cur = obj
    for part in key.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
    )


def _make_row(raw: Any, index: int, where: str, data_cfg: DataConfig) -> PromptRow:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object / record, got {type(raw).__name__}")
    keys = sorted(map(str, raw))
    prompt = lookup(raw, data_cfg.prompt_key)
    if prompt is _MISSING:
        raise ValueError(
            f"{where}: missing prompt key '{data_cfg.prompt_key}' (data.prompt_key); the row has keys {keys}"
        )
    extra = {k: v for k, v in raw.items() if k not in (data_cfg.prompt_key, data_cfg.answer_key)}
    if _is_messages(prompt):
        if not data_cfg.chat_template:
            raise ValueError(
                f"{where}: prompt '{data_cfg.prompt_key}' is a chat message list; set data.chat_template=true "
                "to render it"
            )
        extra["messages"] = [{"role": m["role"], "content": m["content"]} for m in prompt]
        users = [m["content"] for m in prompt if m["role"] == "user"]
        prompt = users[-1] if users else prompt[-1]["content"]
    elif not isinstance(prompt, str):
        raise ValueError(
            f"{where}: prompt '{data_cfg.prompt_key}' must be a string or a list of "
            f"{{'role', 'content'}} messages, got {type(prompt).__name__}: {str(prompt)[:80]!r}"
        )
    answer: Optional[str] = None
    if data_cfg.answer_key:
        value = lookup(raw, data_cfg.answer_key)
        if value is _MISSING:
            raise ValueError(
                f"{where}: missing answer key '{data_cfg.answer_key}' (data.answer_key; set it to \"\" for "
                f"data without answers); the row has keys {keys}"
            )
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(
                f"{where}: answer '{data_cfg.answer_key}' must be a string or a number, got "
                f"{type(value).__name__}: {str(value)[:80]!r}"
            )
        answer = value if isinstance(value, str) else str(value)
    return PromptRow(prompt=prompt, answer=answer, index=index, extra=extra)


def _builtin_rows(name: str, split: str, data_cfg: DataConfig, seed: int) -> List[PromptRow]:
    from rlplat.tasks import TASKS

    try:
        task_cls = TASKS.get(name)
    except KeyError as exc:
        raise ValueError(f"unknown built-in data source '{BUILTIN_PREFIX}{name}': {exc.args[0]}") from None
    n = data_cfg.builtin_train_size if split == "train" else data_cfg.builtin_eval_size
    raw = task_cls().generate(_BUILTIN_SPLIT[split], n, seed)
    return [PromptRow(prompt=r["prompt"], answer=r["answer"], index=i,
                      extra={k: v for k, v in r.items() if k not in ("prompt", "answer")}) for i, r in enumerate(raw)]


def source_for(data_cfg: DataConfig, split: str) -> Tuple[str, str]:
    """(path, config key) that ``split`` reads. Without ``data.eval_path``, eval reads the held-out
    split of the train source when it has one (``builtin:<task>``, a saved DatasetDict, a hub
    dataset); eval with a single-file train source and no ``data.eval_path`` is an error."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
    if split == "train":
        return data_cfg.train_path, "data.train_path"
    if data_cfg.eval_path:
        return data_cfg.eval_path, "data.eval_path"
    if data_cfg.train_path.startswith(BUILTIN_PREFIX) or has_splits(data_cfg.train_path):
        return data_cfg.train_path, "data.train_path"
    raise ValueError(
        f"data.eval_path is not set and data.train_path='{data_cfg.train_path}' has no held-out split (only "
        "builtin:<task>, saved DatasetDict and hub dataset sources do): evaluation (trainer.eval_every > 0) needs "
        "held-out prompts; set data.eval_path (a file, or builtin:<task>) or trainer.eval_every=0")


def _response_text(raw: Any, key: str, where: str, data_cfg: DataConfig) -> str:
    """A preference row's response under ``key``: a string, or (with ``data.chat_template``) a
    message list whose last assistant message is the response (TRL's conversational format)."""
    value = lookup(raw, key)
    config_key = "data.chosen_key" if key == data_cfg.chosen_key else "data.rejected_key"
    if value is _MISSING:
        raise ValueError(f"{where}: missing response key '{key}' ({config_key}); the row has keys {sorted(map(str, raw))}")
    if _is_messages(value):
        if not data_cfg.chat_template:
            raise ValueError(f"{where}: response '{key}' is a chat message list; set data.chat_template=true to read it")
        replies = [m["content"] for m in value if m["role"] == "assistant"]
        if not replies:
            raise ValueError(f"{where}: response '{key}' has no assistant message")
        return replies[-1]
    if not isinstance(value, str):
        raise ValueError(f"{where}: response '{key}' must be a string or a list of {{'role', 'content'}} messages, "
                         f"got {type(value).__name__}: {str(value)[:80]!r}")
    return value


def _make_pair_row(raw: Any, index: int, where: str, data_cfg: DataConfig) -> PromptRow:
    """``_make_row`` plus the two responses, as ``extra["chosen"]`` / ``extra["rejected"]`` texts."""
    row = _make_row(raw, index, where, data_cfg)
    for name, key in (("chosen", data_cfg.chosen_key), ("rejected", data_cfg.rejected_key)):
        row.extra.pop(key, None)
        row.extra[name] = _response_text(raw, key, where, data_cfg)
    return row


def load_prompts(data_cfg: DataConfig, split: str = "train", seed: int = 0, pairs: bool = False) -> List[PromptRow]:
    """All rows of ``split`` (``train`` | ``eval``), in file order.

    ``seed`` only affects ``builtin:`` sources (which problems are generated); keep it fixed
    so the data set does not change with ``trainer.seed``. ``pairs``: rows are preference pairs,
    each with a chosen and a rejected response (``data.chosen_key``, ``data.rejected_key``),
    returned as the texts ``extra["chosen"]`` and ``extra["rejected"]``. Every data problem raises
    ``ValueError`` naming the file, the row and the key.
    """
    path, cfg_key = source_for(data_cfg, split)
    choice = split_choice(data_cfg, split)
    if path.startswith(BUILTIN_PREFIX):
        refuse_choice(choice, f"{cfg_key}='{path}'", "a built-in task (its held-out split is the eval split)")
        rows = _builtin_rows(path[len(BUILTIN_PREFIX):], split, data_cfg, seed)
        if pairs and rows and not {"chosen", "rejected"} <= set(rows[0].extra):
            raise ValueError(f"{cfg_key}: '{path}' holds prompts, not preference pairs (try builtin:arithmetic_pairs)")
        return rows
    if is_hub_dataset(path):
        raw_rows = read_hub(path, cfg_key, data_cfg, choice)
    elif not os.path.exists(path):
        raise ValueError(f"{cfg_key}: '{path}' does not exist")
    else:
        fmt = detect_format(path) if data_cfg.format == "auto" else data_cfg.format
        try:
            reader = READERS.get(fmt)
        except KeyError as exc:
            raise ValueError(f"data.format: {exc.args[0]}") from None
        raw_rows = reader(path, choice)
    make = _make_pair_row if pairs else _make_row
    rows = [make(raw, row, f"{path}: {where}", data_cfg) for row, where, raw in raw_rows]
    if not rows:
        raise ValueError(f"{cfg_key}: '{path}' has no rows")
    return rows


def _messages(row: PromptRow, data_cfg: DataConfig) -> List[Dict[str, str]]:
    messages = list(row.extra.get("messages") or [{"role": "user", "content": row.prompt}])
    if data_cfg.system_prompt is not None:
        if any(m["role"] == "system" for m in messages):
            raise ValueError(
                f"prompt row {row.index} already has a system message and data.system_prompt is set; "
                "remove one of them"
            )
        messages.insert(0, {"role": "system", "content": data_cfg.system_prompt})
    return messages


def _plain(value: Any) -> Any:
    """Template variables as plain dicts and lists (the config may hold omegaconf containers)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _render(row: PromptRow, tokenizer: Any, data_cfg: DataConfig,
            tools: Optional[Sequence[Dict[str, Any]]] = None) -> List[int]:
    if data_cfg.chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"data.chat_template=true but tokenizer '{getattr(tokenizer, 'name_or_path', tokenizer)}' "
                "has no chat template"
            )
        text = tokenizer.apply_chat_template(_messages(row, data_cfg), tokenize=False, add_generation_prompt=True,
                                             **({"tools": list(tools)} if tools else {}),
                                             **_plain(data_cfg.chat_template_kwargs))
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if data_cfg.system_prompt is not None:
        raise ValueError("data.system_prompt needs data.chat_template=true")
    return list(tokenizer(row.prompt)["input_ids"])


def render_prompt(row: PromptRow, tokenizer: Any, data_cfg: DataConfig) -> List[int]:
    """Token ids of the prompt the policy sees (no padding).

    ``data.chat_template``: the tokenizer's chat template over [system_prompt?, user: prompt]
    (or the row's own message list) with the generation prompt appended and
    ``data.chat_template_kwargs`` as extra template variables, tokenized without
    extra special tokens (the template writes its own). Otherwise ``tokenizer(prompt)`` with the
    tokenizer's own special tokens. Raises ``ValueError`` naming the row when longer than
    ``data.max_prompt_tokens``.
    """
    ids = _render(row, tokenizer, data_cfg)
    if len(ids) > data_cfg.max_prompt_tokens:
        raise ValueError(
            f"prompt row {row.index} is {len(ids)} tokens, over data.max_prompt_tokens={data_cfg.max_prompt_tokens}: "
            f"{row.prompt[:80]!r}"
        )
    return ids


def render_prompts(rows: Sequence[PromptRow], tokenizer: Any, data_cfg: DataConfig,
                   tools: Optional[Sequence[Dict[str, Any]]] = None) -> List[List[int]]:
    """``render_prompt`` for every row; over-long prompts are reported together (count, the
    longest length and the first few rows) so one run of the check finds them all. ``tools``:
    OpenAI-style function schemas (``rlplat.envs.Toolbox.schemas()``) the chat template renders
    (``apply_chat_template(..., tools=...)``) with ``data.chat_template``; without a template a
    model knows its tools' format from training (the built-in tiny ones), and nothing is rendered."""
    out = [_render(row, tokenizer, data_cfg, tools) for row in rows]
    limit = data_cfg.max_prompt_tokens
    too_long = [(row.index, len(ids)) for row, ids in zip(rows, out) if len(ids) > limit]
    if too_long:
        named = ", ".join(f"row {i} ({n} tokens)" for i, n in too_long[:_MAX_NAMED_ROWS])
        more = f" and {len(too_long) - _MAX_NAMED_ROWS} more" if len(too_long) > _MAX_NAMED_ROWS else ""
        raise ValueError(
            f"{len(too_long)} of {len(rows)} prompts are longer than data.max_prompt_tokens={limit} "
            f"(longest {max(n for _, n in too_long)}): {named}{more}; raise data.max_prompt_tokens "
            "or filter the data"
        )
    return out


class PromptSampler:
    """Deterministic epoch-wise batches of prompts.

    Epoch ``e`` visits every row once in the order ``permutation(seed, e)`` (or file order with
    ``shuffle=False``); a batch that runs past the end of an epoch continues into the next one,
    so every batch has exactly ``prompts_per_step`` rows. The state is (epoch, position) - the
    order is recomputed from the seed - so ``load_state_dict(state_dict())`` resumes exactly.
    """

    def __init__(self, rows: Sequence[PromptRow], prompts_per_step: int, seed: int = 0, shuffle: bool = True) -> None:
        if not rows:
            raise ValueError("PromptSampler needs at least one prompt row")
        if not 1 <= prompts_per_step <= len(rows):
            raise ValueError(
                f"data.prompts_per_step={prompts_per_step} must be in [1, number of prompts = {len(rows)}]"
            )
        self.rows = list(rows)
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next_batch(self) -> List[PromptRow]:
        batch: List[PromptRow] = []
        while len(batch) < self.prompts_per_step:
            if self.position == len(self.rows):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            take = min(self.prompts_per_step - len(batch), len(self.rows) - self.position)
            batch.extend(self.rows[i] for i in self._order[self.position:self.position + take])
            self.position += take
        return batch

    def state_dict(self) -> Dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": len(self.rows),
            "prompts_per_step": self.prompts_per_step,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume at ``state``; a different data set size, seed or shuffle raises ``ValueError``
        (the saved position would point into a different order). A changed ``prompts_per_step``
        is allowed: the stream of prompts continues, only cut into other batch sizes."""
        for key, mine in (("num_rows", len(self.rows)), ("seed", self.seed), ("shuffle", self.shuffle)):
            if state.get(key) != mine:
                raise ValueError(
                    f"cannot resume prompt sampler: checkpoint has {key}={state.get(key)!r}, this run has {mine!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= len(self.rows) or epoch < 0:
            raise ValueError(f"cannot resume prompt sampler: bad state epoch={epoch} position={position}")
        self.epoch, self.position = epoch, position
        self._order = self._epoch_order(epoch)


__all__ = [
    "PromptRow", "PromptSampler", "READERS", "detect_format", "load_prompts", "lookup", "render_prompt",
    "render_prompts", "source_for",
]
