"""Policy loss, aggregation, divergence terms, masks and coefficient schedules
(docs/algorithms.md: #the-shared-objective, #loss-aggregation, #masks, #coefficient-schedules, #kdrl, #dph-rl)."""
import math

import pytest
import torch

from rlplat import masks
from rlplat.batch import DATA_EXPLORE, DATA_REHEARSAL, Batch
from rlplat.config import CoefConfig, DivergenceTermConfig
from rlplat.losses import (
    DivergenceTerm,
    LossTotals,
    PolicyAdvantage,
    PolicyLossConfig,
    aggregate,
    loss_totals,
    pack_totals,
    policy_loss,
    token_entropy,
    unpack_totals,
)
from rlplat.schedules import REGISTRY as SCHEDULES
from rlplat.schedules import CoefSchedule

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
DT = torch.float64


def make_batch(lengths, R=None, kind=None, adv=None, rewards=None, group_ids=None, seed=0, **logprobs):
    """Batch with right-padded responses of ``lengths``; logprob roles given as [B, R] tensors."""
    B = len(lengths)
    R = R or max(lengths)
    mask = torch.zeros(B, R, dtype=DT)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return Batch(
        prompt_ids=torch.ones(B, 1, dtype=torch.long),
        prompt_mask=torch.ones(B, 1, dtype=torch.long),
        response_ids=torch.ones(B, R, dtype=torch.long),
        response_mask=mask,
        group_ids=torch.arange(B) if group_ids is None else torch.as_tensor(group_ids),
        logprobs=logprobs,
        rewards=None if rewards is None else torch.as_tensor(rewards, dtype=DT),
        advantages=None if adv is None else torch.as_tensor(adv, dtype=DT),
        kind=None if kind is None else torch.as_tensor(kind),
    )


def weights(mask, mode, norm_len=None):
    """d loss / d (per-token value) of each aggregation mode, by hand."""
    lens = mask.sum(1, keepdim=True)
    seqs = (lens > 0).sum()
    if mode == "token-mean":
        return mask / mask.sum()
    if mode == "seq-mean-token-mean":
        return mask / lens.clamp(min=1) / seqs
    if mode == "seq-mean-token-sum":
        return mask / seqs
    return mask / norm_len / seqs


