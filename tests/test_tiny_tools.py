"""builtin:tiny-policy-tools' warm start (rlplat.models.tiny, curriculum ``tools``): its
demonstrations are episodes of the real tool task, laid out token for token as the runtime lays
them out, with loss on the model turns only. Fast tier: no Ray, no model build."""
import operator
import re
from pathlib import Path

import pytest
import torch
import yaml

from rlplat.envs import make_env
from rlplat.episodes import EpisodeLimits, TurnSample, run_episodes
from rlplat.models import tiny
from rlplat.models.tiny import (
    CURRICULA, SIZES, TOOL_ENV, TOOL_LIMITS, TOOL_OBSERVATION_TEMPLATE, direct_demonstration, episode_layout,
    tool_demonstration, tool_rows,
)
from rlplat.models.tokenizer import EOS_ID, PAD_ID, build_tokenizer
from rlplat.tasks.arithmetic import score

ROOT = Path(__file__).resolve().parent.parent
SPEC = SIZES.get("policy-tools")
STEPS = 40  # warm-start steps sampled by the tests, the last 40 (where the demonstrator calls the tool at tool_rate)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def rows():
    steps = SPEC.warm_start_steps
    return [row for step in range(steps - STEPS, steps) for row in tool_rows(SPEC, step, steps, 0)]


def uses_tool(row):
    return bool(row["observations"])


def test_the_spec_fine_tunes_the_policy_on_the_tools_curriculum():
    assert SPEC.base == "policy" and SPEC.curriculum == "tools" and 0.0 < SPEC.tool_rate < 1.0
    assert STEPS <= SPEC.tool_steps < SPEC.warm_start_steps
    assert SPEC.careless_steps == SPEC.warm_start_steps  # its additions stay the policy's careless ones
    curriculum = CURRICULA.get("tools")
    assert curriculum.collate is tiny._collate_episodes and curriculum.measure is tiny.tool_use


def test_the_config_runs_the_task_the_build_was_shown():
    """configs/grpo_tools.yaml shows observations with the template, and has the limits, of the demonstrations."""
    cfg = yaml.safe_load((ROOT / "configs" / "grpo_tools.yaml").read_text())
    rollout = cfg["rollout"]
    assert cfg["model"]["path"] == "builtin:tiny-policy-tools" and rollout["env"]["name"] == TOOL_ENV
    assert cfg["data"]["train_path"] == "builtin:multiplication" and cfg["reward"]["fn"] == "env"
    assert rollout["observation_template"] == TOOL_OBSERVATION_TEMPLATE
    assert {k: rollout[k] for k in TOOL_LIMITS} == TOOL_LIMITS


def test_before_the_last_tool_steps_every_product_calls_the_tool():
    steps = SPEC.warm_start_steps
    first = [tiny.tool_call_rate(SPEC, step, steps) for step in range(steps - SPEC.tool_steps)]
    assert first == [1.0] * (steps - SPEC.tool_steps)
    assert [tiny.tool_call_rate(SPEC, step, steps) for step in range(steps - SPEC.tool_steps, steps)] == (
        [SPEC.tool_rate] * SPEC.tool_steps)
    rows = [r for step in (0, steps - SPEC.tool_steps - 1) for r in tool_rows(SPEC, step, steps, 0)]
    assert all(uses_tool(r) == ("*" in r["prompt"]) for r in rows)


def test_the_tool_call_share_is_the_specs(rows):
    products = [r for r in rows if "*" in r["prompt"]]
    additions = [r for r in rows if "+" in r["prompt"]]
    assert len(products) + len(additions) == len(rows) == STEPS * SPEC.batch_size
    assert abs(len(additions) / len(rows) - tiny.TOOL_ADDITION_SHARE) < 0.04
    assert abs(sum(map(uses_tool, products)) / len(products) - SPEC.tool_rate) < 0.04
    assert not any(map(uses_tool, additions))  # additions are answered directly, as the policy does
    # the demonstrator's choice is independent of the problem: products' operands do not decide it
    big = [r for r in products if int(r["answer"]) >= 1000]
    assert abs(sum(map(uses_tool, big)) / len(big) - SPEC.tool_rate) < 0.06


def test_tool_demonstrations_replayed_through_the_environment_earn_reward_1(rows):
    """Every tool-using demonstration, its turns sent to the real builtin:calc_arithmetic: the call
    gets the demonstration's observation back (not done, one call), the answer earns reward 1."""
    tooled = [r for r in rows if uses_tool(r)]
    assert len(tooled) > 100
    for row in tooled:
        env = make_env(TOOL_ENV)
        env.reset(row)
        call, answer = row["turns"]
        first = env.step(call)
        assert (first.observation, first.reward, first.done) == (row["observations"][0], 0.0, False), row
        assert (first.info["tool_calls"], first.info["tool_errors"]) == (1, 0)
        last = env.step(answer)
        assert (last.reward, last.done, last.info["tool_calls"]) == (1.0, True, 0), row
    direct = [r for r in rows if not uses_tool(r) and "*" in r["prompt"]]
    env = make_env(TOOL_ENV)
    env.reset(direct[0])
    assert env.step(direct[0]["turns"][0]).done  # a direct answer ends the episode in one turn


