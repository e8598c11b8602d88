"""Full-distribution divergence terms in training (issue 15): the teacher's top-k travels in the
Batch, the loss takes the student's logits, and the values go through the same masks, coefficients
and aggregation as per-token terms. Exact checks use k = V (the top-k is the whole vocabulary), where
the top-k + tail support is the full distribution, against the closed forms computed densely."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from rlplat.batch import Batch
from rlplat.divergences.topk import TopK, teacher_topk
from rlplat.losses import DivergenceTerm, PolicyLossConfig, loss_totals, policy_loss
from rlplat.modeling import micro_batch_forward, token_logprobs
from rlplat.schedules import CoefSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DT = torch.float64
CASES = [("full_forward_kl", {}), ("full_reverse_kl", {}), ("full_jsd", {"beta": 0.5}), ("full_jsd", {"beta": 0.1})]


def dense(name: str, params: dict, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The closed form per position, [B, R], from the whole distributions (autograd, no chunking)."""
    s, t = torch.log_softmax(logits, -1), torch.log_softmax(teacher_logits, -1)
    if name == "full_forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if name == "full_reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    beta = params["beta"]
    m = torch.logaddexp(t + math.log(beta), s + math.log1p(-beta))
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def padded_topk(teacher_logits: torch.Tensor, k: int, mask: torch.Tensor) -> TopK:
    """What the scorer sends: the top-k at real positions, zeros on padding, Int32 ids."""
    top = teacher_topk(teacher_logits, k)
    on = mask.bool()
    return TopK(torch.where(on[..., None], top.logp, 0.0), torch.where(on[..., None], top.ids, 0).int(),
                torch.where(on, top.tail_logp, 0.0))


def make(lengths, vocab=11, k=None, seed=0, rewards=None, groups=None):
    g = torch.Generator().manual_seed(seed)
    b, r = len(lengths), max(lengths)
    mask = torch.zeros(b, r, dtype=DT)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    logits = (2 * torch.randn(b, r, vocab, generator=g, dtype=DT)).requires_grad_(True)
    teacher = 2 * torch.randn(b, r, vocab, generator=g, dtype=DT)
    ids = torch.randint(0, vocab, (b, r), generator=g) * mask.long()
    batch = Batch(prompt_ids=torch.ones(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
                  response_ids=ids, response_mask=mask,
                  group_ids=torch.arange(b) if groups is None else torch.as_tensor(groups),
                  rewards=None if rewards is None else torch.as_tensor(rewards, dtype=DT),
                  advantages=torch.linspace(-1, 1, b, dtype=DT),
                  topk={"teacher": padded_topk(teacher, k or vocab, mask)})
    return batch, logits, teacher


def term(name, params, coef=0.3, mask="all"):
    return DivergenceTerm(name="kd", divergence=name, params=dict(params), anchor="teacher",
                          coef=CoefSchedule(kind="constant", value=coef), mask=mask)


def hand_agg(values, tok, mode, norm_len=None):
    """The aggregation modes of docs/algorithms.md#loss-aggregation, by hand."""
    v = torch.where(tok > 0, values, torch.zeros_like(values))
    lens = tok.sum(1)
    seqs = (lens > 0).sum()
    if mode == "token-mean":
        return v.sum() / tok.sum()
    if mode == "seq-mean-token-mean":
        return (v.sum(1) / lens.clamp(min=1)).sum() / seqs
    if mode == "seq-mean-token-sum-norm":
        return (v.sum(1) / norm_len).sum() / seqs
    return v.sum() / seqs


# ============================================================================ the loss
@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_full_term_value_and_gradient_equal_the_closed_form_at_k_equal_v(name, params, agg):
    batch, logits, teacher = make([5, 2, 4], seed=1)
    cfg = PolicyLossConfig(surrogate=False, agg=agg, norm_len=6)
    logp = token_logprobs(logits, batch.response_ids) * batch.response_mask
    loss, metrics = policy_loss(logp, batch, cfg, [term(name, params)], step=0, logits=logits)
    (grad,) = torch.autograd.grad(loss, logits)

    want_values = dense(name, params, logits, teacher)
    tok = batch.response_mask
    want = 0.3 * hand_agg(want_values, tok, agg, norm_len=6)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad, want_grad, atol=1e-10, rtol=1e-10)
    assert (grad[tok == 0] == 0).all()  # padding: exactly no gradient
    assert metrics["div/kd"] == pytest.approx(float((want_values.detach() * tok).sum() / tok.sum()), abs=1e-10)
    assert metrics["coef/kd"] == 0.3 and metrics["loss/policy"] == 0.0
    assert "actor/clip_frac" not in metrics  # no surrogate