def rand_lp(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(*shape, generator=g, dtype=DT) * 3


def leaf(t):
    return t.clone().requires_grad_(True)


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def cfg_for(mode, **kw):
    return PolicyLossConfig(agg=mode, norm_len=8 if mode == "seq-mean-token-sum-norm" else None, **kw)


# ============================================================================ aggregate
def test_aggregate_hand_values():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(v, m, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(v, m, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(v, m, "seq-mean-token-sum-norm", norm_len=5).item() == pytest.approx((6 / 5 + 4 / 5) / 2)
    with pytest.raises(ValueError, match="norm_len"):
        aggregate(v, m, "seq-mean-token-sum-norm")
    with pytest.raises(KeyError, match="loss aggregation mode"):
        aggregate(v, m, "token-sum")


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_masked_rows_and_garbage(mode):
    inf, nan = float("inf"), float("nan")
    x = leaf(torch.tensor([[1.0, 2.0], [inf, nan], [5.0, -inf]], dtype=DT))
    m = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]], dtype=DT)
    out = aggregate(x, m, mode, norm_len=4)
    g = grad_of(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all()
    assert (g[1] == 0).all() and g[2, 1] == 0 and (g[0] != 0).all()
    # the masked-out row counts as neither a token nor a sequence
    ref = aggregate(torch.tensor([[1.0, 2.0], [5.0, 0.0]], dtype=DT), m[[0, 2]], mode, norm_len=4)
    assert out.item() == pytest.approx(ref.item())


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_empty_mask_is_exact_zero(mode):
    x = leaf(torch.randn(2, 3, dtype=DT))
    out = aggregate(x, torch.zeros(2, 3, dtype=DT), mode, norm_len=4)
    assert out.item() == 0.0
    assert (grad_of(out, x) == 0).all()


def test_aggregate_totals_smaller_than_local_raise():
    with pytest.raises(ValueError, match="totals must cover"):
        aggregate(torch.ones(2, 2), torch.ones(2, 2), "token-mean", totals=LossTotals(tokens=3, seqs=2))


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_microbatch_rank_equivalence(mode):
    torch.manual_seed(0)
    lengths = [5, 2, 0, 7, 3, 1, 6, 4]
    mask = make_batch(lengths).response_mask
    x = leaf(torch.randn(8, 7, dtype=DT))
    full = aggregate(x * 2, mask, mode, norm_len=8)
    g_full = grad_of(full, x)
    world = 2
    totals = LossTotals.of(mask, world_size=world)
    ranks = [[[0, 1], [2, 3, 4]], [[5], [6, 7]]]  # rank -> micro-batches of row indices
    total = 0.0
    for micro in ranks:
        for rows in micro:
            total = total + aggregate(x[rows] * 2, mask[rows], mode, totals=totals, norm_len=8) / world
    torch.testing.assert_close(total, full, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_of(total, x), g_full, rtol=1e-12, atol=0)


# ============================================================================ surrogate
@pytest.mark.parametrize("mode", MODES)
def test_on_policy_gradient_is_minus_advantage(mode):
    lengths = [4, 2, 3, 1]
    old = rand_lp(4, 4)
    batch = make_batch(lengths, adv=[0.5, -1.0, 2.0, 0.0], old=old)
    lp = leaf(old)  # rho == 1 exactly
    loss, metrics = policy_loss(lp, batch, cfg_for(mode), [], step=0)
    expect = -batch.advantages[:, None] * weights(batch.response_mask, mode, 8)
    torch.testing.assert_close(grad_of(loss, lp), expect, rtol=1e-12, atol=1e-15)
    assert metrics["actor/ratio_mean"] == 1.0 and metrics["actor/clip_frac"] == 0.0
    assert loss.item() == pytest.approx(-(batch.advantages[:, None] * weights(batch.response_mask, mode, 8)).sum())


def test_equal_lengths_token_mean_equals_seq_mean():
    old = rand_lp(3, 5, seed=1)
    batch = make_batch([5, 5, 5], adv=[1.0, -0.3, 0.7], old=old)
    lp1 = leaf(old + 0.1 * torch.randn(3, 5, dtype=DT))
    lp2 = leaf(lp1.detach())
    l1, _ = policy_loss(lp1, batch, cfg_for("token-mean"), [], 0)
    l2, _ = policy_loss(lp2, batch, cfg_for("seq-mean-token-mean"), [], 0)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(grad_of(l1, lp1), grad_of(l2, lp2))
    # unequal lengths: they differ
    uneven = make_batch([5, 1, 3], adv=[1.0, -0.3, 0.7], old=old)
    u1, _ = policy_loss(lp1.detach(), uneven, cfg_for("token-mean"), [], 0)
    u2, _ = policy_loss(lp1.detach(), uneven, cfg_for("seq-mean-token-mean"), [], 0)
    assert abs(u1.item() - u2.item()) > 1e-3


def one_token_grad(rho, adv, **cfg_kw):
    """(loss, d loss / d logp, metrics) of a single-token batch with ratio ``rho`` and advantage ``adv``."""
    old = torch.tensor([[-1.0]], dtype=DT)
    batch = make_batch([1], adv=[adv], old=old)
    lp = leaf(old + math.log(rho))
    loss, metrics = policy_loss(lp, batch, PolicyLossConfig(agg="token-mean", **cfg_kw), [], 0)
    return loss.item(), grad_of(loss, lp).item(), metrics


def test_clipping_symmetric():
    # A > 0: ratio above 1 + eps is clipped (no push further up), below 1 - eps is not
    loss, g, m = one_token_grad(1.5, 1.0)
    assert g == 0 and loss == pytest.approx(-1.2) and m["actor/clip_frac"] == 1.0
    loss, g, m = one_token_grad(0.5, 1.0)
    assert g == pytest.approx(-0.5) and loss == pytest.approx(-0.5) and m["actor/clip_frac"] == 0.0
    # A < 0: ratio below 1 - eps is clipped, above 1 + eps is not
    loss, g, m = one_token_grad(0.5, -1.0)
    assert g == 0 and loss == pytest.approx(0.8) and m["actor/clip_frac"] == 1.0
    loss, g, m = one_token_grad(1.5, -1.0)
    assert g == pytest.approx(1.5) and m["actor/clip_frac"] == 0.0
    # inside the range: plain -A * rho gradient
    _, g, _ = one_token_grad(1.1, 2.0)
    assert g == pytest.approx(-2.2)


def test_clipping_asymmetric_clip_higher():
    kw = dict(eps_low=0.2, eps_high=0.28)
    assert one_token_grad(1.25, 1.0, **kw)[1] == pytest.approx(-1.25)  # inside 1.28: still learning
    assert one_token_grad(1.3, 1.0, **kw)[1] == 0
    assert one_token_grad(1.25, 1.0)[1] == 0  # symmetric 0.2 clips it
    assert one_token_grad(0.79, -1.0, **kw)[1] == 0  # lower bound stays at 0.8
    assert one_token_grad(0.81, -1.0, **kw)[1] == pytest.approx(0.81)


def test_dual_clip_bounds_negative_advantage():
    loss, g, m = one_token_grad(5.0, -2.0, dual_clip=3.0)
    assert loss == pytest.approx(6.0) and g == 0 and m["actor/clip_frac"] == 1.0  # -c * A
    loss, g, _ = one_token_grad(5.0, -2.0)
    assert loss == pytest.approx(10.0) and g == pytest.approx(10.0)  # unbounded without it
    loss, g, _ = one_token_grad(2.0, -2.0, dual_clip=3.0)
    assert loss == pytest.approx(4.0) and g == pytest.approx(4.0)  # below c: untouched
    loss, g, _ = one_token_grad(5.0, 2.0, dual_clip=3.0)
    assert loss == pytest.approx(-2.4) and g == 0  # positive advantages ignore it


def test_clip_frac_and_ratio_mean():
    old = torch.zeros(1, 4, dtype=DT)
    batch = make_batch([4], adv=[1.0], old=old)
    lp = leaf(torch.log(torch.tensor([[0.5, 1.0, 1.5, 2.0]], dtype=DT)))
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=DT)
    _, m = policy_loss(lp, batch, PolicyLossConfig(), [], 0, entropy=entropy)
    assert m["actor/clip_frac"] == pytest.approx(0.5)
    assert m["actor/ratio_mean"] == pytest.approx(1.25)
    assert m["actor/entropy"] == pytest.approx(2.5)


