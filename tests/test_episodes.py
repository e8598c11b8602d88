"""Multi-turn episodes: the bookkeeping of ``rlplat.episodes`` (token layout, limits, errors), the
loss mask through ``Batch`` and every loss, estimator and divergence term (observation tokens get
exactly zero gradient), the config keys, and the HF engine running real episodes on a tiny random
Llama: the trained ids are the sampled ids plus the observations', on a case where decoding and
re-encoding would change them, and the engine's behaviour log-probs equal a forward's within 1e-3."""
import json
import math

import pytest
import torch

from rlplat.batch import Batch
from rlplat.episodes import EPISODE_COUNTERS, EpisodeLimits, TurnSample, episode_metrics, run_episodes
from rlplat.envs.protocol import StepResult, step_info


# ----------------------------------------------------------------------------- scripted parts
class CountingEnv:
    """Done after ``turns_to_win`` steps (reward 1 then); every other step observes ``obs`` and makes
    one tool call. ``fail_on``: the step number whose ``step`` raises."""

    def __init__(self, turns_to_win=2, obs="ok", fail_on=None, reset_text=None):
        self.turns_to_win, self.obs, self.fail_on, self.reset_text = turns_to_win, obs, fail_on, reset_text
        self.steps, self.seen = 0, []

    def reset(self, row):
        return row["prompt"] if self.reset_text is None else self.reset_text

    def step(self, turn):
        self.steps += 1
        self.seen.append(turn)
        if self.steps == self.fail_on:
            raise RuntimeError("the environment broke")
        if self.steps >= self.turns_to_win:
            return StepResult("", 1.0, True, step_info())
        return StepResult(self.obs, 0.25, False, step_info(tool_calls=1))


class Sampler:
    """Each call: turn ``[10 + call, 11 + call, ...]`` of the requested budget (up to 3 tokens),
    log-prob -0.5 each; records the prompts it was called with."""

    def __init__(self, length=3):
        self.calls, self.length = [], length

    def __call__(self, prompts, budgets):
        self.calls.append((prompts, budgets))
        k = len(self.calls)
        out = []
        for budget in budgets:
            n = min(self.length, budget)
            out.append(TurnSample([10 * k + j for j in range(n)], [-0.5] * n, "stop" if n == self.length else "length"))
        return out


def encode(text):  # one id per character, offset so observation ids are told apart from model ids
    return [100 + ord(c) % 50 for c in text]


def decode(ids):
    return " ".join(map(str, ids))


LIMITS = EpisodeLimits(max_turns=4, max_new_tokens=3, max_episode_tokens=40, max_observation_tokens=8)
ROW = {"prompt": "p", "answer": "a"}


def test_an_episode_is_its_turns_and_observations_in_order_with_the_masks():
    env, sampler = CountingEnv(turns_to_win=3, obs="xy"), Sampler()
    (ep,) = run_episodes([env], [ROW], [[1, 2]], sampler, encode, decode, LIMITS)
    obs = encode("xy")
    assert ep.token_ids == [10, 11, 12] + obs + [20, 21, 22] + obs + [30, 31, 32]
    assert ep.loss_mask == [1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1]
    assert ep.logprobs == [-0.5] * 3 + [0.0] * 2 + [-0.5] * 3 + [0.0] * 2 + [-0.5] * 3
    assert (ep.turns, ep.finish_reason, ep.reward) == (3, "done", 1.5)
    assert ep.counters["tool_calls"] == 2 and ep.observation_tokens == 4
    # each turn is sampled from the prompt plus the history so far, as token ids
    assert [c[0][0] for c in sampler.calls] == [[1, 2], [1, 2, 10, 11, 12] + obs, [1, 2, 10, 11, 12] + obs + [20, 21, 22] + obs]
    assert env.seen == ["10 11 12", "20 21 22", "30 31 32"]  # the environment reads the decoded turn


def test_live_episodes_advance_together_in_one_sampling_call_per_turn():
    envs = [CountingEnv(turns_to_win=n) for n in (1, 3, 2)]
    sampler = Sampler()
    eps = run_episodes(envs, [ROW] * 3, [[1]] * 3, sampler, encode, decode, LIMITS)
    assert [len(c[0]) for c in sampler.calls] == [3, 2, 1]  # finished episodes wait, the others go on
    assert [e.turns for e in eps] == [1, 3, 2] and all(e.finish_reason == "done" for e in eps)