def test_full_term_masks_rows_like_per_token_terms_and_adds_to_the_surrogate():
    """mask 'incorrect' keeps only the rows below the threshold: the others get exactly no gradient
    from the term, ``div/<term>`` is the mean over the kept tokens, and with the surrogate on the
    loss is the surrogate's plus coef times the term's."""
    batch, logits, teacher = make([3, 4, 2, 4], seed=2, rewards=[1.0, 0.0, 1.0, 0.0])
    batch.logprobs["old"] = (token_logprobs(logits, batch.response_ids) * batch.response_mask).detach()
    kd = term("full_reverse_kl", {}, coef=0.5, mask="incorrect")
    logp = token_logprobs(logits, batch.response_ids) * batch.response_mask
    only_kd, m = policy_loss(logp, batch, PolicyLossConfig(surrogate=False), [kd], step=0, logits=logits)
    (g,) = torch.autograd.grad(only_kd, logits, retain_graph=True)
    assert (g[[0, 2]] == 0).all() and (g[[1, 3]] != 0).any()
    tok = batch.response_mask * torch.tensor([0.0, 1, 0, 1], dtype=DT)[:, None]
    values = dense("full_reverse_kl", {}, logits, teacher)
    assert m["div/kd"] == pytest.approx(float((values.detach() * tok).sum() / tok.sum()), abs=1e-10)
    torch.testing.assert_close(only_kd, 0.5 * hand_agg(values, tok, "seq-mean-token-mean"), atol=1e-10, rtol=0)

    both, _ = policy_loss(logp, batch, PolicyLossConfig(), [kd], step=0, logits=logits)
    surrogate, _ = policy_loss(logp, batch, PolicyLossConfig(), [], step=0)
    torch.testing.assert_close(both, surrogate + only_kd, atol=1e-12, rtol=0)


def test_full_term_micro_batches_with_global_totals_equal_the_whole_batch():
    """Split into micro-batches (select + trimmed, TopK included) with the whole batch's totals, the
    summed gradients equal the whole batch's: the contract of docs/algorithms.md#micro-batches."""
    batch, logits, _ = make([5, 1, 3, 4, 2], seed=3, k=6)
    kd = term("full_jsd", {"beta": 0.5})
    cfg = PolicyLossConfig(surrogate=False)
    logp = token_logprobs(logits, batch.response_ids) * batch.response_mask
    whole, _ = policy_loss(logp, batch, cfg, [kd], step=0, logits=logits)
    (want,) = torch.autograd.grad(whole, logits)
    totals = loss_totals(batch, [kd])
    got = torch.zeros_like(logits)
    for idx in ([0, 2], [1], [3, 4]):
        mb = batch.select(idx).trimmed()
        leaf = logits.detach()[idx][:, : mb.response_ids.shape[1]].clone().requires_grad_(True)
        lp = token_logprobs(leaf, mb.response_ids) * mb.response_mask
        loss, _ = policy_loss(lp, mb, cfg, [kd], step=0, totals=totals, logits=leaf)
        (g,) = torch.autograd.grad(loss, leaf)
        got[idx, : g.shape[1]] += g
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_full_term_needs_logits_and_the_teacher_topk():
    batch, logits, _ = make([2, 3])
    logp = token_logprobs(logits, batch.response_ids) * batch.response_mask
    cfg = PolicyLossConfig(surrogate=False)
    with pytest.raises(ValueError, match="needs the student's logits"):
        policy_loss(logp, batch, cfg, [term("full_forward_kl", {})], step=0)
    batch.topk.clear()
    with pytest.raises(ValueError, match=r"needs the 'teacher' role's top-k .*top_k_logits > 0"):
        policy_loss(logp, batch, cfg, [term("full_forward_kl", {})], step=0, logits=logits)


def test_padding_with_zero_teacher_and_half_precision_logits_stay_finite():
    """Padding holds zeros (k 'probabilities' of 1) and bf16 logits: values and gradients are finite,
    padding gets exactly no gradient, at k < V (tail bucket) as at k = V."""
    for k in (4, 11):
        batch, logits, _ = make([1, 4, 2], seed=4, k=k)
        z = logits.detach().to(torch.bfloat16).requires_grad_(True)
        logp = token_logprobs(z, batch.response_ids) * batch.response_mask.float()
        batch32 = Batch.from_dict({**batch.to_dict(), "response_mask": batch.response_mask.float()})
        for name, params in CASES:
            loss, m = policy_loss(logp, batch32, PolicyLossConfig(surrogate=False), [term(name, params)], step=0, logits=z)
            (g,) = torch.autograd.grad(loss, z, retain_graph=True)
            assert torch.isfinite(loss) and torch.isfinite(g.float()).all() and g.dtype == torch.bfloat16
            assert (g[batch.response_mask == 0] == 0).all() and math.isfinite(m["div/kd"])