def test_padding_with_infinite_old_logprob_gives_no_nan():
    old = rand_lp(2, 3)
    old[0, 2] = -float("inf")
    old[1, 1:] = 1e4
    batch = make_batch([2, 1], R=3, adv=[1.0, -1.0], old=old)
    lp = leaf(rand_lp(2, 3, seed=5))
    loss, _ = policy_loss(lp, batch, PolicyLossConfig(), [], 0)
    g = grad_of(loss, lp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert g[0, 2] == 0 and (g[1, 1:] == 0).all()


# ============================================================================ KDRL
def kd_term(mask="all", coef=0.5, **mask_params):
    return DivergenceTerm(name="kd", divergence="k2", anchor="teacher", coef=CoefSchedule(value=coef),
                          mask=mask, mask_params=mask_params)


@pytest.mark.parametrize("mode", MODES)
def test_kd_k2_term_value_and_gradient(mode):
    old, teacher = rand_lp(3, 4, seed=1), rand_lp(3, 4, seed=2)
    batch = make_batch([4, 2, 3], adv=[0.0, 0.0, 0.0], old=old, teacher=teacher)
    # rho == 1 and A == 0: the surrogate contributes nothing, the gradient is the KD term's
    lp = leaf(old)
    loss, m = policy_loss(lp, batch, cfg_for(mode), [kd_term()], 0)
    w = weights(batch.response_mask, mode, 8)
    torch.testing.assert_close(loss, (0.5 * 0.5 * (old - teacher) ** 2 * w).sum())
    torch.testing.assert_close(grad_of(loss, lp), 0.5 * (old - teacher) * w)
    assert m["coef/kd"] == 0.5
    on = batch.response_mask > 0
    assert m["div/kd"] == pytest.approx((0.5 * (old - teacher) ** 2)[on].mean().item())


def test_kd_loss_zero_iff_policy_equals_teacher():
    teacher = rand_lp(2, 3, seed=3)
    batch = make_batch([3, 2], adv=[0.0, 0.0], old=teacher, teacher=teacher)
    lp = leaf(teacher)
    loss, m = policy_loss(lp, batch, PolicyLossConfig(), [kd_term()], 0)
    assert loss.item() == 0.0 and m["div/kd"] == 0.0
    assert (grad_of(loss, lp) == 0).all()
    moved = teacher.clone()
    moved[1, 0] += 0.1  # one real token off the teacher
    loss2, _ = policy_loss(leaf(moved), batch, PolicyLossConfig(), [kd_term()], 0)
    assert loss2.item() > 0
    pad_moved = teacher.clone()
    pad_moved[1, 2] += 5.0  # a padding position: not part of the loss
    loss3, _ = policy_loss(leaf(pad_moved), batch, PolicyLossConfig(), [kd_term()], 0)
    assert loss3.item() == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_all_correct_batch_has_zero_kd_under_response_masking(mode):
    old, teacher = rand_lp(4, 3, seed=1), rand_lp(4, 3, seed=2)
    batch = make_batch([3, 3, 2, 1], adv=[0.0] * 4, rewards=[1.0, 1.0, 1.5, 1.0], old=old, teacher=teacher)
    lp = leaf(old)
    loss, m = policy_loss(lp, batch, cfg_for(mode), [kd_term("incorrect")], 0)
    assert loss.item() == 0.0
    assert (grad_of(loss, lp) == 0).all()
    assert "div/kd" not in m and m["coef/kd"] == 0.5
    # one wrong response: only its row gets the KD gradient
    batch.rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=DT)
    loss, m = policy_loss(lp, batch, cfg_for(mode), [kd_term("incorrect")], 0)
    g = grad_of(loss, lp)
    assert (g[[0, 2, 3]] == 0).all() and (g[1] != 0).all()