def test_observations_are_tokenized_once_each():
    calls = []

    def counting_encode(text):
        calls.append(text)
        return encode(text)

    run_episodes([CountingEnv(turns_to_win=4, obs="abc")], [ROW], [[1]], Sampler(), counting_encode, decode, LIMITS)
    assert calls == ["abc"] * 3


def test_turn_and_token_limits_end_episodes_and_are_counted():
    never = lambda: CountingEnv(turns_to_win=99, obs="z")  # noqa: E731
    (ep,) = run_episodes([never()], [ROW], [[1]], Sampler(), encode, decode, LIMITS)
    assert (ep.turns, ep.finish_reason) == (4, "max_turns") and ep.loss_mask[-1] == 1  # no observation after the last turn
    tight = EpisodeLimits(max_turns=10, max_new_tokens=3, max_episode_tokens=9, max_observation_tokens=8)
    sampler = Sampler()
    (ep,) = run_episodes([never()], [ROW], [[1]], sampler, encode, decode, tight)
    assert len(ep.token_ids) <= 9 and ep.finish_reason == "length"
    assert [c[1] for c in sampler.calls] == [[3], [3], [1]]  # a turn gets at most what is left of the episode
    cut = EpisodeLimits(max_turns=2, max_new_tokens=3, max_episode_tokens=40, max_observation_tokens=2)
    (ep,) = run_episodes([CountingEnv(turns_to_win=2, obs="long observation")], [ROW], [[1]], Sampler(), encode, decode, cut)
    assert ep.observation_tokens == 2 and ep.counters["observation_truncated"] == 1
    m = episode_metrics([ep.summary()])
    assert m["episode/observation_truncated"] == 1 and m["episode/observation_token_share"] == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="max_turns"):
        EpisodeLimits(max_turns=0, max_new_tokens=1, max_episode_tokens=1, max_observation_tokens=1)


def test_a_broken_environment_ends_its_episode_counted_and_the_others_go_on():
    envs = [CountingEnv(turns_to_win=3, fail_on=2), CountingEnv(turns_to_win=2)]
    broken_reset = CountingEnv()
    broken_reset.reset = lambda row: 1 / 0
    eps = run_episodes(envs + [broken_reset], [ROW] * 3, [[1]] * 3, Sampler(), encode, decode, LIMITS)
    assert (eps[0].finish_reason, eps[0].counters["env_errors"], eps[0].turns) == ("error", 1, 2)
    assert "the environment broke" in eps[0].error and eps[0].reward == 0.25  # the steps before the error count
    assert (eps[1].finish_reason, eps[1].reward) == ("done", 1.25)
    assert (eps[2].finish_reason, eps[2].turns, eps[2].token_ids) == ("error", 0, [])
    assert "ZeroDivisionError" in eps[2].error
    m = episode_metrics([e.summary() for e in eps])
    assert m["episode/env_errors"] == 2 and m["episode/turns_mean"] == pytest.approx(4 / 3)
    assert set(EPISODE_COUNTERS) <= set(eps[0].summary())


def test_a_first_observation_other_than_the_prompt_is_appended_before_the_first_turn():
    (ep,) = run_episodes([CountingEnv(turns_to_win=1, reset_text="board")], [ROW], [[1]], Sampler(), encode, decode, LIMITS)
    assert ep.token_ids == encode("board") + [10, 11, 12] and ep.loss_mask == [0] * 5 + [1] * 3


# ----------------------------------------------------------------------------- the loss mask
def episode_batch(dtype=torch.float64):
    """Two rows: row 0 an episode (model 3, observation 2, model 2 tokens), row 1 a 4-token completion."""
    resp = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 8, 0, 0, 0]])
    response_mask = torch.tensor([[1.0] * 7, [1.0] * 4 + [0.0] * 3], dtype=dtype)
    loss_mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0, 0]], dtype=dtype)
    return Batch(prompt_ids=torch.ones(2, 2, dtype=torch.long), prompt_mask=torch.ones(2, 2, dtype=torch.long),
                 response_ids=resp, response_mask=response_mask, loss_mask=loss_mask,
                 group_ids=torch.tensor([0, 0]), advantages=torch.tensor([1.0, -0.5], dtype=dtype))