# ============================================================================ the rank's forward
class ToyLM(torch.nn.Module):
    """A causal LM stand-in for ``response_logits``: logits = W e(token) + position bias."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, 8, dtype=DT)
        self.out = torch.nn.Linear(8, vocab, dtype=DT)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.out(self.emb(input_ids)) + 0.1 * position_ids[..., None])


def test_the_ranks_single_forward_feeds_logp_and_the_full_term():
    """``PolicyLossFn`` asks for the logits; ``micro_batch_forward`` gives the log-probs and the
    temperature-scaled logits of one forward; the parameter gradient equals the closed form's."""
    from actors.trainer.rank import CallableLossFn, PolicyLossFn

    vocab, temp = 11, 0.7
    batch, _, _ = make([3, 2], vocab=vocab, seed=5)
    model = ToyLM(vocab)
    teacher_model = ToyLM(vocab, seed=1)
    with torch.no_grad():
        t_logits = micro_batch_forward(teacher_model, batch, temperature=temp).logits
    batch.topk["teacher"] = padded_topk(t_logits, vocab, batch.response_mask)
    kd = term("full_forward_kl", {}, coef=1.0)
    fn = PolicyLossFn(PolicyLossConfig(surrogate=False), [kd])
    assert fn.needs_logits and not getattr(CallableLossFn(lambda *a: None), "needs_logits", False)
    assert not PolicyLossFn(PolicyLossConfig(), [DivergenceTerm(name="k", divergence="k3")]).needs_logits

    logp, entropy, logits = micro_batch_forward(model, batch, temperature=temp)
    loss, _ = fn(logp, batch, 0, None, entropy, logits=logits)
    got = torch.autograd.grad(loss, list(model.parameters()))
    student = micro_batch_forward(model, batch, temperature=temp).logits
    want_loss = hand_agg(dense("full_forward_kl", {}, student, t_logits), batch.response_mask, "seq-mean-token-mean")
    want = torch.autograd.grad(want_loss, list(model.parameters()))
    # The rank's log-probs are float32 (rlplat.modeling), so the loss is float32 too.
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want_loss.float(), atol=1e-6, rtol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ============================================================================ the Batch
def test_batch_carries_topk_through_select_concat_trim_dict_and_micro_batches():
    a, _, ta = make([3, 1, 2], k=4, seed=6)
    b, _, _ = make([5, 2], k=4, seed=7)
    top = a.topk["teacher"]
    sel = a.select([2, 0])
    for f in TopK._fields:
        torch.testing.assert_close(getattr(sel.topk["teacher"], f), getattr(top, f)[[2, 0]])
    trimmed = a.select([1]).trimmed()  # one response token left
    assert trimmed.topk["teacher"].logp.shape == (1, 1, 4) and trimmed.topk["teacher"].tail_logp.shape == (1, 1)

    both = Batch.concat([a, b], pad_id=0)  # R 3 -> 5: padded with zeros like the log-probs
    assert both.topk["teacher"].ids.shape == (5, 5, 4) and both.topk["teacher"].ids.dtype == torch.int32
    torch.testing.assert_close(both.topk["teacher"].logp[:3, :3], top.logp)
    assert (both.topk["teacher"].logp[:3, 3:] == 0).all() and (both.topk["teacher"].tail_logp[:3, 3:] == 0).all()
    torch.testing.assert_close(both.topk["teacher"].tail_logp[3:], b.topk["teacher"].tail_logp)
    with pytest.raises(ValueError, match="disagree on k"):
        Batch.concat([a, make([2], k=3)[0]], pad_id=0)
    with pytest.raises(ValueError, match="topk keys"):
        Batch.concat([a, Batch.from_dict({**b.to_dict(), "topk": {}})], pad_id=0)

    buf = io.BytesIO()
    torch.save(both.to_dict(), buf)  # weights_only-safe: the TopK travels as a plain dict
    buf.seek(0)
    back = Batch.from_dict(torch.load(buf, weights_only=True))
    assert isinstance(back.topk["teacher"], TopK)
    for f in TopK._fields:
        torch.testing.assert_close(getattr(back.topk["teacher"], f), getattr(both.topk["teacher"], f))
    assert Batch.from_dict({k: v for k, v in a.to_dict().items() if k != "topk"}).topk == {}  # older stores

    for idx in both.split_by_token_budget(12, keep_groups=True):  # the rank's micro-batches
        mb = both.select(idx).trimmed().to("cpu")
        r = mb.response_ids.shape[1]
        torch.testing.assert_close(mb.topk["teacher"].logp, both.topk["teacher"].logp[idx, :r])

    with pytest.raises(ValueError, match=r"Batch.topk\['teacher'\] has logp/ids/tail_logp shapes"):
        Batch.from_dict({**a.to_dict(), "topk": {"teacher": {**top._asdict(), "tail_logp": top.tail_logp[:, :2]}}})
    fresh = a.select([0, 1, 2])
    fresh.topk.clear()
    fresh.set_scores("teacher", (torch.zeros(3, 3), top))  # a top-k scorer's (log-probs, TopK)
    fresh.set_scores("reference", torch.ones(3, 3))  # a plain scorer's log-probs
    assert set(fresh.topk) == {"teacher"} and set(fresh.logprobs) == {"teacher", "reference"}