def test_group_level_mask_in_loss():
    old, teacher = rand_lp(6, 2, seed=1), rand_lp(6, 2, seed=2)
    batch = make_batch([2] * 6, adv=[0.0] * 6, rewards=[0, 1, 0, 0, 0.5, 0.2], group_ids=[0, 0, 1, 1, 2, 2],
                       old=old, teacher=teacher)
    lp = leaf(old)
    loss, _ = policy_loss(lp, batch, PolicyLossConfig(), [kd_term("group_no_correct")], 0)
    g = grad_of(loss, lp)
    assert (g[:2] == 0).all() and (g[2:] != 0).all()
    # threshold 0.5 makes group 2 "has a correct response"
    loss, _ = policy_loss(lp, batch, PolicyLossConfig(), [kd_term("group_no_correct", correct_threshold=0.5)], 0)
    g = grad_of(loss, lp)
    assert (g[4:] == 0).all() and (g[2:4] != 0).all()


def test_kd_schedule_applied_by_step():
    teacher = rand_lp(1, 2, seed=2)
    batch = make_batch([2], adv=[0.0], old=teacher, teacher=teacher)
    term = DivergenceTerm(name="kd", divergence="k2", anchor="teacher",
                          coef=CoefSchedule(kind="linear", start=5e-3, slope=5e-5, floor=1e-3))
    lp = teacher + 1.0
    l0, m0 = policy_loss(leaf(lp), batch, PolicyLossConfig(), [term], 0)
    l9, m9 = policy_loss(leaf(lp), batch, PolicyLossConfig(), [term], 1000)
    assert m0["coef/kd"] == pytest.approx(5e-3) and m9["coef/kd"] == pytest.approx(1e-3)
    assert l0.item() == pytest.approx(5 * l9.item())


# ============================================================================ DPH-RL
def rehearsal_term(divergence="forward_kl", coef=0.1):
    return DivergenceTerm(name="rehearsal", divergence=divergence, anchor="initial",
                          coef=CoefSchedule(value=coef), mask="rehearsal")


def mixed_batch(adv):
    old, init = rand_lp(4, 3, seed=1), rand_lp(4, 3, seed=2)
    kind = [DATA_EXPLORE, DATA_REHEARSAL, DATA_EXPLORE, DATA_REHEARSAL]
    return make_batch([3, 2, 1, 3], kind=kind, adv=adv, old=old, initial=init)


def test_rehearsal_rows_get_no_surrogate_gradient():
    batch = mixed_batch(adv=[1.0, 5.0, -1.0, 5.0])  # rehearsal rows carry junk advantages
    lp = leaf(rand_lp(4, 3, seed=3))
    loss, _ = policy_loss(lp, batch, PolicyLossConfig(), [], 0)
    g = grad_of(loss, lp)
    assert (g[[1, 3]] == 0).all()
    assert (g[0] != 0).all() and g[2, 0] != 0


