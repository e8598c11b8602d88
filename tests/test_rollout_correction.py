"""Rollout correction (docs/algorithms.md, "Off-policy data"): truncated / masked importance weights between the
engine's log-probs (mu, ``logprobs["rollout"]``) and the trainer's (pi_prox, ``logprobs["old"]``),
in the decoupled PPO surrogate ``w * max(-rho A, -clip(rho) A)``. Exact checks, float64."""
import math
import os

import pytest
import torch

from actors.trainer.rank import PolicyLossFn, _metric_weight
from rlplat import algorithms
from rlplat import rollout_correction as rc
from rlplat.batch import DATA_EXPLORE, DATA_REHEARSAL
from rlplat.config import ConfigError, load_config
from rlplat.losses import (
    EXPLORE_KEY,
    DivergenceTerm,
    PolicyLossConfig,
    loss_totals,
    pack_totals,
    policy_loss,
    unpack_totals,
)
from rlplat.rollout_correction import RolloutCorrection
from tests.test_losses import DT, MODES, grad_of, kd_term, leaf, make_batch, rand_lp, rehearsal_term

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ["none", "tis", "mis"]
LEVELS = ["token", "sequence"]
LENGTHS = [6, 2, 5, 1, 3, 6, 4, 2, 5, 3]
KIND = [0, 0, 1, 0, 0, 1, 0, 0, 0, 1]  # rows 2, 5, 9 are DPH-RL rehearsal rows


def cfg_for(mode, kind="none", level="token", threshold=2.0, **kw):
    return PolicyLossConfig(agg=mode, norm_len=8 if mode == "seq-mean-token-sum-norm" else None,
                            rollout_correction=RolloutCorrection(kind, level, threshold), **kw)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mixed(rollout_noise=0.0, seed=0):
    """10 rows (3 rehearsal), old / rollout / teacher / initial log-probs, and the policy's logp
    near old; ``rollout = old + noise`` on real tokens (0 on padding, as engines pad)."""
    B, R = len(LENGTHS), max(LENGTHS)
    old = rand_lp(B, R, seed=1)
    batch = make_batch(LENGTHS, kind=KIND, adv=torch.randn(B, dtype=DT, generator=gen(seed)),
                       rewards=[0, 1, 1, 0, 1, 1, 1, 0, 1, 1], old=old, teacher=rand_lp(B, R, seed=2),
                       initial=rand_lp(B, R, seed=3))
    noise = rollout_noise * torch.randn(B, R, dtype=DT, generator=gen(seed + 1))
    batch.logprobs["rollout"] = (old + noise) * batch.response_mask
    lp = old + 0.3 * torch.randn(B, R, dtype=DT, generator=gen(seed + 2))
    return batch, lp


def explore_tok(batch):
    return batch.response_mask * (batch.kind == DATA_EXPLORE).to(DT)[:, None]


# ============================================================================ mu == pi_prox
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", LEVELS)
def test_weights_exactly_one_when_logprobs_agree(kind, level):
    batch, _ = mixed(rollout_noise=0.0)
    tok = explore_tok(batch)
    w = rc.weights(batch, RolloutCorrection(kind, level, 1.5), tok)
    assert torch.equal(w.weight, tok) and torch.equal(w.keep, tok) and torch.equal(w.log_ratio, torch.zeros_like(tok))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", LEVELS)
def test_every_kind_equals_plain_ppo_when_logprobs_agree(mode, kind, level):
    """Loss, gradient and every shared metric bit-identical to the uncorrected loss on a batch
    without engine log-probs (the loss before rollout correction existed)."""
    batch, lp0 = mixed(rollout_noise=0.0)
    terms = [kd_term("incorrect"), rehearsal_term()]
    plain = batch.select(torch.arange(len(batch)))
    del plain.logprobs["rollout"]
    lp1, lp2 = leaf(lp0), leaf(lp0)
    l1, m1 = policy_loss(lp1, plain, cfg_for(mode, dual_clip=3.0), terms, 0)
    l2, m2 = policy_loss(lp2, batch, cfg_for(mode, kind, level, 1.5, dual_clip=3.0), terms, 0)
    assert torch.equal(l1, l2)
    assert torch.equal(grad_of(l1, lp1), grad_of(l2, lp2))
    assert {k: v for k, v in m2.items() if not k.startswith("rollout/")} == m1
    assert m2["rollout/logprob_abs_diff_mean"] == 0.0
    if kind != "none":
        assert m2["rollout/is_weight_mean"] == 1.0
    if kind == "mis":
        assert m2["rollout/masked_frac"] == 0.0
    assert loss_totals(batch, terms, 1, RolloutCorrection(kind, level, 1.5)) == loss_totals(plain, terms, 1)