def test_the_batch_carries_its_loss_mask_through_select_trim_concat_and_defaults_to_the_response_mask():
    b = episode_batch()
    assert torch.equal(b.select([1]).loss_mask, b.loss_mask[1:])
    assert torch.equal(b.select([1]).trimmed().loss_mask, torch.ones(1, 4, dtype=b.loss_mask.dtype))
    both = Batch.concat([b, b.select([1]).trimmed()], pad_id=0)
    assert torch.equal(both.loss_mask[2], b.loss_mask[1])
    plain = Batch(prompt_ids=b.prompt_ids, prompt_mask=b.prompt_mask, response_ids=b.response_ids,
                  response_mask=b.response_mask, group_ids=b.group_ids)
    assert torch.equal(plain.loss_mask, plain.response_mask)
    assert torch.equal(Batch.from_dict(b.to_dict()).loss_mask, b.loss_mask)
    bad = b.loss_mask.clone()
    bad[1, 5] = 1.0  # a loss position on padding
    with pytest.raises(ValueError, match="loss_mask is 1 where response_mask is 0"):
        Batch(prompt_ids=b.prompt_ids, prompt_mask=b.prompt_mask, response_ids=b.response_ids,
              response_mask=b.response_mask, loss_mask=bad, group_ids=b.group_ids)


def _terms():
    from rlplat.losses import DivergenceTerm
    from rlplat.schedules import CoefSchedule

    one = CoefSchedule(kind="constant", value=0.7)
    per_token = [DivergenceTerm(name=f"ref_{d}", divergence=d, anchor="reference", coef=one)
                 for d in ("k1", "k2", "k3", "k3_st")]
    full = [DivergenceTerm(name=f"t_{d}", divergence=d, anchor="teacher", coef=one)
            for d in ("full_forward_kl", "full_reverse_kl", "full_jsd", "sinkhorn")]
    return per_token, full


CASES = [dict(loss_type="ppo"), dict(loss_type="gspo"), dict(loss_type="cispo"), dict(loss_type="ppo", entropy_coef=0.1),
         dict(loss_type="ppo", rollout_correction="tis"), dict(loss_type="ppo", rollout_correction="mis")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_observation_tokens_get_exactly_zero_gradient_from_every_loss_and_divergence(case):
    from rlplat.divergences.topk import teacher_topk
    from rlplat.losses import PolicyLossConfig, policy_loss, token_entropy
    from rlplat.modeling import token_logprobs
    from rlplat.rollout_correction import RolloutCorrection

    torch.manual_seed(0)
    b = episode_batch(torch.float32)
    V = 16
    logits = torch.randn(2, 7, V, requires_grad=True)
    anchor = torch.randn(2, 7, V)
    lm = b.loss_mask
    b.logprobs["old"] = (token_logprobs(logits.detach() + 0.1 * torch.randn(2, 7, V), b.response_ids) * lm).float()
    b.logprobs["rollout"] = (token_logprobs(logits.detach() + 0.1 * torch.randn(2, 7, V), b.response_ids) * lm).float()
    b.logprobs["reference"] = (token_logprobs(anchor, b.response_ids) * lm).float()
    b.topk["teacher"] = teacher_topk(anchor, 4)
    logp = token_logprobs(logits, b.response_ids) * lm  # what the trainer's forward hands the loss
    entropy = token_entropy(logits) * lm
    kind = case.pop("rollout_correction", None)
    corr = RolloutCorrection(kind=kind, threshold=1.5) if kind else RolloutCorrection()
    cfg = PolicyLossConfig(rollout_correction=corr, **case)
    per_token, full = _terms()
    loss, metrics = policy_loss(logp, b, cfg, per_token + full, step=0, entropy=entropy, logits=logits)
    assert math.isfinite(loss.item()) and loss.item() != 0
    (grad,) = torch.autograd.grad(loss, logits)
    obs = (b.response_mask > 0) & (b.loss_mask == 0)
    assert obs.sum() == 2
    assert torch.count_nonzero(grad[obs]) == 0  # exactly zero, not small
    assert torch.count_nonzero(grad[b.loss_mask > 0]) > 0  # the model's tokens do learn


def test_token_whitening_counts_model_tokens_only():
    from rlplat import advantages

    one = episode_batch()
    b = Batch.concat([one, one.select([1])], pad_id=0)  # the episode (7 tokens, 2 observed) and two completions
    b.rewards, b.group_ids = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64), torch.tensor([0, 0, 1])
    got = advantages.for_batch("reinforce_pp", b, {"norm": "token"})
    fn = advantages.get("reinforce_pp")

    def whitened(lengths):
        return fn(b.rewards, b.group_ids, norm="token", response_lengths=torch.tensor(lengths, dtype=torch.float64))

    assert torch.allclose(got, whitened([5.0, 4.0, 4.0])) and not torch.allclose(got, whitened([7.0, 4.0, 4.0]))