def test_explore_rows_get_no_rehearsal_gradient():
    batch = mixed_batch(adv=[0.0] * 4)
    lp = leaf(batch.logprobs["old"])  # rho == 1, A == 0: no surrogate gradient anywhere
    loss, m = policy_loss(lp, batch, PolicyLossConfig(), [rehearsal_term()], 0)
    g = grad_of(loss, lp)
    assert (g[[0, 2]] == 0).all()
    assert (g[1, :2] != 0).all() and (g[3] != 0).all() and g[1, 2] == 0
    # forward-KL generator u - 1 - log u with u = pi / pi_0, mean over the rehearsal rows' tokens
    u = torch.exp(batch.logprobs["old"] - batch.logprobs["initial"])
    f = u - 1 - torch.log(u)
    expect = (f[1, :2].mean() + f[3].mean()) / 2  # seq-mean-token-mean over the 2 rehearsal rows
    assert loss.item() == pytest.approx(0.1 * expect.item())
    assert m["div/rehearsal"] == pytest.approx(torch.cat([f[1, :2], f[3]]).mean().item())


def test_rehearsal_at_initial_policy_is_exactly_zero():
    batch = mixed_batch(adv=[0.0] * 4)
    lp = leaf(batch.logprobs["initial"])
    batch.logprobs["old"] = batch.logprobs["initial"]
    for div in ("forward_kl", "js", "alpha"):
        loss, _ = policy_loss(lp, batch, PolicyLossConfig(), [rehearsal_term(div)], 0)
        assert loss.item() == 0.0
        assert (grad_of(loss, lp) == 0).all()


def test_empty_term_rows_and_rehearsal_only_batch():
    # no rehearsal rows: the rehearsal term is exactly 0, no NaN, no div metric
    old = rand_lp(2, 3)
    batch = make_batch([3, 2], adv=[1.0, -1.0], old=old)
    lp = leaf(old + 0.05)
    with_term, m = policy_loss(lp, batch, PolicyLossConfig(), [rehearsal_term()], 0)
    without, _ = policy_loss(lp, batch, PolicyLossConfig(), [], 0)
    assert with_term.item() == without.item() and "div/rehearsal" not in m
    # only rehearsal rows: no 'old' role or advantages needed, surrogate is exactly 0
    init = rand_lp(2, 3, seed=4)
    reh = make_batch([3, 1], kind=[DATA_REHEARSAL] * 2, initial=init)
    lp = leaf(init + 0.1)
    loss, m = policy_loss(lp, reh, PolicyLossConfig(), [rehearsal_term()], 0)
    assert m["loss/policy"] == 0.0 and "actor/clip_frac" not in m
    assert loss.item() > 0 and torch.isfinite(grad_of(loss, lp)).all()
    # and with no terms at all the loss is a graph-connected exact 0 (backward must not fail)
    loss, _ = policy_loss(lp, reh, PolicyLossConfig(), [], 0)
    assert loss.item() == 0.0 and (grad_of(loss, lp) == 0).all()


def test_estimator_must_match_the_rows_it_samples():
    batch = mixed_batch(adv=[0.0] * 4)
    batch.logprobs["reference"] = batch.logprobs["initial"]
    lp = leaf(batch.logprobs["old"])
    ref_all = DivergenceTerm(name="kl_ref", divergence="k3", anchor="reference", mask="all")
    with pytest.raises(ValueError, match="kl_ref.*rehearsal.*mask 'explore'"):
        policy_loss(lp, batch, PolicyLossConfig(), [ref_all], 0)
    fkl_all = DivergenceTerm(name="dph", divergence="forward_kl", anchor="initial", mask="all")
    with pytest.raises(ValueError, match="dph.*exploration.*mask 'rehearsal'"):
        policy_loss(lp, batch, PolicyLossConfig(), [fkl_all], 0)
    ref_explore = DivergenceTerm(name="kl_ref", divergence="k3", anchor="reference", mask="explore")
    policy_loss(lp, batch, PolicyLossConfig(), [ref_explore], 0)