# ============================================================================ the scorer
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlplat.models.tokenizer import save_tokenizer, vocab_size

    out = tmp_path_factory.mktemp("tiny-teacher")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    save_tokenizer(out)
    return str(out)


def scorer_batch(seed=0, b=4, p=5, r=6):
    g = torch.Generator().manual_seed(seed)
    pl, rl = torch.randint(1, p + 1, (b,), generator=g), torch.randint(1, r + 1, (b,), generator=g)
    prompt_ids, prompt_mask = torch.zeros(b, p, dtype=torch.long), torch.zeros(b, p, dtype=torch.long)
    response_ids, response_mask = torch.zeros(b, r, dtype=torch.long), torch.zeros(b, r)
    for i in range(b):
        prompt_ids[i, p - pl[i]:] = torch.randint(4, 100, (int(pl[i]),), generator=g)
        prompt_mask[i, p - pl[i]:] = 1
        response_ids[i, : rl[i]] = torch.randint(4, 100, (int(rl[i]),), generator=g)
        response_mask[i, : rl[i]] = 1
    return Batch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                 response_mask=response_mask, group_ids=torch.arange(b))


def test_teacher_scorer_sends_its_topk_from_the_same_forward(model_dir):
    """``top_k`` > 0: ``score`` returns the log-probs a plain scorer returns and the compact TopK of
    the temperature-scaled logits (Float32 / Int32 / Float32, zeros on padding), micro-batched."""
    from actors.scorer import Scorer
    from rlplat.modeling import response_logits

    temp, k = 0.7, 8
    batch = scorer_batch(seed=3)
    plain = Scorer("teacher", model_dir, micro_batch_tokens=16, temperature=temp)
    topk = Scorer("teacher", model_dir, micro_batch_tokens=16, temperature=temp, top_k=k)
    logp, top = topk.score(batch)
    torch.testing.assert_close(logp, plain.score(batch), atol=1e-6, rtol=0)
    assert (top.logp.dtype, top.ids.dtype, top.tail_logp.dtype) == (torch.float32, torch.int32, torch.float32)
    assert top.logp.shape == (4, 6, k) and top.tail_logp.shape == (4, 6)
    with torch.no_grad():
        want = teacher_topk(response_logits(plain.model, batch).float(), k, temperature=temp)
    on = batch.response_mask.bool()
    torch.testing.assert_close(top.logp[on], want.logp[on], atol=1e-5, rtol=0)
    assert torch.equal(top.ids[on].long(), want.ids[on])
    torch.testing.assert_close(top.tail_logp[on], want.tail_logp[on], atol=1e-5, rtol=0)
    # Normalised over the full vocabulary: top-k mass + tail mass = 1.
    mass = top.logp.exp().sum(-1) + top.tail_logp.exp()
    torch.testing.assert_close(mass[on], torch.ones(int(on.sum())), atol=1e-5, rtol=0)
    assert (top.logp[~on] == 0).all() and (top.ids[~on] == 0).all() and (top.tail_logp[~on] == 0).all()
    # Batch.set_scores takes the pair; the Batch then validates it.
    batch.set_scores("teacher", (logp, top))
    assert batch.topk["teacher"] is top


