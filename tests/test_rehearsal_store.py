"""DPH-RL's pi_0 store is reused only when everything its samples depend on is unchanged:
sampling settings, dtype, the correctness threshold and the prompt rendering included."""
from dataclasses import replace

import pytest
import torch

from launch.loops.rehearsal import fingerprint
from launch.loops.store import load_store
from rlplat.config import RunConfig
from rlplat.data import load_prompts, render_prompts
from rlplat.models.tokenizer import build_tokenizer

PATHS = {"policy": "/models/pi0", "tokenizer": "/models/pi0"}


def small_cfg() -> RunConfig:
    cfg = RunConfig()
    cfg.data.builtin_train_size = 12
    return cfg


def fp(cfg: RunConfig) -> dict:
    """The fingerprint a Controller would compute: rows and rendering from ``cfg.data``."""
    rows = load_prompts(cfg.data, "train")
    ids = dict(zip((r.index for r in rows), render_prompts(rows, build_tokenizer(), cfg.data)))
    return fingerprint(cfg, PATHS, rows, ids)


def changed(**sections) -> RunConfig:
    """``small_cfg()`` with e.g. ``rollout={"temperature": 0.7}`` applied."""
    cfg = small_cfg()
    for section, values in sections.items():
        setattr(cfg, section, replace(getattr(cfg, section), **values))
    return cfg


CHANGES = {
    "temperature": dict(rollout={"temperature": 0.7}),
    "top_p": dict(rollout={"top_p": 0.9}),
    "top_k": dict(rollout={"top_k": 5}),
    "dtype": dict(model={"dtype": "bfloat16"}),
    "correct_threshold": dict(reward={"correct_threshold": 0.5}),
    "prompt_ids_sha256": dict(data={"chat_template": True}),
}


@pytest.mark.parametrize("key", CHANGES)
def test_store_made_under_other_settings_is_not_reused(key, tmp_path, capsys):
    path = str(tmp_path / "dph_rehearsal.pt")
    made = {"fingerprint": fp(small_cfg()), "exploration_rows": [1, 2], "rehearsal": None}
    torch.save(made, path)
    assert load_store(path, fp(small_cfg())) == made  # same settings: reused
    capsys.readouterr()
    assert load_store(path, fp(changed(**CHANGES[key]))) is None
    assert f"made under another {key}; preparing it again" in capsys.readouterr().out


def test_rendering_changes_the_fingerprint():
    base = fp(changed(data={"chat_template": True}))
    with_system = fp(changed(data={"chat_template": True, "system_prompt": "Answer with a number."}))
    assert base["prompt_ids_sha256"] != with_system["prompt_ids_sha256"]
    assert {k for k in base if base[k] != with_system[k]} == {"prompt_ids_sha256"}


def test_missing_store_is_none(tmp_path):
    assert load_store(str(tmp_path / "none.pt"), fp(small_cfg())) is None