# ============================================================================ micro-batches and ranks
@pytest.mark.parametrize("mode", MODES)
def test_policy_loss_microbatch_rank_equivalence(mode):
    B, R = 10, 6
    lengths = [6, 2, 5, 1, 3, 6, 4, 2, 5, 3]
    kind = [0, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    old, teacher, init = rand_lp(B, R, seed=1), rand_lp(B, R, seed=2), rand_lp(B, R, seed=3)
    batch = make_batch(lengths, kind=kind, adv=torch.randn(B, dtype=DT, generator=torch.Generator().manual_seed(0)),
                       rewards=[0, 1, 1, 0, 1, 1, 1, 0, 1, 1], old=old, teacher=teacher, initial=init)
    terms = [kd_term("incorrect"), rehearsal_term()]
    cfg = cfg_for(mode, dual_clip=3.0)
    lp = leaf(old + 0.3 * torch.randn(B, R, dtype=DT, generator=torch.Generator().manual_seed(1)))
    full, _ = policy_loss(lp, batch, cfg, terms, 0)
    g_full = grad_of(full, lp)

    world = 2
    ranks = [[[0, 1, 2], [3]], [[4, 5, 6], [7, 8, 9]]]  # rank -> micro-batches; rank 1 has no KD rows
    per_rank = [loss_totals(batch.select(sum(micro, [])), terms, world_size=world) for micro in ranks]
    keys, packed = pack_totals(per_rank[0])
    totals = unpack_totals(keys, packed + pack_totals(per_rank[1])[1], world)  # the all-reduce
    assert totals["policy"].seqs == 7 and totals["kd"].seqs == 3 and totals["rehearsal"].seqs == 3

    total = 0.0
    for micro in ranks:
        for rows in micro:
            loss, _ = policy_loss(lp[rows], batch.select(rows), cfg, terms, 0, totals=totals)
            total = total + loss / world  # grads summed over micro-batches, averaged over ranks
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_of(total, lp), g_full, rtol=1e-10, atol=1e-15)


def test_totals_mapping_required():
    batch = make_batch([2], adv=[1.0], old=rand_lp(1, 2))
    with pytest.raises(TypeError, match="loss_totals"):
        policy_loss(leaf(rand_lp(1, 2)), batch, PolicyLossConfig(), [], 0, totals=LossTotals(2, 1))
    with pytest.raises(KeyError, match="'kd'"):
        policy_loss(leaf(rand_lp(1, 2)), make_batch([2], adv=[1.0], old=rand_lp(1, 2), teacher=rand_lp(1, 2)),
                    PolicyLossConfig(), [kd_term()], 0, totals={"policy": LossTotals(2, 1)})