# ----------------------------------------------------------------------------- rewards and config
def test_the_env_reward_function_reads_the_episodes_column_and_refuses_a_row_without_one():
    from rlplat.rewards import resolve_reward

    fn = resolve_reward("env")
    assert fn("text", None, "p", env_reward=0.75) == 0.75
    with pytest.raises(ValueError, match="env_reward"):
        fn("text", None, "p")


ENV_OK = ["rollout.env.name=builtin:guess_number", "reward.fn=env", "data.train_path=builtin:guess_number",
          "rollout.max_episode_tokens=48", "rollout.backend=hf"]


def load(*overrides):
    import os

    from rlplat.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_config(os.path.join(root, "configs", "grpo.yaml"), list(overrides))


def test_episode_config_keys_act_only_with_an_environment_and_bad_ones_are_named():
    from rlplat.config import ConfigError

    cfg = load(*ENV_OK)
    assert cfg.rollout.env.name == "builtin:guess_number" and cfg.rollout.max_turns == 4
    for key in ("rollout.max_turns=3", "rollout.max_episode_tokens=10", "rollout.tools=[builtin:calc]",
                "rollout.observation_template='<{observation}>'", "rollout.env.params={high: 9}"):
        with pytest.raises(ConfigError, match=r"is set but rollout.env is null"):
            load(key)
    cases = {
        "rollout.env.name=builtin:nope": "no built-in environment 'nope'",
        "rollout.env.name=no_module_xyz:Env": "no_module_xyz",
        "reward.fn=arithmetic": "no reward function reads the environment's reward",
        "rollout.max_episode_tokens=4": r"max_episode_tokens \(4\) < rollout.max_new_tokens",
        "rollout.max_episode_tokens=1000": "exceeds rollout.max_model_len",
        "rollout.observation_template=plain": "has no '{observation}'",
        "rollout.ignore_eos=true": "ignore_eos=true with rollout.env",
        "rollout.env.params={colour: red}": "does not take params",
        "rollout.max_turns=0": "rollout.max_turns=0 must be >= 1",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load(*ENV_OK, override)
    with pytest.raises(ConfigError, match="rollout.tools and rollout.env.params.tools are both set"):
        load(*ENV_OK[1:], "rollout.env.name=builtin:tools", "rollout.tools=[builtin:calc]",
             "rollout.env.params={tools: [builtin:calc]}")


def test_algorithms_that_do_not_run_episodes_refuse_them_with_the_reason():
    import os

    from rlplat.config import ConfigError, load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for config, reason in (("nash_mp", "judge compares single completions"), ("fdpo", "stored preference pairs"),
                           ("kdrl", "not been run and tested")):
        with pytest.raises(ConfigError, match=f"algorithm '{config}' does not run multi-turn episodes: .*{reason}"):
            load_config(os.path.join(root, "configs", f"{config}.yaml"), ENV_OK)


# ----------------------------------------------------------------------------- the HF engine, for real
@pytest.fixture(scope="module")
def random_llama(tmp_path_factory):
    from tests.test_evaluation import _build_tiny_llama

    return str(_build_tiny_llama(tmp_path_factory.mktemp("llama")))


def test_hf_engine_episodes_are_token_exact_with_behaviour_log_probs_of_the_forward(random_llama):
    from actors.rollout.episodes import EpisodeRollout
    from actors.rollout.hf_engine import HFRolloutEngine
    from rlplat.modeling import micro_batch_forward
    from rlplat.models.tokenizer import PAD_ID

    cfg = load(*ENV_OK, "rollout.max_new_tokens=6", "rollout.max_turns=3", "rollout.max_episode_tokens=40",
               'rollout.observation_template="\\n{observation}\\n"')  # YAML double quotes: newlines
    engine = HFRolloutEngine(random_llama, random_llama, cfg.rollout, "float32", seed=0)
    assert isinstance(engine.episodes, EpisodeRollout)
    tok = engine.tokenizer
    prompt_ids = [tok("guess 0-99:")["input_ids"]] * 2
    meta = {"prompt": ["guess 0-99:"] * 2, "answer": ["37", "80"], "extra": [{}, {}]}
    turns = []

    def recording(prompts, budgets):
        out = engine._turns(prompts, budgets, greedy=False)
        turns.append([t.token_ids for t in out])
        return out

    grouped = engine.episodes.run(prompt_ids, 4, meta, recording)
    from actors.rollout.common import build_rollout_batch

    batch = build_rollout_batch(prompt_ids, grouped, 0, PAD_ID, meta, 0)
    assert len(batch) == 8 and "episode" in batch.meta
    # Rebuild each episode from the sampled turns (in call order) and the observations, tokenized once.
    live = list(range(8))
    histories = {i: [] for i in live}
    for call in turns:
        for i, ids in zip(live, call):
            histories[i].append(ids)
        live = [i for i in live if len(histories[i]) < batch.meta["episode"][i]["turns"]]
    changed = 0
    for row in range(8):
        n = int(batch.response_mask[row].sum())
        ids = batch.response_ids[row, :n].tolist()
        mask = batch.loss_mask[row, :n].tolist()
        model_runs, obs_runs, cur, kind = [], [], [], None
        for t, m in zip(ids, mask):
            if kind is not None and m != kind:
                (model_runs if kind == 1 else obs_runs).append(cur)
                cur = []
            cur.append(t)
            kind = m
        (model_runs if kind == 1 else obs_runs).append(cur)
        assert model_runs == [h for h in histories[row] if h]  # the trained model tokens are the sampled ones
        for obs in obs_runs:
            assert tok.decode(obs) in ("\nhigher\n", "\nlower\n", "\na number\n")
        changed += sum(tok(tok.decode(h, skip_special_tokens=True), add_special_tokens=False)["input_ids"] != h
                       for h in histories[row])
        ep = batch.meta["episode"][row]
        assert ep["turns"] == len(histories[row]) and ep["observation_tokens"] == sum(len(o) for o in obs_runs)
        assert batch.meta["extra"][row]["env_reward"] == ep["reward"]
    assert changed > 0  # decoding a sampled turn and encoding it again would not give the sampled ids
    assert (batch.response_mask.sum() - batch.loss_mask.sum()) > 0  # observations were appended
    # The engine's behaviour log-probs of the model's tokens equal a forward of the same weights.
    fwd = micro_batch_forward(engine.model, batch, temperature=cfg.rollout.temperature)
    diff = ((fwd.logp - batch.logprobs["rollout"]).abs() * batch.loss_mask).max().item()
    assert diff < 1e-3, diff
    assert torch.count_nonzero(batch.logprobs["rollout"][(batch.response_mask > 0) & (batch.loss_mask == 0)]) == 0


def test_hf_engine_generate_runs_episodes_and_the_batch_scores_with_the_env_reward(random_llama):
    from actors.rollout.hf_engine import HFRolloutEngine
    from rlplat.models.tokenizer import PAD_ID
    from rlplat.rewards.runner import RewardRunner

    cfg = load(*ENV_OK, "rollout.max_new_tokens=4", "rollout.max_turns=2", "rollout.max_episode_tokens=16")
    engine = HFRolloutEngine(random_llama, random_llama, cfg.rollout, "float32", seed=0)
    prompt = engine.tokenizer("guess 0-99:")["input_ids"]
    meta = {"prompt": ["guess 0-99:"], "answer": ["5"], "extra": [{}]}
    a = engine.generate([prompt], 3, 0, PAD_ID, meta, seed=7)
    b = engine.generate([prompt], 3, 0, PAD_ID, meta, seed=7)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.loss_mask, b.loss_mask)  # seeded: resumable
    assert all(1 <= e["turns"] <= 2 for e in a.meta["episode"]) and int(a.response_mask.sum(1).max()) <= 16
    with RewardRunner("env", 10.0) as runner:
        out = runner.score(list(zip(a.meta["response_text"], a.meta["answer"], a.meta["prompt"], a.meta["extra"])))
    assert out.rewards.tolist() == [e["reward"] for e in a.meta["episode"]] and out.num_invalid == 0