# ============================================================================ end to end
def run_cli(tmp_path, config, *overrides, steps=2):
    """``configs/<config>.yaml`` through the real CLI at tests/test_e2e.py's small sizes, with the
    configs' own vLLM rollout engine (Ray, DeepSpeed ranks, the teacher scorer and vLLM all real)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.train", "--config", f"configs/{config}.yaml", f"trainer.output_dir={out}",
           f"trainer.max_steps={steps}", "data.prompts_per_step=4", "data.builtin_train_size=48",
           "algorithm.group_size=4", "trainer.num_ranks=2", "trainer.micro_batch_tokens=256", "trainer.eval_every=0",
           "rollout.cpu_kv_cache_gb=0.05", "resources.colocate=true", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(steps))
    return rows


@pytest.mark.runtime
def test_kdrl_full_reverse_kl_trains_through_the_cli(tmp_path, tiny_models):
    """``configs/kdrl_full.yaml`` for 2 steps through the real CLI: exit 0, the full term is logged
    (``div/kd_teacher`` finite, >= 0 on the top-k + tail support) with its coefficient."""
    rows = run_cli(tmp_path, "kdrl_full", "algorithm.divergences.0.mask=all")  # all rows: the term always has tokens
    for r in rows:
        assert math.isfinite(r["div/kd_teacher"]) and r["div/kd_teacher"] >= 0, r
        assert r["coef/kd_teacher"] == pytest.approx(5e-3 - 5e-5 * r["step"])
        assert math.isfinite(r["loss/total"])
    assert any(r["div/kd_teacher"] > 0 for r in rows)  # the student is not the teacher
    print("div/kd_teacher per step:", [r["div/kd_teacher"] for r in rows])


@pytest.mark.runtime
def test_distill_trains_on_the_divergence_alone_through_the_cli(tmp_path, tiny_models):
    """``configs/distill.yaml``: no surrogate (``loss/policy`` 0, no clip metrics), the JSD to the
    teacher logged and finite, rewards still logged."""
    rows = run_cli(tmp_path, "distill")
    for r in rows:
        assert r["loss/policy"] == 0.0 and "actor/clip_frac" not in r, r
        assert math.isfinite(r["div/jsd_teacher"]) and 0 < r["div/jsd_teacher"] <= math.log(2), r
        assert "reward/mean" in r
    print("div/jsd_teacher per step:", [r["div/jsd_teacher"] for r in rows])


@pytest.mark.runtime
def test_sinkd_trains_through_the_cli(tmp_path, tiny_models):
    """``configs/sinkd.yaml``: distillation on the SinKD Sinkhorn distance to the teacher's top-32,
    2 steps through the CLI: ``div/sinkd_teacher`` (the mean per-position transport cost, i.e. the
    micro-batches' distances) logged, finite and in (0, 2]; no surrogate."""
    rows = run_cli(tmp_path, "sinkd")
    for r in rows:
        assert r["loss/policy"] == 0.0 and "actor/clip_frac" not in r, r
        assert math.isfinite(r["div/sinkd_teacher"]) and 0 < r["div/sinkd_teacher"] <= 2, r
        assert math.isfinite(r["loss/total"]) and r["coef/sinkd_teacher"] == 1.0
    print("div/sinkd_teacher per step:", [r["div/sinkd_teacher"] for r in rows])


def test_sinkd_config_plans_a_batchwise_term_on_the_teacher_topk():
    from rlplat import algorithms
    from rlplat.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "sinkd.yaml"))
    plan = algorithms.get("distill").plan(cfg)
    assert [(t.divergence, t.full, t.batchwise) for t in plan.terms] == [("sinkhorn", True, True)]
    assert plan.scorer_roles == {"teacher"} and cfg.roles.teacher.top_k_logits == 32 and not plan.loss.surrogate


# ============================================================================ the distill algorithm
def test_distill_config_plans_no_surrogate_and_the_teacher_topk():
    from rlplat import algorithms
    from rlplat.config import ConfigError, load_config

    path = os.path.join(ROOT, "configs", "distill.yaml")
    cfg = load_config(path)
    plan = algorithms.get("distill").plan(cfg)
    assert plan.scorer_roles == {"teacher"} and not plan.loss.surrogate
    assert plan.loss.old_from_forward  # no surrogate reads pi_prox: no separate forward for it
    assert [t.full for t in plan.terms] == [True] and cfg.roles.teacher.top_k_logits == 32
    with pytest.raises(ConfigError, match=r"^algorithm\.eps_high is set, but algorithm 'distill' does not use it"):
        load_config(path, ["algorithm.eps_high=0.28"])
    with pytest.raises(ConfigError, match="algorithm.dynamic_sampling=true is not supported by algorithm 'distill'"):
        load_config(path, ["algorithm.dynamic_sampling=true"])
    kdrl_full = load_config(os.path.join(ROOT, "configs", "kdrl_full.yaml"))
    assert algorithms.get("kdrl").plan(kdrl_full).loss.surrogate