def _replay(tok, row):
    """run_episodes on ``row`` with a sampler that returns the demonstration's model turns."""
    _, labels = episode_layout(tok, row)
    turns = iter(list(tok(t, add_special_tokens=False)["input_ids"]) + [EOS_ID] for t in row["turns"])

    def sample(prompts, budgets):
        assert len(prompts) == 1 and budgets == [TOOL_LIMITS["max_new_tokens"]]
        ids = next(turns)
        return [TurnSample(ids, [0.0] * len(ids), "stop")]

    prompt = list(tok(row["prompt"])["input_ids"])
    [episode] = run_episodes(
        [make_env(TOOL_ENV)], [row], [prompt], sample,
        lambda text: tok.encode(TOOL_OBSERVATION_TEMPLATE.format(observation=text), add_special_tokens=False),
        lambda ids: tok.decode(ids, skip_special_tokens=True), EpisodeLimits(**TOOL_LIMITS))
    return prompt, episode


@pytest.mark.parametrize("row", [
    tool_demonstration({"prompt": "38*45=", "answer": "1710"}),
    tool_demonstration({"prompt": "7*0=", "answer": "0"}),
    direct_demonstration({"prompt": "38*45=", "answer": "1710"}),
    dict(direct_demonstration({"prompt": "38+45=", "answer": "73"}), answer="83"),  # a dropped carry: reward 0
])
def test_the_layout_is_the_episode_run_episodes_builds(tok, row):
    ids, labels = episode_layout(tok, row)
    prompt, episode = _replay(tok, row)
    assert ids == prompt + episode.token_ids
    assert [int(label != -100) for label in labels] == [0] * len(prompt) + episode.loss_mask
    assert episode.finish_reason == "done" and episode.turns == len(row["turns"])
    left, op, right = re.fullmatch(r"(\d+)([*+])(\d+)=", row["prompt"]).groups()
    gold = {"*": operator.mul, "+": operator.add}[op](int(left), int(right))
    assert episode.reward == score(row["turns"][-1], str(gold))  # the careless sum earns 0


def test_labels_are_minus_100_exactly_on_the_prompt_and_the_observation(tok):
    row = tool_demonstration({"prompt": "38*45=", "answer": "1710"})
    ids, labels = episode_layout(tok, row)
    assert tok.decode(ids) == "<bos>38*45=<calc>38*45</calc><eos><out>1710</out>= 1710<eos>"
    prompt, call, seen, answer = "<bos>38*45=", "<calc>38*45</calc><eos>", "<out>1710</out>=", " 1710<eos>"
    lengths = [len(tok(s, add_special_tokens=False)["input_ids"]) for s in (prompt, call, seen, answer)]
    assert lengths == [7, 19, 16, 6]
    trained = [False] * lengths[0] + [True] * lengths[1] + [False] * lengths[2] + [True] * lengths[3]
    assert [label != -100 for label in labels] == trained
    assert all(label == i for label, i, t in zip(labels, ids, trained) if t)

    batch = tiny._collate_episodes(tok, [row, direct_demonstration({"prompt": "3*4=", "answer": "12"})])
    short = len(episode_layout(tok, direct_demonstration({"prompt": "3*4=", "answer": "12"}))[0])
    assert batch["input_ids"].shape == (2, len(ids)) and batch["labels"][0].tolist() == labels
    assert batch["input_ids"][1, short:].eq(PAD_ID).all() and batch["labels"][1, short:].eq(-100).all()
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (len(ids) - short)


def test_the_build_measures_tool_use_through_the_episode_runtime(tok):
    """``tool_use`` (the build's curriculum_measures) on a small random model: the figures' shapes."""
    torch.manual_seed(0)
    model = tiny.LlamaForCausalLM(tiny.LlamaConfig(
        vocab_size=tiny.vocab_size(), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, pad_token_id=PAD_ID, eos_token_id=EOS_ID))
    out = tiny.tool_use(model, tok, problems=3, samples=2)
    assert out["greedy"]["episodes"] == 3 and out["sampled"]["episodes"] == 6
    for mode in out.values():
        assert 0.0 <= mode["tool_call_rate"] <= 1.0 and 0.0 <= mode["accuracy"] <= 1.0