# ----------------------------------------------------------------------------- through the CLI
def test_episode_run_survives_an_engine_killed_mid_episode_and_resumes_exactly_once(tmp_path, tiny_models):
    """configs/grpo_env.yaml, one step off-policy (the next batch's episodes are in flight while a
    step trains): the engine is killed at the start of step 1, its episodes are rerun (every step
    trains exactly prompts x group episodes), the driver dies after generating step 3, and the
    resumed run logs each step once, with the episode metrics on every step."""
    from tests.test_resume import train_cli

    out = tmp_path / "run"
    args = [f"trainer.output_dir={out}", "trainer.max_steps=4", "trainer.save_every=1", "trainer.max_staleness=1",
            "rollout.backend=hf", "trainer.num_ranks=1", "trainer.eval_every=0", "data.prompts_per_step=4",
            "algorithm.group_size=4", "rollout.max_turns=3"]
    code, log = train_cli("grpo_env", *args, fault="kill:rollout-0:1,after_generate:3")
    assert code == 3, log[-5000:]
    assert "killing actor rollout-0 at step 1" in log
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[-1]["faults/actor_restarts"] >= 1
    code, log = train_cli("grpo_env", *args, "trainer.resume=auto")
    assert code == 0, log[-5000:]
    assert "resumed from" in log and "turns " in log  # the progress line shows the episodes
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert r["samples"] == 16  # none lost, none duplicated
        assert 1 <= r["episode/turns_mean"] <= 3 and 0 < r["episode/observation_token_share"] < 1
        assert r["episode/env_errors"] == 0 and r["reward/errors"] == 0
        assert r["async/staleness_max"] <= 1  # one step off-policy at most, the engine restart included


