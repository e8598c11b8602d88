"""Preference pairs: data loading with named errors, the built-in carry pairs, the pair batch
layout, the trainer's pair loss against ``fdpo_loss`` (micro-batching and ranks included),
calibration and diversity metrics, and f-DPO's config checks."""
import json
import math

import pytest
import torch

from rlplat.config import ConfigError, DataConfig, load_config
from rlplat.data import load_prompts
from rlplat.evaluation import diversity
from rlplat.losses import LossTotals, fdpo_loss, fdpo_metrics
from rlplat.pairs import PairLoss, expected_calibration_error, pair_batch, pair_calibration, pair_rows
from rlplat.tasks import ArithmeticPairs
from rlplat.tasks.arithmetic import sum_without_carries


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ----------------------------------------------------------------------------- data
def test_builtin_pairs_chosen_is_the_sum_and_rejected_a_wrong_carry():
    rows = load_prompts(DataConfig(train_path="builtin:arithmetic_pairs", builtin_train_size=200), "train", pairs=True)
    assert len(rows) == 200
    kinds = set()
    for row in rows:
        left, right = map(int, row.prompt[:-1].split("+"))
        assert row.answer == str(left + right) and row.extra["chosen"] == f" {left + right}"
        carries = sum_without_carries(left, right) != left + right
        wrong = sum_without_carries(left, right) if carries else left + right + 10  # dropped / spurious carry
        assert row.extra["rejected"] == f" {wrong}" != row.extra["chosen"]
        kinds.add(carries)
    assert kinds == {True, False}
    held = load_prompts(DataConfig(train_path="builtin:arithmetic_pairs", builtin_eval_size=50), "eval", pairs=True)
    assert not {r.prompt for r in rows} & {r.prompt for r in held}  # the task's hash split


def test_builtin_pairs_refuse_other_operators():
    with pytest.raises(ValueError, match="additions only"):
        ArithmeticPairs(ops=("+", "-"))


def test_prompt_source_read_as_pairs_is_named():
    with pytest.raises(ValueError, match="holds prompts, not preference pairs"):
        load_prompts(DataConfig(train_path="builtin:arithmetic"), "train", pairs=True)


def test_pair_file_with_string_and_chat_responses(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "1+1=", "answer": "2", "chosen": " 2", "rejected": " 3", "source": "x"},
        {"prompt": [{"role": "user", "content": "2+2="}], "answer": "4",
         "chosen": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": " 4"}],
         "rejected": [{"role": "assistant", "content": " 5"}]},
    ])
    rows = load_prompts(DataConfig(train_path=path, chat_template=True), "train", pairs=True)
    assert [(r.extra["chosen"], r.extra["rejected"]) for r in rows] == [(" 2", " 3"), (" 4", " 5")]
    assert rows[0].extra["source"] == "x" and rows[1].prompt == "2+2="


def test_mistyped_pair_key_names_the_row_and_the_key(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "answer": "2", "chosen": " 2", "rejected": " 3"},
                                              {"prompt": "1+2=", "answer": "3", "chosen": " 3", "rejectd": " 4"}])
    with pytest.raises(ValueError, match=r"p.jsonl: row 1 \(line 2\): missing response key 'rejected' \(data.rejected_key\)"):
        load_prompts(DataConfig(train_path=path), "train", pairs=True)
    with pytest.raises(ValueError, match=r"row 0 \(line 1\): missing response key 'better' \(data.chosen_key\)"):
        load_prompts(DataConfig(train_path=path, chosen_key="better"), "train", pairs=True)


def test_chat_response_needs_chat_template_and_an_assistant_message(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "answer": "", "chosen": [{"role": "user", "content": "a"}],
                                               "rejected": " b"}])
    with pytest.raises(ValueError, match="chat message list; set data.chat_template=true"):
        load_prompts(DataConfig(train_path=path), "train", pairs=True)
    with pytest.raises(ValueError, match="response 'chosen' has no assistant message"):
        load_prompts(DataConfig(train_path=path, chat_template=True), "train", pairs=True)


def test_non_string_response_is_named(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "answer": "1", "chosen": 3, "rejected": " b"}])
    with pytest.raises(ValueError, match="response 'chosen' must be a string"):
        load_prompts(DataConfig(train_path=path), "train", pairs=True)


# ----------------------------------------------------------------------------- batch layout
def _rows(n):
    return load_prompts(DataConfig(train_path="builtin:arithmetic_pairs", builtin_train_size=n), "train", pairs=True)