# ============================================================================ config errors
def test_config_errors():
    with pytest.raises(ValueError, match="dual_clip"):
        PolicyLossConfig(dual_clip=1.0)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        PolicyLossConfig(agg="mean")
    with pytest.raises(ValueError, match="norm_len"):
        PolicyLossConfig(agg="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="eps_low"):
        PolicyLossConfig(eps_low=1.0)
    # Full divergences build (they train from the logits and the teacher's top-k); the batch-wise
    # sinkhorn too, but its dense-only top_k param is refused by name.
    assert DivergenceTerm(name="x", divergence="full_forward_kl", anchor="teacher").full
    sinkd = DivergenceTerm(name="x", divergence="sinkhorn", anchor="teacher")
    assert sinkd.full and sinkd.batchwise
    assert not DivergenceTerm(name="x", divergence="full_jsd", anchor="teacher").batchwise
    with pytest.raises(ValueError, match="divergence term 'x': 'sinkhorn': param top_k is for the dense call only"):
        DivergenceTerm(name="x", divergence="sinkhorn", anchor="teacher", params={"top_k": 4})
    with pytest.raises(ValueError, match="beta"):
        DivergenceTerm(name="x", divergence="full_jsd", anchor="teacher", params={"beta": 2.0})
    with pytest.raises(ValueError, match="unknown mask 'wrong'"):
        DivergenceTerm(name="x", divergence="k2", anchor="teacher", mask="wrong")
    with pytest.raises(ValueError, match="reserved"):
        DivergenceTerm(name="policy", divergence="k2", anchor="teacher")
    with pytest.raises(ValueError, match="alpha"):
        DivergenceTerm(name="x", divergence="alpha", anchor="initial", params={"alpha": 2.0})


def test_duplicate_terms_and_missing_roles():
    batch = make_batch([2], adv=[1.0], old=rand_lp(1, 2))
    lp = leaf(rand_lp(1, 2))
    with pytest.raises(ValueError, match="two divergence terms are named 'kd'"):
        policy_loss(lp, batch, PolicyLossConfig(), [kd_term(), kd_term()], 0)
    with pytest.raises(ValueError, match="no 'teacher' role"):
        policy_loss(lp, batch, PolicyLossConfig(), [kd_term()], 0)
    with pytest.raises(ValueError, match="no 'old' role"):
        policy_loss(lp, make_batch([2], adv=[1.0]), PolicyLossConfig(), [], 0)
    with pytest.raises(ValueError, match="advantages is None"):
        policy_loss(lp, make_batch([2], old=rand_lp(1, 2)), PolicyLossConfig(), [], 0)
    with pytest.raises(ValueError, match="bad mask_params"):
        policy_loss(lp, make_batch([2], adv=[1.0], old=rand_lp(1, 2), teacher=rand_lp(1, 2)), PolicyLossConfig(),
                    [kd_term("all", correct_threshold=1.0)], 0)


def test_term_from_config():
    cfg = DivergenceTermConfig(name="kd", divergence="k2", anchor="teacher", mask="incorrect",
                               mask_params={"correct_threshold": 0.5},
                               coef=CoefConfig(kind="linear", start=5e-3, slope=5e-5, floor=1e-3))
    term = DivergenceTerm.from_config(cfg)
    assert term.coef(80) == pytest.approx(1e-3) and term.mask_params == {"correct_threshold": 0.5}
    assert term.samples == "policy"


# ============================================================================ schedules
def test_kdrl_linear_schedule():
    s = CoefSchedule(kind="linear", start=5e-3, slope=5e-5, floor=1e-3)
    assert s(0) == pytest.approx(5e-3, abs=1e-12)
    assert s(40) == pytest.approx(3e-3, abs=1e-12)
    assert s(80) == pytest.approx(1e-3, abs=1e-12)
    assert s(1000) == 1e-3
    assert CoefSchedule.from_config(CoefConfig(kind="linear", start=5e-3, slope=5e-5, floor=1e-3))(80) == \
        pytest.approx(1e-3, abs=1e-12)


def test_constant_schedule_and_errors():
    assert CoefSchedule(value=0.04)(12345) == 0.04
    assert CoefSchedule.from_config({"kind": "constant", "value": 0.1})(3) == 0.1
    with pytest.raises(ValueError, match="unknown coefficient schedule kind 'cosine'"):
        CoefSchedule(kind="cosine")
    with pytest.raises(ValueError, match="step must be >= 0"):
        CoefSchedule(value=1.0)(-1)


def test_new_schedule_kind_is_one_function():
    name = "test_halving"
    if name not in SCHEDULES:
        @SCHEDULES.register(name)
        def halving(step, *, value, every, **_):
            return value * 0.5 ** (step // every)
    s = CoefSchedule(kind=name, value=1.0, params={"every": 10})
    assert (s(0), s(10), s(25)) == (1.0, 0.5, 0.25)
    with pytest.raises(ValueError, match=f"'{name}'.*every"):
        CoefSchedule(kind=name, value=1.0)


# ============================================================================ masks
def test_sequence_masks():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0])
    groups = torch.tensor([4, 4, 9, 9, 2, 2])
    kind = torch.tensor([DATA_EXPLORE, DATA_EXPLORE, DATA_EXPLORE, DATA_REHEARSAL, DATA_REHEARSAL, DATA_EXPLORE])

    def m(name, **p):
        return masks.get(name)(rewards, groups, kind, **p).tolist()

    assert m("all") == [1] * 6
    assert m("explore") == [1, 1, 1, 0, 0, 1]
    assert m("rehearsal") == [0, 0, 0, 1, 1, 0]
    assert m("incorrect") == [0, 1, 1, 1, 1, 0]
    assert m("incorrect", correct_threshold=0.5) == [0, 1, 0, 1, 1, 0]
    assert m("group_no_correct") == [0, 0, 1, 1, 0, 0]
    assert m("group_no_correct", correct_threshold=0.5) == [0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="mask 'incorrect' needs rewards"):
        masks.get("incorrect")(None, groups, kind)


# ============================================================================ entropy
def test_token_entropy_matches_direct_and_chunks():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 3
    direct = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    for chunk in (1, 4, 7, 100):
        torch.testing.assert_close(token_entropy(logits, chunk_positions=chunk), direct)
    uniform = token_entropy(torch.zeros(1, 2, 8))
    torch.testing.assert_close(uniform, torch.full((1, 2), math.log(8)))


# ============================================================================ policy-dependent advantage (Nash-MP)
def nash_advantage(beta=0.1, eta=1.0):
    return PolicyAdvantage("nash_mp", params=(("beta", beta), ("eta", eta)),
                           logratios=(("seq_logratio_ref", "reference"), ("seq_logratio_snapshot", "snapshot")))


def nash_batch():
    lengths = [3, 1, 2, 4]
    ref, snap = rand_lp(4, 4, seed=1), rand_lp(4, 4, seed=2)
    return make_batch(lengths, rewards=[0.9, 0.2, 0.5, 0.7], old=snap.clone(), reference=ref, snapshot=snap)


