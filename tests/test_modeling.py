"""rlplat.modeling: log-probs of left-padded batches, micro-batching, entropy, temperature, loading."""
from __future__ import annotations

import pytest
import torch

from rlplat.batch import Batch
from rlplat.modeling import load_causal_lm, position_ids, response_logprobs

VOCAB = 50


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def make_batch(seed: int = 0, b: int = 6, p: int = 7, r: int = 6) -> Batch:
    """Left-padded prompts (1..p tokens) and right-padded responses (1..r tokens); pads are id 0."""
    g = torch.Generator().manual_seed(seed)
    pl = torch.randint(1, p + 1, (b,), generator=g)
    rl = torch.randint(1, r + 1, (b,), generator=g)
    pl[0], rl[0] = p, r  # one full row so no column is all padding
    prompt_ids = torch.zeros(b, p, dtype=torch.long)
    prompt_mask = torch.zeros(b, p, dtype=torch.long)
    response_ids = torch.zeros(b, r, dtype=torch.long)
    response_mask = torch.zeros(b, r)
    for i in range(b):
        prompt_ids[i, p - pl[i]:] = torch.randint(1, VOCAB, (int(pl[i]),), generator=g)
        prompt_mask[i, p - pl[i]:] = 1
        response_ids[i, : rl[i]] = torch.randint(1, VOCAB, (int(rl[i]),), generator=g)
        response_mask[i, : rl[i]] = 1
    return Batch(prompt_ids, prompt_mask, response_ids, response_mask, group_ids=torch.arange(b))


def unpadded_row(model, batch: Batch, i: int, temperature: float = 1.0):
    """(log-probs, entropies) of row i's response tokens from a forward pass on that row alone."""
    prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()]
    resp = batch.response_ids[i][batch.response_mask[i].bool()]
    ids = torch.cat([prompt, resp])[None]
    logits = model(input_ids=ids).logits[0].float() / temperature
    logp = torch.log_softmax(logits, -1)
    at = torch.arange(len(prompt) - 1, len(prompt) + len(resp) - 1)
    ent = -(logp[at].exp() * logp[at]).sum(-1)
    return logp[at, resp], ent


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


@torch.no_grad()
def test_left_padded_batch_equals_per_row_unpadded(model):
    batch = make_batch()
    logp, ent = response_logprobs(model, batch, micro_batch_tokens=10_000, with_entropy=True)
    assert logp.dtype == torch.float32 and logp.shape == batch.response_ids.shape
    for i in range(len(batch)):
        n = int(batch.response_mask[i].sum())
        ref_lp, ref_ent = unpadded_row(model, batch, i)
        torch.testing.assert_close(logp[i, :n], ref_lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[i, :n], ref_ent, atol=1e-5, rtol=0)
        assert (logp[i, n:] == 0).all() and (ent[i, n:] == 0).all()


@torch.no_grad()
def test_micro_batching_does_not_change_results(model):
    batch = make_batch(seed=1, b=8)
    whole = response_logprobs(model, batch, micro_batch_tokens=10_000)
    assert len(batch.split_by_token_budget(20)) >= 4  # the small budget really splits
    split = response_logprobs(model, batch, micro_batch_tokens=20)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)


@torch.no_grad()
def test_temperature_divides_logits(model):
    batch = make_batch(seed=2)
    logp = response_logprobs(model, batch, micro_batch_tokens=10_000, temperature=0.5)
    for i in range(len(batch)):
        n = int(batch.response_mask[i].sum())
        torch.testing.assert_close(logp[i, :n], unpadded_row(model, batch, i, temperature=0.5)[0], atol=1e-5, rtol=0)


class NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward lacks ``logits_to_keep`` (older or remote-code models)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


@torch.no_grad()
def test_models_without_logits_to_keep_give_the_same_logprobs(model):
    batch = make_batch(seed=3)
    torch.testing.assert_close(
        response_logprobs(NoLogitsToKeep(model), batch, 10_000), response_logprobs(model, batch, 10_000),
        atol=1e-6, rtol=0,
    )


def test_gradients_flow_and_padding_gets_none(model):
    batch = make_batch(seed=4)
    logp = response_logprobs(model, batch, micro_batch_tokens=10_000)
    logp.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_load_causal_lm_names_the_bad_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(RuntimeError, match="no-such-model"):
        load_causal_lm(str(missing))


def test_load_causal_lm_round_trip_and_dtype(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = load_causal_lm(str(tmp_path), dtype="bfloat16")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float8"):
        load_causal_lm(str(tmp_path), dtype="float8")


def test_model_attn_implementation_reaches_the_trainer_and_the_scorers(tiny_models):
    """``model.attn_implementation`` sets the attention of every HF model that computes log-probs
    (the trainer's policy, each scorer); unset, transformers' default (sdpa) stays."""
    from actors.scorer import Scorer
    from actors.trainer.rank import TrainerRank
    from rlplat.config import ModelConfig

    path = tiny_models["policy"]
    for attention, expected in (("eager", "eager"), (None, "sdpa")):
        rank = TrainerRank.__new__(TrainerRank)  # no DeepSpeed: only the model loading is under test
        rank.model_path, rank.model_cfg = path, ModelConfig(attn_implementation=attention)
        assert rank._load_model().config._attn_implementation == expected
        assert Scorer("reference", path, attn_implementation=attention).info()["attn_implementation"] == expected
