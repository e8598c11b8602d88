"""``rollouts.jsonl``: N rows per step with the documented fields; wandb/log keys are validated."""
import json

import pytest
import torch

from launch.rollout_log import RolloutLog, rollout_rows
from rlplat.batch import Batch
from rlplat.config.errors import ConfigError

FIELDS = {"step", "weight_version", "prompt", "response", "answer", "reward"}


def _batch(b, version=0):
    return Batch(prompt_ids=torch.ones(b, 2, dtype=torch.long), prompt_mask=torch.ones(b, 2, dtype=torch.long),
                 response_ids=torch.ones(b, 3, dtype=torch.long), response_mask=torch.ones(b, 3),
                 group_ids=torch.arange(b) // 2, rewards=torch.arange(b, dtype=torch.float32),
                 meta={"prompt": [f"p{i // 2}" for i in range(b)], "answer": [str(i // 2) for i in range(b)],
                       "response_text": [f"r{i}" for i in range(b)], "weight_version": [version] * b})


def test_writer_writes_n_rows_per_step_with_fields(tmp_path):
    log = RolloutLog(str(tmp_path), n=3, seed=7)
    for step in range(2):
        log.write(step, [_batch(8, version=step)])
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 0, 0, 1, 1, 1]
    for r in rows:
        assert set(r) == FIELDS and r["weight_version"] == r["step"]
        i = int(r["response"][1:])
        assert r["reward"] == float(i) and r["prompt"] == f"p{i // 2}" and r["answer"] == str(i // 2)
    assert rollout_rows(1, [_batch(8)], 3, 7) == rollout_rows(1, [_batch(8)], 3, 7)  # deterministic per (seed, step)


def test_writer_off_and_small_batches(tmp_path):
    RolloutLog(str(tmp_path), n=0, seed=0).write(0, [_batch(4)])
    assert not (tmp_path / "rollouts.jsonl").exists()
    assert len(rollout_rows(0, [_batch(2)], 5, 0)) == 2  # fewer rollouts than N: all of them
    b = _batch(2)
    b.meta["reward_fns"] = [{"a": 1.0, "b": float("nan")}, {"a": 0.0, "b": 2.0}]
    assert rollout_rows(0, [b], 5, 0)[0]["rewards"] == {"a": 1.0, "b": None}


def test_prompt_text_is_the_decoded_prompt_without_padding(tmp_path):
    from rlplat.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    b = _batch(2)
    ids = tok("<bos>user: 1+1=\nassistant:", add_special_tokens=False)["input_ids"]
    b.prompt_ids = torch.tensor([[0, 0] + ids] * 2)  # left-padded with the pad id 0
    b.prompt_mask = torch.tensor([[0, 0] + [1] * len(ids)] * 2)
    log = RolloutLog(str(tmp_path), n=2, seed=0, tokenizer=tok)
    rows = log.write(0, [b])
    assert [r["prompt_text"] for r in rows] == ["<bos>user: 1+1=\nassistant:"] * 2
    assert set(rows[0]) == FIELDS | {"prompt_text"}


@pytest.mark.parametrize("overrides, key", [
    (["trainer.log_samples=-1"], "trainer.log_samples"),
    (["trainer.loggers=[wandb,jsonl]", "trainer.wandb.mode=sometimes"], "trainer.wandb.mode"),
    (["trainer.wandb.project=x"], "trainer.loggers does not list 'wandb'"),
    (["trainer.loggers=[console,tensorboard]"], "must keep 'jsonl'"),
    (["trainer.loggers=[jsonl,jsonl]"], "at most once"),
    (["trainer.loggers=[jsonl,mlflow]"], r"unknown: \['mlflow'\]"),
])
def test_keys_are_validated(tmp_path, overrides, key):
    from rlplat.config import load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/grpo.yaml", [f"trainer.output_dir={tmp_path}/run", *overrides])


def test_wandb_enabled_without_the_package_names_the_key(tmp_path, monkeypatch):
    import importlib.util

    from rlplat.config import load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer\.loggers lists 'wandb', which needs the wandb package"):
        load_config("configs/grpo.yaml", [f"trainer.output_dir={tmp_path}/run", "trainer.loggers=[jsonl,wandb]"])