def test_policy_advantage_is_recomputed_from_the_policy_being_updated():
    """The gradient is -A(pi) * rho * grad lp with A's log-ratios taken at the CURRENT log-probs,
    not at the sampling policy's: away from pi_k the proximal term is non-zero and eta acts."""
    batch = nash_batch()
    lp = leaf(batch.logprobs["snapshot"] + 0.3 * rand_lp(4, 4, seed=3))  # pi has moved away from pi_k
    mask = batch.response_mask
    beta, eta = 0.1, 0.5
    cfg = PolicyLossConfig(agg="seq-mean-token-sum", eps_low=0.99, eps_high=100.0, advantage=nash_advantage(beta, eta))
    loss, metrics = policy_loss(lp, batch, cfg, [], step=0)
    seq = lambda role: ((lp.detach() - batch.logprobs[role]) * mask).sum(-1)  # noqa: E731
    adv = batch.rewards - 0.5 - beta * seq("reference") - (beta / eta) * seq("snapshot")
    rho = (lp.detach() - batch.logprobs["old"]).exp()
    expect = -adv[:, None] * rho * mask / len(batch)
    torch.testing.assert_close(grad_of(loss, lp), expect, rtol=1e-10, atol=1e-14)
    assert metrics["actor/advantage_abs_mean"] > 0


def test_policy_advantage_eta_matters_only_away_from_the_snapshot():
    batch = nash_batch()
    grads = {}
    for where, shift in (("at_snapshot", 0.0), ("moved", 0.3)):
        for eta in (0.1, 10.0):
            lp = leaf(batch.logprobs["snapshot"] + shift * rand_lp(4, 4, seed=3))
            cfg = PolicyLossConfig(agg="seq-mean-token-sum", advantage=nash_advantage(0.1, eta))
            grads[where, eta] = grad_of(policy_loss(lp, batch, cfg, [], step=0)[0], lp)
    torch.testing.assert_close(grads["at_snapshot", 0.1], grads["at_snapshot", 10.0], rtol=0, atol=0)
    assert (grads["moved", 0.1] - grads["moved", 10.0]).abs().max() > 1e-3


def test_policy_advantage_per_micro_batch_equals_whole_batch():
    """Recomputed per micro-batch from its own rows, the advantage splits like any other loss."""
    batch = nash_batch()
    lp = leaf(batch.logprobs["snapshot"] + 0.3 * rand_lp(4, 4, seed=3))
    cfg = PolicyLossConfig(agg="seq-mean-token-sum", advantage=nash_advantage())
    whole = grad_of(policy_loss(lp, batch, cfg, [], step=0)[0], lp)
    totals = loss_totals(batch, [])
    parts = sum(policy_loss(lp[rows], batch.select(rows), cfg, [], step=0, totals=totals)[0] for rows in ([0, 2], [1, 3]))
    torch.testing.assert_close(grad_of(parts, lp), whole, rtol=1e-12, atol=1e-15)


def test_seq_mean_token_sum_gives_each_sequence_its_full_reinforce_gradient():
    """-A_i * grad log pi(y_i) / num_seqs whatever the length: no 1/len factor on the baseline."""
    old = rand_lp(2, 5)
    batch = make_batch([1, 5], adv=[0.5, 0.5], old=old)
    lp = leaf(old)
    g = grad_of(policy_loss(lp, batch, PolicyLossConfig(agg="seq-mean-token-sum"), [], step=0)[0], lp)
    torch.testing.assert_close(g, -0.5 * batch.response_mask / 2, rtol=0, atol=1e-15)


def test_old_from_forward_equals_a_separate_old_pass():
    """One update on the sampling weights: the detached forward IS the old policy, exactly."""
    lengths = [4, 2, 3, 1]
    lp0 = rand_lp(4, 4)
    explicit = make_batch(lengths, adv=[0.5, -1.0, 2.0, 0.0], old=lp0.clone(), reference=rand_lp(4, 4, seed=5))
    implicit = make_batch(lengths, adv=[0.5, -1.0, 2.0, 0.0], reference=explicit.logprobs["reference"])
    terms = [kd_term()]
    terms[0].anchor = "reference"
    a, b = leaf(lp0), leaf(lp0)
    la, ma = policy_loss(a, explicit, PolicyLossConfig(), terms, step=0)
    lb, mb = policy_loss(b, implicit, PolicyLossConfig(old_from_forward=True), terms, step=0)
    assert la.item() == lb.item() and ma == mb
    assert torch.equal(grad_of(la, a), grad_of(lb, b))
    with pytest.raises(ValueError, match="no 'old' role"):
        policy_loss(leaf(lp0), implicit, PolicyLossConfig(), terms, step=0)
