"""A user's own HF model and ``save_to_disk`` dataset through the real CLI (issue 17, item 3): a
local model directory whose tokenizer has its own chat template, a DatasetDict with train and test
splits and a column beyond question/answer read by a ``module:function`` reward, the chat template
with ``data.chat_template_kwargs``, evaluation on the test split."""
import json
import shutil

import pytest

from tests.reward_helpers import HARD_BONUS
from tests.test_e2e import train

pytestmark = pytest.mark.runtime

# The built-in template with a variable: [tag] before the conversation when data.chat_template_kwargs sets it.
TEMPLATE = ("{{ bos_token }}{% if tag %}[{{ tag }}] {% endif %}"
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def _difficulty(answer: str) -> str:
    return "hard" if int(answer) >= 100 else "easy"  # a carry into the hundreds


def _dataset(path):
    import datasets

    from rlplat.tasks import TASKS

    task = TASKS.get("arithmetic")()
    splits = {name: [{"question": r["prompt"], "answer": r["answer"], "difficulty": _difficulty(r["answer"])}
                     for r in task.generate(source, n, 0)] for name, source, n in (("train", "train", 16),
                                                                                 ("test", "heldout", 8))}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return splits


def test_local_model_saved_dataset_chat_template_and_extra_column(tmp_path, tiny_models):
    from rlplat.tasks.arithmetic import score

    model = tmp_path / "my-model"
    shutil.copytree(tiny_models["policy"], model)
    (model / "chat_template.jinja").write_text(TEMPLATE)
    splits = _dataset(tmp_path / "my-data")
    out, metrics, _ = train(
        tmp_path, "grpo", f"model.path={model}", f"data.train_path={tmp_path / 'my-data'}", "data.eval_split=test",
        "data.prompt_key=question", "data.chat_template=true", "data.chat_template_kwargs={tag: sum}",
        "data.max_prompt_tokens=48", "reward.fn=tests.reward_helpers:exact_by_difficulty",
        "trainer.log_samples=8", "trainer.eval_every=2", "trainer.eval_before_train=false",
        "trainer.eval_max_prompts=8", "trainer.eval_n=2", "trainer.eval_ks=[1,2]", steps=2)
    assert all(m["reward/errors"] == 0 for m in metrics)
    difficulty = {r["question"]: r["difficulty"] for rows in splits.values() for r in rows}
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 16
    for r in rollouts:
        assert r["prompt"] in {q["question"] for q in splits["train"]}  # the train split only
        # The policy saw the model's own template, with the variable set from data.chat_template_kwargs.
        assert r["prompt_text"] == f"<bos>[sum] user: {r['prompt']}\nassistant:"
        bonus = HARD_BONUS if difficulty[r["prompt"]] == "hard" else 0.0
        assert r["reward"] == pytest.approx(score(r["response"], r["answer"]) + bonus)
    assert any(difficulty[r["prompt"]] == "hard" for r in rollouts)  # the column changed some rewards
    assert metrics[-1]["eval/num_prompts"] == 8 and metrics[-1]["eval/reward_invalid"] == 0
    saved = json.loads((out / "eval" / "step_1.json").read_text())
    tests = {q["question"] for q in splits["test"]}
    assert [rec["prompt"] for rec in saved["records"]] == [q["question"] for q in splits["test"]]
    for rec in saved["records"]:
        assert rec["prompt"] in tests and len(rec["rewards"]) == 2
        floor = HARD_BONUS if difficulty[rec["prompt"]] == "hard" else 0.0
        assert all(floor <= x <= floor + 1 for x in rec["rewards"])  # scored with the test rows' column
