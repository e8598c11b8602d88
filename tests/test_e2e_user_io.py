"""What a user brings and reads, through the CLI: a jsonl data file with an extra column read by a
``module:function`` reward, two weighted reward functions, ``rollouts.jsonl`` and wandb offline."""
import json
import math

import pytest

from tests.test_e2e import train

pytestmark = pytest.mark.runtime


def test_columns_weighted_rewards_rollouts_and_wandb_offline(tmp_path, tiny_models, monkeypatch):
    from rlplat.tasks import TASKS

    data = tmp_path / "train.jsonl"
    rows = TASKS.get("arithmetic")().generate("train", 16, 0)
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"], "bonus": 0.5}) + "\n" for r in rows))
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, whatever the config says
    monkeypatch.setenv("WANDB_SILENT", "true")
    n, steps = 5, 2
    out, metrics, log = train(
        tmp_path, "grpo", f"data.train_path={data}", "reward.fn=null",
        'reward.fns=[{fn: "tests.reward_helpers:exact_with_bonus", weight: 1.0, name: bonus},'
        ' {fn: arithmetic, weight: 2.0}]',
        f"trainer.log_samples={n}", "trainer.loggers=[console,jsonl,wandb]", "trainer.wandb.project=rlplat-test",
        steps=steps)
    for m in metrics:
        # reward = (exact + 0.5) + 2 * exact, so its mean is 0.5 + 3 * the exact reward's mean
        assert m["reward/fn/bonus/mean"] == pytest.approx(m["reward/fn/arithmetic/mean"] + 0.5)
        assert m["reward/errors"] == 0 and m["reward/fn/bonus/errors"] == 0
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rollouts] == [s for s in range(steps) for _ in range(n)]
    for r in rollouts:
        assert {"prompt", "response", "reward", "answer", "step", "weight_version", "rewards"} <= set(r)
        assert r["weight_version"] == r["step"]  # synchronous: sampled on the weights of the step before
        assert math.isclose(r["reward"], r["rewards"]["bonus"] + 2 * r["rewards"]["arithmetic"], rel_tol=1e-6)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), sorted(p.name for p in (out / "wandb").rglob("*"))
    tables = sorted(runs[0].rglob("samples_*.table.json"))  # each step's rollouts as a wandb table
    assert len(tables) == steps, sorted(p.name for p in runs[0].rglob("*"))
    assert len(json.loads(tables[0].read_text())["data"]) == n
    # trainer.loggers without tensorboard: no TensorBoard files; console kept: the progress lines.
    assert not (out / "tensorboard").exists() and f"step {steps}/{steps}" in log