def _batch(n, seed=0):
    rows = _rows(n)
    encode = lambda text: [ord(c) % 50 + 3 for c in text]  # noqa: E731  (any fixed tokenizer will do)
    batch = pair_batch(rows, [[1] + encode(r.prompt) for r in rows], encode, eos_id=2, pad_id=0)
    g = torch.Generator().manual_seed(seed)
    batch.logprobs["reference"] = -torch.rand(batch.response_ids.shape, generator=g) * batch.response_mask
    return rows, batch


def test_pair_batch_layout():
    rows, batch = _batch(3)
    assert len(batch) == 6 and batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.rewards.tolist() == [1.0, 0.0] * 3
    assert batch.meta["response_text"][0] == rows[0].extra["chosen"]
    assert batch.meta["response_text"][1] == rows[0].extra["rejected"]
    for i in range(6):  # response = text tokens + EOS, right-padded; prompts left-padded
        n = int(batch.response_mask[i].sum())
        assert batch.response_ids[i, n - 1] == 2 and n == len(batch.meta["response_text"][i]) + 1
    assert bool((batch.prompt_mask.sum(1) == torch.tensor([len(r.prompt) + 1 for r in rows for _ in range(2)])).all())


def test_pair_rows_find_each_pair_in_any_order_and_refuse_a_broken_one():
    _, batch = _batch(4)
    shuffled = batch.select(torch.tensor([5, 2, 4, 3, 0, 1, 7, 6]))
    chosen, rejected = pair_rows(shuffled)
    assert shuffled.group_ids[chosen].tolist() == [0, 1, 2, 3] == shuffled.group_ids[rejected].tolist()
    assert bool((shuffled.rewards[chosen] == 1).all()) and bool((shuffled.rewards[rejected] == 0).all())
    with pytest.raises(ValueError, match="one chosen"):
        pair_rows(batch.select(torch.tensor([0, 1, 2])))


# ----------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js", "alpha"])
def test_pair_loss_equals_fdpo_loss_of_the_sequence_log_probs(divergence):
    _, batch = _batch(5)
    logp = (-torch.rand(batch.response_ids.shape, dtype=torch.float64) * batch.response_mask).requires_grad_()
    loss_fn = PairLoss(divergence, beta=0.3, alpha=0.4)
    loss, metrics = loss_fn(logp, batch, step=0)
    seq = (logp * batch.response_mask).sum(1)
    ref = (batch.logprobs["reference"].double() * batch.response_mask).sum(1)
    expected = fdpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], divergence, 0.3, alpha=0.4).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    g1, = torch.autograd.grad(loss, logp)
    g2, = torch.autograd.grad(expected, logp)
    assert torch.allclose(g1, g2, atol=1e-12)
    want = fdpo_metrics(seq[0::2], seq[1::2], ref[0::2], ref[1::2], divergence, 0.3, alpha=0.4)
    assert {k: metrics[k] for k in want} == pytest.approx(want)
    assert metrics["loss/total"] == metrics["loss/fdpo"] == pytest.approx(float(expected.detach()))


def test_pair_loss_over_micro_batches_and_ranks_is_the_full_batch_gradient():
    """The trainer's contract: micro-batch losses normalised by the global totals and multiplied
    by world_size, summed per rank and averaged over ranks, give the full mini-batch gradient."""
    _, batch = _batch(6)
    logp = (-torch.rand(batch.response_ids.shape, dtype=torch.float64) * batch.response_mask).requires_grad_()
    loss_fn = PairLoss("js", beta=0.5)
    full, _ = loss_fn(logp, batch, 0)
    g_full, = torch.autograd.grad(full, logp)
    world = 2
    totals = loss_fn.totals(batch, world)
    assert isinstance(totals["pairs"], LossTotals) and totals["pairs"].seqs == 6
    total = 0
    for rank_rows in ([0, 1, 4, 5], [2, 3, 6, 7, 8, 9, 10, 11]):  # whole pairs per rank
        for micro in (rank_rows[:2], rank_rows[2:]):
            mb = batch.select(torch.tensor(micro))
            loss, _ = loss_fn(logp[micro], mb, 0, totals)
            total = total + loss / world
    g_split, = torch.autograd.grad(total, logp)
    assert torch.allclose(g_split, g_full, atol=1e-12)
    assert loss_fn.component_tokens(batch) == {"rewards": 6.0}