# ============================================================================ TIS
def one_row(log_ratios, adv=1.0):
    """One exploration row whose token log-ratios lp_prox - lp_mu are ``log_ratios``."""
    n = len(log_ratios)
    old = rand_lp(1, n, seed=5)
    batch = make_batch([n], adv=[adv], old=old)
    batch.logprobs["rollout"] = old - torch.tensor([log_ratios], dtype=DT)
    return batch, old


def test_tis_token_weights_truncate_at_C():
    ratios = [0.5, 1.0, 1.5, 2.0 + 1e-9, 3.0, 1e300]
    batch, _ = one_row([math.log(r) for r in ratios])
    w = rc.weights(batch, RolloutCorrection("tis", "token", 2.0), batch.response_mask)
    torch.testing.assert_close(w.weight[0, :3], torch.tensor(ratios[:3], dtype=DT), rtol=1e-14, atol=0)
    assert (w.weight[0, 3:] == 2.0).all()  # exactly C above it
    assert torch.equal(w.keep, batch.response_mask)


def test_tis_sequence_weight_is_truncated_product_of_token_ratios():
    batch, _ = one_row([math.log(2.0), math.log(0.25), math.log(3.0)])  # product 1.5
    tok = batch.response_mask
    seq = rc.weights(batch, RolloutCorrection("tis", "sequence", 2.0), tok)
    torch.testing.assert_close(seq.weight, torch.full((1, 3), 1.5, dtype=DT), rtol=1e-14, atol=0)
    token = rc.weights(batch, RolloutCorrection("tis", "token", 2.0), tok)
    torch.testing.assert_close(token.weight, torch.tensor([[2.0, 0.25, 2.0]], dtype=DT), rtol=1e-14, atol=0)
    capped = rc.weights(batch, RolloutCorrection("tis", "sequence", 1.2), tok)
    assert (capped.weight == 1.2).all()
    # a long sequence whose product overflows: exactly C, no inf/NaN
    huge, _ = one_row([400.0] * 4)
    assert (rc.weights(huge, RolloutCorrection("tis", "sequence", 2.0), huge.response_mask).weight == 2.0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("level", LEVELS)
def test_tis_multiplies_each_tokens_surrogate_and_gradient_by_its_weight(mode, level):
    """Decoupled PPO: the per-token loss and gradient are the plain clipped ones (clip around
    pi_prox) times w; the weight itself carries no gradient."""
    batch, lp0 = mixed(rollout_noise=0.5)
    tok = explore_tok(batch)
    corr = RolloutCorrection("tis", level, 1.5)
    w = rc.weights(batch, corr, tok).weight
    assert not w.requires_grad and (w <= 1.5).all() and ((w - 1).abs() * tok).sum() > 0.5
    lp1, lp2 = leaf(lp0), leaf(lp0)
    plain, m1 = policy_loss(lp1, batch, cfg_for(mode), [], 0)
    tis, m2 = policy_loss(lp2, batch, cfg_for(mode, "tis", level, 1.5), [], 0)
    torch.testing.assert_close(grad_of(tis, lp2), w * grad_of(plain, lp1), rtol=1e-12, atol=1e-15)
    assert m2["actor/clip_frac"] == m1["actor/clip_frac"] > 0  # clipping does not depend on w
    assert m2["rollout/is_weight_mean"] == pytest.approx(float(w.sum() / tok.sum()), rel=1e-12)


# ============================================================================ MIS
def test_mis_token_and_sequence_masks():
    batch, _ = one_row([math.log(2.0), math.log(0.25), math.log(3.0), math.log(1.0)])  # product 1.5
    tok = batch.response_mask
    token = rc.weights(batch, RolloutCorrection("mis", "token", 2.5), tok)
    assert token.keep.tolist() == [[1.0, 0.0, 0.0, 1.0]] and torch.equal(token.weight, tok)
    seq = rc.weights(batch, RolloutCorrection("mis", "sequence", 2.5), tok)
    assert torch.equal(seq.keep, tok)  # the product of the token ratios is inside [1/C, C]
    every_token_inside, _ = one_row([math.log(1.5)] * 3)  # product 3.375
    t = every_token_inside.response_mask
    assert torch.equal(rc.weights(every_token_inside, RolloutCorrection("mis", "token", 2.0), t).keep, t)
    assert rc.weights(every_token_inside, RolloutCorrection("mis", "sequence", 2.0), t).keep.sum() == 0
    low, _ = one_row([-400.0, 0.0])  # ratio underflows to 0: outside
    assert rc.weights(low, RolloutCorrection("mis", "token", 2.0), low.response_mask).keep.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("level", LEVELS)
def test_mis_masked_tokens_send_zero_gradient_and_leave_the_normalisers(mode, level):
    """The MIS loss equals the plain loss on the same batch with the masked tokens removed from
    ``loss_mask`` (so from every count: tokens, per-row lengths, sequences)."""
    batch, lp0 = mixed(rollout_noise=0.6)
    terms = [kd_term("incorrect"), rehearsal_term()]
    tok = explore_tok(batch)
    corr = RolloutCorrection("mis", level, 1.5)
    keep = rc.weights(batch, corr, tok).keep
    dropped = tok - keep
    assert dropped.sum() >= 3 and keep.sum() >= 3
    if level == "sequence":
        assert (keep.sum(-1) == 0).logical_and(tok.sum(-1) > 0).any()  # whole rows go
    lp = leaf(lp0)
    loss, metrics = policy_loss(lp, batch, cfg_for(mode, "mis", level, 1.5), [], 0)
    g = grad_of(loss, lp)
    assert (g[dropped > 0] == 0).all() and (g[keep > 0] != 0).any()

    removed = batch.select(torch.arange(len(batch)))
    removed.loss_mask = batch.loss_mask - dropped
    lp_ref = leaf(lp0)
    ref, _ = policy_loss(lp_ref, removed, cfg_for(mode), [], 0)
    torch.testing.assert_close(loss, ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(g, grad_of(ref, lp_ref), rtol=1e-13, atol=0)
    assert metrics["rollout/masked_frac"] == pytest.approx(float(dropped.sum() / tok.sum()), rel=1e-12)
    assert metrics["rollout/is_weight_mean"] == pytest.approx(1 - metrics["rollout/masked_frac"], rel=1e-12)
    # the normalisers: the surrogate's totals are the kept tokens, the terms' are unchanged
    totals = loss_totals(batch, terms, 1, corr)
    assert totals["policy"].tokens == float(keep.sum()) and totals["policy"].seqs == float((keep.sum(-1) > 0).sum())
    assert {k: v for k, v in totals.items() if k != "policy"} == {k: v for k, v in loss_totals(batch, terms).items() if k != "policy"}


def test_mis_masking_every_token_gives_zero_surrogate():
    batch, old = one_row([5.0, -5.0])
    lp = leaf(old + 0.1)
    loss, metrics = policy_loss(lp, batch, cfg_for("token-mean", "mis", "token", 2.0), [], 0)
    assert loss.item() == 0.0 and (grad_of(loss, lp) == 0).all()
    assert metrics["rollout/masked_frac"] == 1.0 and "actor/clip_frac" not in metrics


# ============================================================================ data parallel
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,level", [("mis", "token"), ("mis", "sequence"), ("tis", "token"), ("tis", "sequence")])
def test_microbatch_rank_equivalence_with_rollout_correction(mode, kind, level):
    """Micro-batches on 2 ranks with the global totals of loss_totals(..., correction) give
    exactly the whole mini-batch's loss and gradient (the masks are per row, so a split never
    changes them)."""
    batch, lp0 = mixed(rollout_noise=0.6)
    terms = [kd_term("incorrect"), rehearsal_term()]
    cfg = cfg_for(mode, kind, level, 1.5, dual_clip=3.0)
    lp = leaf(lp0)
    full, _ = policy_loss(lp, batch, cfg, terms, 0)
    g_full = grad_of(full, lp)

    world = 2
    ranks = [[[0, 1, 2], [3]], [[4, 5, 6], [7, 8, 9]]]  # rank -> micro-batches
    per_rank = [loss_totals(batch.select(sum(micro, [])), terms, world, cfg.rollout_correction) for micro in ranks]
    keys, packed = pack_totals(per_rank[0])
    totals = unpack_totals(keys, packed + pack_totals(per_rank[1])[1], world)  # the all-reduce
    if kind == "mis":
        assert totals["policy"].tokens < float(explore_tok(batch).sum())
    total = 0.0
    for micro in ranks:
        for rows in micro:
            loss, _ = policy_loss(lp[rows], batch.select(rows), cfg, terms, 0, totals=totals)
            total = total + loss / world
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_of(total, lp), g_full, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("kind", ["tis", "mis"])
def test_rollout_metrics_merge_over_micro_batches_weighted_by_exploration_tokens(kind):
    """The trainer's merge (weights from PolicyLossFn.component_tokens via _metric_weight) of
    micro-batch metrics equals the metrics of the whole batch."""
    batch, lp0 = mixed(rollout_noise=0.6)
    cfg = cfg_for("token-mean", kind, "token", 1.5)
    loss_fn = PolicyLossFn(cfg, [rehearsal_term()])
    _, whole = policy_loss(leaf(lp0), batch, cfg, loss_fn.terms, 0)
    acc = {}
    for rows in ([0, 1, 2], [3, 4], [5, 6, 7, 8, 9]):
        mb = batch.select(torch.tensor(rows))
        _, m = loss_fn(leaf(lp0[rows]), mb, 0, None)
        comp = loss_fn.component_tokens(mb)
        assert comp[EXPLORE_KEY] == float(explore_tok(mb).sum())
        for key, value in m.items():
            if key.startswith(("rollout/", "actor/")):
                w = _metric_weight(key, comp, float(mb.response_mask.sum()))
                a = acc.setdefault(key, [0.0, 0.0])
                a[0], a[1] = a[0] + value * w, a[1] + w
    merged = {k: s / w for k, (s, w) in acc.items()}
    assert set(merged) == {k for k in whole if k.startswith(("rollout/", "actor/"))}
    for key in merged:
        assert merged[key] == pytest.approx(whole[key], rel=1e-12), key


def test_metric_values_by_hand():
    batch, _ = one_row([math.log(4.0), math.log(0.5), 0.0, math.log(1.5)])
    tok = batch.response_mask
    for kind, weight_mean, masked in (("tis", (2 + 0.5 + 1 + 1.5) / 4, None), ("mis", 0.5, 0.5)):
        corr = RolloutCorrection(kind, "token", 2.0 if kind == "tis" else 1.9)
        m = rc.metrics(rc.weights(batch, corr, tok), corr, tok)
        assert m["rollout/logprob_abs_diff_mean"] == pytest.approx((math.log(4) + math.log(2) + math.log(1.5)) / 4)
        assert m["rollout/is_weight_mean"] == pytest.approx(weight_mean)
        assert m.get("rollout/masked_frac") == (None if masked is None else pytest.approx(masked))


# ============================================================================ which rows
def test_rehearsal_rows_are_never_corrected():
    """Rehearsal rows' stored log-probs can be anything: they get no surrogate, hence no weight."""
    batch, lp0 = mixed(rollout_noise=0.0)
    wild = batch.select(torch.arange(len(batch)))
    reh = (batch.kind == DATA_REHEARSAL)[:, None] & (batch.response_mask > 0)
    wild.logprobs["rollout"] = torch.where(reh, torch.full_like(batch.logprobs["old"], -50.0), batch.logprobs["rollout"])
    terms = [rehearsal_term()]
    for kind in ("tis", "mis"):
        cfg = cfg_for("seq-mean-token-mean", kind, "sequence", 1.5)
        l1, m1 = policy_loss(leaf(lp0), batch, cfg, terms, 0)
        l2, m2 = policy_loss(leaf(lp0), wild, cfg, terms, 0)
        assert torch.equal(l1, l2) and m1 == m2
        assert loss_totals(batch, terms, 1, cfg.rollout_correction) == loss_totals(wild, terms, 1, cfg.rollout_correction)


def test_padding_garbage_never_reaches_the_weights():
    batch, _ = one_row([math.log(1.5), 0.0])
    batch = make_batch([1, 2], adv=[1.0, -1.0], old=torch.tensor([[-1.0, float("-inf")], [-1.0, -2.0]], dtype=DT),
                       rollout=torch.tensor([[-1.2, 0.0], [-1.0, -2.0]], dtype=DT))
    for kind in ("tis", "mis"):
        w = rc.weights(batch, RolloutCorrection(kind, "sequence", 2.0), batch.response_mask)
        assert torch.isfinite(w.weight).all() and w.weight[0, 1] == 0 and w.keep[0, 1] == 0
        torch.testing.assert_close(w.log_ratio[0], torch.tensor([0.2, 0.0], dtype=DT))


def test_correction_needs_engine_logprobs():
    batch = make_batch([2], adv=[1.0], old=rand_lp(1, 2))
    policy_loss(leaf(rand_lp(1, 2)), batch, cfg_for("token-mean"), [], 0)  # none: no "rollout" needed
    with pytest.raises(ValueError, match="no 'rollout' role"):
        policy_loss(leaf(rand_lp(1, 2)), batch, cfg_for("token-mean", "tis"), [], 0)


# ============================================================================ config
def test_rollout_correction_object_errors():
    with pytest.raises(ValueError, match="kind 'is' is not registered"):
        RolloutCorrection("is")
    with pytest.raises(ValueError, match="level 'step'"):
        RolloutCorrection("tis", "step")
    with pytest.raises(ValueError, match="threshold must be > 1"):
        RolloutCorrection("mis", "token", 1.0)
    with pytest.raises(ValueError, match="reserved"):
        DivergenceTerm(name=EXPLORE_KEY)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


GRPO = os.path.join(ROOT, "configs", "grpo.yaml")


@pytest.mark.parametrize("overrides,match", [
    (["algorithm.rollout_correction.kind=is"], "algorithm.rollout_correction.kind='is' is not allowed"),
    (["algorithm.rollout_correction.kind=tis", "algorithm.rollout_correction.level=step"],
     "algorithm.rollout_correction.level='step'"),
    (["algorithm.rollout_correction.kind=mis", "algorithm.rollout_correction.threshold=0.5"],
     "algorithm.rollout_correction.threshold=0.5 must be > 1"),
    (["algorithm.rollout_correction.level=sequence"], "kind='none' applies no correction"),
    (["algorithm.rollout_correction.threshold=3"], "kind='none' applies no correction"),
    (["algorithm.divergences.0.name=explore"], r"algorithm.divergences\[0\].name='explore' is reserved"),
])
def test_config_errors_name_the_key(in_tmp, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(GRPO, overrides)


def test_config_reaches_the_loss(in_tmp):
    cfg = load_config(GRPO, ["algorithm.rollout_correction.kind=mis", "algorithm.rollout_correction.level=sequence",
                             "algorithm.rollout_correction.threshold=3"])
    plan = algorithms.get(cfg.algorithm.name).plan(cfg)
    assert plan.loss.rollout_correction == RolloutCorrection("mis", "sequence", 3.0)
    default = algorithms.get("grpo").plan(load_config(GRPO))
    assert default.loss.rollout_correction == RolloutCorrection()