def test_rollout_tools_are_rendered_into_a_chat_template_and_not_without_one():
    from launch.preflight import tool_schemas
    from rlplat.config.schema import DataConfig
    from rlplat.data import PromptRow, render_prompts
    from rlplat.models.tokenizer import build_tokenizer
    from tests.test_envs import HERMES_STYLE_TEMPLATE

    cfg = load(*ENV_OK[1:], "rollout.env.name=builtin:tools", "rollout.tools=[builtin:calc]")
    schemas = tool_schemas(cfg.rollout)
    assert [s["function"]["name"] for s in schemas] == ["calc"] and tool_schemas(load().rollout) is None
    tok = build_tokenizer()
    tok.chat_template = HERMES_STYLE_TEMPLATE
    rows = [PromptRow("38*45=", "1710", 0)]
    (with_template,) = render_prompts(rows, tok, DataConfig(chat_template=True, max_prompt_tokens=4096), schemas)
    text = tok.decode(with_template)
    assert text.startswith("<tools>\n") and json.loads(text.splitlines()[1]) == schemas[0]
    (plain,) = render_prompts(rows, tok, DataConfig(max_prompt_tokens=64), schemas)
    assert tok.decode(plain, skip_special_tokens=True) == "38*45="  # the tiny models learn their format instead


def test_the_readme_episode_config_validates(tmp_path):
    """README's "Multi-turn episodes" YAML, on top of configs/grpo.yaml, passes validation as written."""
    import os

    import yaml

    from rlplat.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md")).read()
    block = yaml.safe_load(readme.split("## Multi-turn episodes")[1].split("```yaml\n")[1].split("```")[0])
    base = yaml.safe_load(open(os.path.join(root, "configs", "grpo.yaml")))
    base["rollout"].update(block["rollout"])
    base["reward"] = block["reward"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(base))
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert cfg.rollout.env.name == "builtin:tools" and len(cfg.rollout.tools) == 2
    assert cfg.rollout.observation_template.startswith("<|im_start|>user\n")