def test_preference_probs_are_the_sigmoid_of_the_implicit_margin():
    _, batch = _batch(3)
    logp = batch.logprobs["reference"].clone()
    loss_fn = PairLoss("reverse_kl", beta=0.1)
    assert torch.allclose(loss_fn.preference_probs(logp, batch), torch.full((3,), 0.5))  # pi == pi_ref
    logp[0] += batch.response_mask[0] * 0.5  # raise the first chosen response's log-prob
    up = int(batch.response_mask[0].sum()) * 0.5
    assert float(loss_fn.preference_probs(logp, batch)[0]) == pytest.approx(1 / (1 + math.exp(-0.1 * up)))


# ----------------------------------------------------------------------------- metrics
def test_expected_calibration_error_exact_cases():
    assert expected_calibration_error(torch.tensor([0.9, 0.9]), torch.tensor([1.0, 0.0])) == pytest.approx(0.4)
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.0
    # two bins: [0.1, 0.2] (labels 0, 0) -> |0 - 0.15|; [0.8] (label 1) -> |1 - 0.8|
    p, y = torch.tensor([0.1, 0.2, 0.8]), torch.tensor([0.0, 0.0, 1.0])
    assert expected_calibration_error(p, y, bins=2) == pytest.approx(2 / 3 * 0.15 + 1 / 3 * 0.2)
    with pytest.raises(ValueError):
        expected_calibration_error(torch.tensor([0.5]), torch.tensor([1.0, 0.0]))


def test_pair_calibration_scores_both_orders():
    undecided = pair_calibration(torch.full((4,), 0.5))
    assert undecided == {"accuracy": 0.0, "preference_prob": 0.5, "ece": 0.0}
    sure = pair_calibration(torch.tensor([1.0, 1.0]))
    assert sure["ece"] == 0.0 and sure["accuracy"] == 1.0
    over = pair_calibration(torch.tensor([0.95, 0.95, 0.95, 0.05]))  # 3 of 4 right, each at 95%
    assert over["accuracy"] == 0.75 and over["ece"] == pytest.approx(0.2)


def test_diversity_counts_distinct_responses_and_their_entropy():
    m = diversity([[" 7", "7", " 7 "], [" 1", " 2", " 3"]])
    assert m["eval/distinct"] == 2.0  # 1 and 3
    assert m["eval/entropy"] == pytest.approx(math.log(3) / 2)


# ----------------------------------------------------------------------------- config
def _cfg(tmp_path, *overrides):
    return load_config("configs/fdpo.yaml", [f"trainer.output_dir={tmp_path / 'run'}", *overrides])


def test_fdpo_config_plans_the_pair_loop(tmp_path):
    from rlplat import algorithms

    plan = algorithms.get("fdpo").plan(_cfg(tmp_path, "algorithm.fdpo.divergence=alpha", "algorithm.fdpo.alpha=0.3"))
    assert plan.loop == "pairs" and plan.pairs and plan.scorer_roles == {"reference"}
    assert plan.pair_loss == PairLoss("alpha", 0.1, 0.3)


@pytest.mark.parametrize("override, message", [
    ("algorithm.fdpo.divergence=hellinger", "algorithm.fdpo.divergence='hellinger' is not registered"),
    ("algorithm.fdpo.beta=0", "algorithm.fdpo.beta=0.0 must be > 0"),
    ("algorithm.fdpo.alpha=0.3", "acts only with algorithm.fdpo.divergence='alpha'"),
    ("rollout.temperature=0.7", "rollout.temperature=0.7: f-DPO"),
    ("algorithm.group_size=4", "algorithm.group_size is set, but algorithm 'fdpo' does not use it"),
    ("trainer.max_staleness=1", "trainer.max_staleness is set, but algorithm 'fdpo'"),
    ("data.train_path=builtin:nothing", "data.train_path='builtin:nothing' is not allowed"),
])
def test_fdpo_config_refuses_what_would_not_act(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        _cfg(tmp_path, override)


def test_online_algorithms_refuse_fdpo_keys(tmp_path):
    with pytest.raises(ConfigError, match="algorithm.fdpo is set, but algorithm 'grpo' does not use it"):
        load_config("configs/grpo.yaml", [f"trainer.output_dir={tmp_path}", "algorithm.fdpo.beta=0.5"])
    with pytest.raises(ConfigError, match="data.chosen_key is set, but algorithm 'kdrl' does not use it"):
        load_config("configs/kdrl.yaml", [f"trainer.output_dir={tmp_path}", "data.chosen_key=better"])
