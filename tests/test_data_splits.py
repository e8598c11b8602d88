"""Splits of saved DatasetDicts and hub datasets (``data.train_split``, ``data.eval_split``,
``data.config_name``), chat template variables (``data.chat_template_kwargs``) and the keys'
validation. No network: the hub path is checked offline (a clear error naming the key) and with
``datasets.load_dataset`` replaced (which function, which config, which split)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rlplat.config.errors import ConfigError
from rlplat.config.schema import DataConfig
from rlplat.data import PromptRow, load_prompts, render_prompt, source_for

ROOT = Path(__file__).resolve().parents[1]


def _rows(split, n):
    return [{"question": f"{split} {i}", "answer": str(i), "difficulty": i % 2} for i in range(n)]


@pytest.fixture(scope="module")
def dataset_dict(tmp_path_factory):
    import datasets

    path = tmp_path_factory.mktemp("dd") / "dd"
    datasets.DatasetDict({name: datasets.Dataset.from_list(_rows(name, n))
                          for name, n in (("train", 4), ("validation", 2), ("test", 3))}).save_to_disk(str(path))
    return str(path)


def _cfg(path, **kw):
    return DataConfig(train_path=path, prompt_key="question", **kw)


def test_saved_dataset_dict_reads_the_chosen_splits(dataset_dict):
    cfg = _cfg(dataset_dict)
    assert [r.prompt for r in load_prompts(cfg, "train")] == [f"train {i}" for i in range(4)]
    assert source_for(cfg, "eval") == (dataset_dict, "data.train_path")  # eval falls back to the same dict
    assert [r.prompt for r in load_prompts(cfg, "eval")] == ["validation 0", "validation 1"]  # eval, validation, test
    cfg = _cfg(dataset_dict, train_split="validation", eval_split="test")
    assert [r.prompt for r in load_prompts(cfg, "train")] == ["validation 0", "validation 1"]
    assert [r.prompt for r in load_prompts(cfg, "eval")] == ["test 0", "test 1", "test 2"]
    assert load_prompts(cfg, "eval")[1].extra == {"difficulty": 1}


@pytest.mark.parametrize("split, key", [("train", "data.train_split"), ("eval", "data.eval_split")])
def test_unknown_split_names_the_key_and_lists_the_splits(dataset_dict, split, key):
    cfg = _cfg(dataset_dict, **{key.split(".")[1]: "dev"})
    with pytest.raises(ValueError, match=rf"{key}='dev' is not one of its splits \['test', 'train', 'validation'\]"):
        load_prompts(cfg, split)


def test_eval_without_a_held_out_split_says_which_key_to_set(tmp_path):
    import datasets

    datasets.DatasetDict(train=datasets.Dataset.from_list(_rows("train", 2))).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"none of the splits \['train'\] .* set data.eval_split"):
        load_prompts(_cfg(str(tmp_path / "d")), "eval")


def test_sources_without_splits_refuse_a_chosen_split(tmp_path):
    import datasets

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    datasets.Dataset.from_list(_rows("train", 2)).save_to_disk(str(tmp_path / "ds"))
    for path, what in ((str(jsonl), "a jsonl file"), (str(tmp_path / "ds"), "a saved Dataset")):
        assert len(load_prompts(_cfg(path), "train")) >= 1  # the default split: fine
        with pytest.raises(ValueError, match=f"data.train_split='test' selects a split .* this is {what}"):
            load_prompts(_cfg(path, train_split="test"), "train")
    with pytest.raises(ValueError, match="data.eval_split='test' .* a built-in task"):
        load_prompts(DataConfig(eval_split="test", builtin_eval_size=4), "eval")


class _FakeDict(dict):
    """What ``load_dataset`` returns without ``split``: split name -> rows."""


def test_hub_id_goes_to_load_dataset_with_its_config_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        return _FakeDict(train=_rows("train", 3), test=_rows("test", 2))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = _cfg("openai/gsm8k", config_name="main")
    assert [r.prompt for r in load_prompts(cfg, "train")] == ["train 0", "train 1", "train 2"]
    assert [r.prompt for r in load_prompts(cfg, "eval")] == ["test 0", "test 1"]  # no eval_path: its held-out split
    assert calls == [("openai/gsm8k", "main", {})] * 2
    with pytest.raises(ValueError, match=r"data.train_path='openai/gsm8k' \(hub dataset\): data.train_split='dev'"):
        load_prompts(replace(cfg, train_split="dev"), "train")
    with pytest.raises(ValueError, match="data.format='jsonl' applies to local files"):
        load_prompts(replace(cfg, format="jsonl"), "train")


def test_missing_hub_dataset_is_a_config_error_naming_the_key_offline(tmp_path):
    """A dataset that cannot load fails ``--check`` in seconds, naming data.train_path."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "RLPLAT_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config", str(ROOT / "configs" / "grpo.yaml"), "--check",
         "data.train_path=nobody/no-such-dataset", "data.eval_path=builtin:arithmetic",
         f"trainer.output_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "data.train_path='nobody/no-such-dataset': not a local file or directory, and datasets.load_dataset" \
        in proc.stderr + proc.stdout


# ------------------------------------------------------------------ validation of the keys
def _load(tmp_path, *overrides):
    from rlplat.config import load_config

    return load_config(str(ROOT / "configs" / "grpo.yaml"), [f"trainer.output_dir={tmp_path}/run", *overrides])


def test_keys_are_validated(tmp_path):
    cfg = _load(tmp_path, "data.train_path=openai/gsm8k", "data.config_name=main", "trainer.eval_every=0")
    assert cfg.data.config_name == "main"  # a hub id passes validation; loading it is the preflight's
    with pytest.raises(ConfigError, match="data.chat_template_kwargs=.* data.chat_template=false"):
        _load(tmp_path, "data.chat_template_kwargs={enable_thinking: false}")
    with pytest.raises(ConfigError, match="data.config_name='main' names a hub dataset's config"):
        _load(tmp_path, "data.config_name=main")
    with pytest.raises(ConfigError, match="data.train_path='data/train.jsonl' does not exist"):
        _load(tmp_path, "data.train_path=data/train.jsonl")  # named like a file: never a hub id
    with pytest.raises(ConfigError, match="data.eval_split='train' is data.train_split of the same source"):
        _load(tmp_path, "data.train_path=openai/gsm8k", "data.eval_split=train")
    with pytest.raises(ConfigError, match="data.train_split / data.eval_split must not be empty"):
        _load(tmp_path, "data.train_split=''")


# ------------------------------------------------------------------ chat template variables
def test_chat_template_kwargs_reach_the_template():
    from rlplat.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}{% if terse %}A:{% else %}assistant:{% endif %}{% endif %}")
    row = PromptRow(prompt="1+2=", answer="3", index=0)
    plain = DataConfig(chat_template=True)
    assert tok.decode(render_prompt(row, tok, plain)) == "<bos>user: 1+2=\nassistant:"
    terse = DataConfig(chat_template=True, chat_template_kwargs={"terse": True})
    assert tok.decode(render_prompt(row, tok, terse)) == "<bos>user: 1+2=\nA:"
