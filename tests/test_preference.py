"""The Bradley-Terry preference worker batches by ``roles.preference.micro_batch_tokens``.

A tiny random LlamaForSequenceClassification with the platform's tokenizer, built in tmp_path:
batched rewards equal one-text-at-a-time rewards (either padding side), and no forward pass holds
more padded tokens than the budget.
"""
import pytest
import torch

from actors.preference import PreferenceWorker, token_budget_batches

TEXTS = ["12+35= 47", "1+1= 2", "99+99= 198", "7+8=", "40+2= 42 and more text", "3+3= 6", "12+35= 47"]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlplat.models.tokenizer import save_tokenizer, vocab_size

    out = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, num_labels=1,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    save_tokenizer(out)
    return str(out)


def _forward_shapes(worker):
    shapes = []
    worker.model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    return shapes


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("budget", [1, 30, 64])
def test_batched_rewards_equal_single_text_rewards_within_the_budget(rm_dir, side, budget):
    single = PreferenceWorker(None, rm_dir, micro_batch_tokens=1)  # budget 1: one text per forward
    alone = single._rewards(TEXTS)
    worker = PreferenceWorker(None, rm_dir, micro_batch_tokens=budget)
    worker.tok.padding_side = side
    shapes = _forward_shapes(worker)
    batched = worker._rewards(TEXTS)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    lengths = [len(x) for x in worker.tok(TEXTS)["input_ids"]]
    assert sum(rows for rows, _ in shapes) == len(TEXTS)
    for rows, cols in shapes:
        assert rows * cols <= budget or rows == 1  # a text longer than the budget goes alone
    if budget >= 2 * max(lengths):
        assert len(shapes) < len(TEXTS)  # the budget really packs several texts per pass
    assert not torch.allclose(alone, alone[0].expand_as(alone))  # a random model still tells texts apart


def test_win_probs_score_each_distinct_text_once(rm_dir):
    worker = PreferenceWorker(None, rm_dir, micro_batch_tokens=64)
    shapes = _forward_shapes(worker)
    prompts, a, b = ["1+1="] * 4, [" 2", " 2", " 3", " 2"], [" 3", " 4", " 2", " 3"]
    probs, metrics, failures = worker.win_probs(prompts, a, b, [None] * 4)
    assert sum(rows for rows, _ in shapes) == 3  # " 2", " 3", " 4" after the prompt
    r = {x: worker._rewards(["1+1=" + x])[0] for x in (" 2", " 3", " 4")}
    expected = torch.stack([torch.sigmoid(r[x] - r[y]) for x, y in zip(a, b)])
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    assert metrics == {"preference/errors": 0.0} and failures == []


def test_token_budget_batches_bound_padded_tokens_and_cover_every_row():
    lengths = [5, 1, 9, 3, 3, 12, 2]
    for budget in (1, 6, 10, 24, 100):
        batches = token_budget_batches(lengths, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    assert token_budget_batches(lengths, 100) == [[5, 2, 0, 3, 4, 6, 1]]


def test_budget_must_be_positive(rm_dir):
    with pytest.raises(ValueError, match="roles.preference.micro_batch_tokens must be > 0"):
        PreferenceWorker(None, rm_dir, micro_batch_tokens=0)
