"""Exact checks of the SinKD Sinkhorn distance (rlplat/divergences/sinkhorn.py;
docs/algorithms.md#sinkd-batch-wise-sinkhorn-distance), against the Python Optimal Transport
library (POT, ``ot.sinkhorn2``) on the same cost and regularisation."""
from __future__ import annotations

import math
import os

import numpy as np
import ot
import pytest
import torch

import rlplat.divergences as D
from rlplat.config import ConfigError, load_config
from rlplat.divergences import sinkhorn as S
from rlplat.divergences.topk import teacher_topk

F64 = torch.float64
GRPO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "grpo.yaml")


def _inputs(seed: int, n: int = 6, vocab: int = 9, scale: float = 3.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g, dtype=F64) * scale).to(dtype).requires_grad_(True)
    anchor = (torch.randn(n, vocab, generator=g, dtype=F64) * scale).to(dtype)
    return logits, anchor


def _pot(logits, anchor, epsilon, temperature=2.0):
    """POT's entropic transport cost on the same W; ``reg`` is epsilon (K = exp(-M / reg))."""
    ps = torch.softmax(logits.detach().double() / temperature, -1).numpy()
    pt = torch.softmax(anchor.double() / temperature, -1).numpy()
    cost = np.abs(ps[:, None, :] - pt[None, :, :]).sum(-1)
    a = np.full(len(ps), 1.0 / len(ps))
    value = ot.sinkhorn2(a, a, cost, epsilon, method="sinkhorn_log", numItermax=100_000, stopThr=1e-14)
    plan = ot.sinkhorn(a, a, cost, epsilon, method="sinkhorn_log", numItermax=100_000, stopThr=1e-14)
    return float(value), torch.from_numpy(plan), torch.from_numpy(cost)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("epsilon", [0.1, 0.2, 0.5, 1.0])
def test_converged_value_matches_pot_sinkhorn2(seed, epsilon):
    n = (3, 5, 8, 6, 4)[seed]
    logits, anchor = _inputs(seed, n=n, vocab=(5, 11, 9, 7, 30)[seed])
    got = D.get("sinkhorn", epsilon=epsilon, iters=2000)(logits, anchor)
    ref, plan, cost = _pot(logits, anchor, epsilon)
    assert got.shape == (n,)
    assert abs(got.sum().item() - ref) < 1e-4
    # and the same plan, hence the same split over rows
    ps, pt = torch.softmax(logits.detach() / 2, -1), torch.softmax(anchor / 2, -1)
    torch.testing.assert_close(S.l1_cost(ps, pt), cost, atol=1e-12, rtol=0)
    mine = S.sinkhorn_plan(cost, epsilon, 2000)
    torch.testing.assert_close(mine, plan, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.detach(), (plan * cost).sum(-1), atol=1e-5, rtol=0)


def test_top_k_equal_to_the_vocabulary_is_the_full_cost_and_smaller_k_bounded():
    """k = V: the top-k cost is the full L1 cost. k < V: merging the tail into one coordinate can
    only lower an L1 distance (triangle inequality), by at most 2 min(S_tail, T_tail)."""
    logits, anchor = _inputs(7, n=5, vocab=12)
    student = torch.log_softmax(logits.detach() / 2, -1)
    full = S.l1_cost(student.exp(), torch.softmax(anchor / 2, -1))
    torch.testing.assert_close(S.l1_cost_topk(student, teacher_topk(anchor, 12, 2.0)), full, atol=1e-12, rtol=0)
    for k in (1, 4, 11):
        teacher = teacher_topk(anchor, k, 2.0)
        approx = S.l1_cost_topk(student, teacher)
        s_tail = 1 - student.exp()[:, teacher.ids].sum(-1)  # [n, m]
        slack = 2 * torch.minimum(s_tail, teacher.tail_logp.exp()[None, :])
        assert (approx <= full + 1e-12).all() and (full - approx <= slack + 1e-12).all()
    fn_full, fn_top = D.get("sinkhorn", iters=50), D.get("sinkhorn", iters=50, top_k=12)
    torch.testing.assert_close(fn_top(logits, anchor), fn_full(logits, anchor), atol=1e-12, rtol=0)
    # the top-k entry point from a teacher TopK is the registered top_k path
    via_topk = S.sinkhorn_topk(logits, teacher_topk(anchor, 4, 2.0), 0.1, 50, 2.0)
    torch.testing.assert_close(via_topk, D.get("sinkhorn", iters=50, top_k=4)(logits, anchor), atol=0, rtol=0)


@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("iters", [1, 3, 20, 200])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nonnegative_finite_values_and_gradients_at_any_iteration_count(iters, dtype, top_k):
    """Few iterations are still finite; near-one-hot and near-disjoint rows (logits up to +-60)
    too, in float32 (where a plain K = exp(-W/epsilon) would underflow to e^-20 ... and back)."""
    for seed, scale in ((0, 1.0), (1, 5.0), (2, 60.0)):
        logits, anchor = _inputs(seed, n=7, vocab=10, scale=scale, dtype=dtype)
        values = D.get("sinkhorn", iters=iters, top_k=top_k)(logits, anchor)
        assert values.dtype == dtype and torch.isfinite(values).all() and (values >= 0).all()
        (g,) = torch.autograd.grad(values.sum(), logits)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("iters", [1, 5, 20])
def test_rows_hold_the_marginal_and_values_sum_to_the_transport_cost(iters):
    logits, anchor = _inputs(3, n=6)
    ps, pt = torch.softmax(logits.detach() / 2, -1), torch.softmax(anchor / 2, -1)
    cost = S.l1_cost(ps, pt)
    plan = S.sinkhorn_plan(cost, 0.1, iters)
    # the last half-step is the row scaling: rows carry exactly 1/n after any number of rounds
    torch.testing.assert_close(plan.sum(-1), torch.full((6,), 1 / 6, dtype=F64), atol=1e-14, rtol=0)
    values = D.get("sinkhorn", iters=iters)(logits, anchor)
    torch.testing.assert_close(values.sum(), (plan * cost).sum(), atol=1e-14, rtol=0)
    torch.testing.assert_close(values, (plan * cost).sum(-1), atol=1e-14, rtol=0)


def test_gradient_through_the_unrolled_iterations_matches_finite_differences():
    logits, anchor = _inputs(4, n=4, vocab=5, scale=1.5)
    for top_k in (None, 3):
        fn = D.get("sinkhorn", epsilon=0.2, iters=6, top_k=top_k)
        assert torch.autograd.gradcheck(lambda z: fn(z, anchor), (logits,), eps=1e-6, atol=1e-7)


def test_defaults_temperature_and_the_teacher_is_detached():
    assert D.info("sinkhorn") == "full"
    assert D.params("sinkhorn") == {"epsilon": 0.1, "iters": 20, "temperature": 2.0, "top_k": None}
    logits, anchor = _inputs(5, n=6)
    anchor = anchor.clone().requires_grad_(True)
    default = D.get("sinkhorn")(logits, anchor)
    explicit = S.sinkhorn_rows(
        S.l1_cost(torch.softmax(logits / 2, -1), torch.softmax(anchor.detach() / 2, -1)), 0.1, 20)
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)
    t1 = D.get("sinkhorn", temperature=1.0)(logits, anchor)
    assert (t1 - default).abs().max() > 1e-3
    default.sum().backward()
    assert anchor.grad is None and logits.grad is not None


def test_shapes_one_position_and_self_distance():
    fn = D.get("sinkhorn", iters=100)
    logits, anchor = _inputs(6, n=6)
    lead = fn(logits.reshape(2, 3, -1), anchor.reshape(2, 3, -1))
    assert lead.shape == (2, 3)
    torch.testing.assert_close(lead.reshape(-1), fn(logits, anchor), atol=0, rtol=0)
    one = fn(logits[:1], anchor[:1])
    ps, pt = torch.softmax(logits[:1] / 2, -1), torch.softmax(anchor[:1] / 2, -1)
    torch.testing.assert_close(one, (ps - pt).abs().sum(-1), atol=1e-14, rtol=0)  # n = 1: all mass moves to j = 1
    assert fn(torch.zeros(0, 9, dtype=F64), torch.zeros(0, 9, dtype=F64)).shape == (0,)
    # Entropic blur: equal student and teacher are not at distance 0 (mass also crosses to other
    # positions), but the plan stays near the diagonal when off-diagonal costs dwarf epsilon.
    same = fn(anchor, anchor).sum().item()
    assert 0 < same < 0.1 * fn(logits, anchor).sum().item()


def test_validation_treats_sinkhorn_as_a_full_distribution_divergence():
    with pytest.raises(ConfigError) as err:
        load_config(GRPO, ["algorithm.divergences.0.divergence=sinkhorn"])
    assert "full-distribution divergence" in str(err.value)
    # On the teacher, with its top-k sent, it is a loss term (computed per micro-batch).
    kdrl = os.path.join(os.path.dirname(GRPO), "kdrl_full.yaml")
    cfg = load_config(kdrl, ["algorithm.divergences.0.divergence=sinkhorn"])
    assert cfg.algorithm.divergences[0].divergence == "sinkhorn"
    # Without the teacher's top-k, or with the dense-only top_k param, it is refused, naming the key.
    with pytest.raises(ConfigError, match=r"roles\.teacher\.top_k_logits > 0"):
        load_config(kdrl, ["algorithm.divergences.0.divergence=sinkhorn", "roles.teacher.top_k_logits=0"])
    with pytest.raises(ConfigError, match=r"^algorithm\.divergences\[0\]\.params: 'sinkhorn': param top_k is for the "
                                          r"dense call only.*roles\.teacher\.top_k_logits"):
        load_config(kdrl, ["algorithm.divergences.0.divergence=sinkhorn", "algorithm.divergences.0.params={top_k: 4}"])
    with pytest.raises(ConfigError, match=r"params: divergence 'sinkhorn' got unknown param\(s\) chunk_size"):
        load_config(kdrl, ["algorithm.divergences.0.divergence=sinkhorn", "algorithm.divergences.0.params={chunk_size: 4}"])
    with pytest.raises(ConfigError, match=r"params: divergence 'sinkhorn': param epsilon"):
        load_config(kdrl, ["algorithm.divergences.0.divergence=sinkhorn", "algorithm.divergences.0.params={epsilon: 0}"])


@pytest.mark.parametrize(
    "params,param",
    [({"epsilon": 0.0}, "epsilon"), ({"epsilon": -1.0}, "epsilon"), ({"epsilon": float("inf")}, "epsilon"),
     ({"iters": 0}, "iters"), ({"iters": 2.5}, "iters"), ({"iters": True}, "iters"),
     ({"temperature": 0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_k": 1.5}, "top_k"),
     ({"reg": 0.1}, "reg")],
)
def test_bad_params_raise_naming_the_param(params, param):
    with pytest.raises(ValueError, match=param):
        D.get("sinkhorn", **params)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        D.get("sinkhorn")(torch.zeros(3, 5), torch.zeros(3, 6))
    assert math.isfinite(D.get("sinkhorn")(torch.zeros(3, 5), torch.zeros(3, 5)).sum().item())


# ============================================================================ SinKD as a loss term
# docs/algorithms.md#sinkd-batch-wise-sinkhorn-distance: the term transports the masked response
# positions of each micro-batch together; value i = n x row i of P*W (mean over positions = <P, W>).


def _term_case(seed=1, vocab=11, k=None, lengths=(5, 2, 4), rewards=None):
    from tests.test_distill import make

    return make(list(lengths), vocab=vocab, k=k, seed=seed, rewards=rewards)


def _loss(batch, logits, agg="token-mean", mask="all", **params):
    from rlplat.losses import PolicyLossConfig, policy_loss
    from rlplat.modeling import token_logprobs
    from tests.test_distill import term

    logp = token_logprobs(logits, batch.response_ids) * batch.response_mask
    return policy_loss(logp, batch, PolicyLossConfig(surrogate=False, agg=agg), [term("sinkhorn", params, mask=mask)],
                       step=0, logits=logits)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("mask,params", [("all", {}), ("incorrect", {"temperature": 1.0, "epsilon": 0.2, "iters": 7})])
def test_sinkhorn_term_value_and_gradient_equal_the_registered_function_at_k_equal_v(agg, mask, params):
    """k = V: through policy_loss, the term's loss and its gradient w.r.t. the logits equal the
    registered dense ``sinkhorn`` on the same gathered positions (its row values x n, aggregated
    by hand); padding and rows outside the mask get exactly no gradient; values in [0, 2]."""
    from tests.test_distill import hand_agg

    batch, logits, teacher = _term_case(rewards=[1.0, 0.0, 0.0])
    loss, metrics = _loss(batch, logits, agg, mask, **params)
    (grad,) = torch.autograd.grad(loss, logits)

    tok = batch.response_mask * (torch.tensor([0.0, 1, 1], dtype=F64)[:, None] if mask == "incorrect" else 1)
    on = tok > 0
    rows = D.get("sinkhorn", **params)(logits[on], teacher[on]) * int(on.sum())
    values = torch.zeros_like(tok).masked_scatter(on, rows)
    want = 0.3 * hand_agg(values, tok, agg)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad, want_grad, atol=1e-12, rtol=1e-12)
    assert torch.isfinite(grad).all() and grad[on].abs().sum() > 0 and (grad[~on] == 0).all()
    assert (rows >= 0).all() and (rows <= 2).all()
    # div/<term> is the mean over the term's positions: the Sinkhorn distance <P, W> of the micro-batch
    assert metrics["div/kd"] == pytest.approx(float(rows.detach().sum() / on.sum()), abs=1e-12)
    if agg == "token-mean":
        torch.testing.assert_close(loss, 0.3 * D.get("sinkhorn", **params)(logits[on], teacher[on]).sum(), atol=1e-12, rtol=0)


def test_sinkhorn_term_converges_to_pot_through_policy_loss():
    """At convergence (2000 rounds) the logged ``div/<term>`` is POT's ``ot.sinkhorn2`` on the gathered
    positions within 1e-4 (``_pot``, the pure function's reference, reused)."""
    batch, logits, teacher = _term_case(seed=4)
    _, metrics = _loss(batch, logits, iters=2000)
    on = batch.response_mask > 0
    ref, _, _ = _pot(logits[on], teacher[on], 0.1)
    assert abs(metrics["div/kd"] - ref) < 1e-4


def test_sinkhorn_term_unit_is_the_micro_batch():
    """Each call transports its own masked positions: a micro-batch's values are the registered
    function on that micro-batch's positions alone, not on the whole batch's (the value depends on
    which positions share a micro-batch, as the paper's does on its batch)."""
    batch, logits, teacher = _term_case(seed=5, lengths=(4, 3, 5, 2))
    from rlplat.losses import full_term_values
    from tests.test_distill import term

    kd = term("sinkhorn", {})
    idx = [0, 2]
    part = batch.select(idx)
    on = part.response_mask > 0
    got = full_term_values(kd, logits[idx], part, on)
    want = D.get("sinkhorn")(logits[idx][on], teacher[idx][on]) * int(on.sum())
    torch.testing.assert_close(got[on], want, atol=1e-12, rtol=0)
    assert (got[~on] == 0).all()
    whole_on = batch.response_mask > 0
    whole = full_term_values(kd, logits, batch, whole_on)
    assert (whole[idx][on] - got[on]).abs().max() > 1e-6  # other positions in the batch change the plan


def test_soften_topk_is_exact_on_the_ids_and_underestimates_the_tail():
    """Softening the rollout-temperature top-k by T: exact at k = V (``teacher_topk`` at temperature
    T); at k < V the k ids keep their exact relative masses, and for T > 1 the tail is
    under-estimated (it is softened as one token); T = 1 changes nothing."""
    _, anchor = _inputs(8, n=5, vocab=13)
    for T in (2.0, 0.5):
        exact = teacher_topk(anchor, 13, T)
        soft = S.soften_topk(teacher_topk(anchor, 13, 1.0), T)
        torch.testing.assert_close(soft.logp, exact.logp, atol=1e-12, rtol=0)
        assert (soft.tail_logp == float("-inf")).all()
    top, exact = teacher_topk(anchor, 4, 1.0), teacher_topk(anchor, 4, 2.0)
    soft = S.soften_topk(top, 2.0)
    torch.testing.assert_close(soft.ids, exact.ids)
    torch.testing.assert_close(soft.logp - soft.logp[:, :1], exact.logp - exact.logp[:, :1], atol=1e-12, rtol=0)
    assert (soft.tail_logp < exact.tail_logp).all() and (soft.logp > exact.logp).all()
    torch.testing.assert_close(torch.cat([soft.logp, soft.tail_logp[:, None]], -1).logsumexp(-1),
                               torch.zeros(5, dtype=F64), atol=1e-12, rtol=0)
    same = S.soften_topk(top, 1.0)
    torch.testing.assert_close(same.logp, top.logp, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [4, 11])
def test_sinkhorn_term_with_padding_zeros_and_half_precision_logits_stays_finite(k):
    """Zero (padding) teacher entries never reach the transport (only masked positions are
    gathered); bf16 logits are computed in float32; k < V uses the tail bucket."""
    batch, logits, _ = _term_case(seed=6, k=k)
    half = logits.detach().to(torch.bfloat16).requires_grad_(True)
    loss, metrics = _loss(batch, half)
    (grad,) = torch.autograd.grad(loss.float(), half)
    assert math.isfinite(loss.item()) and math.isfinite(metrics["div/kd"]) and 0 < metrics["div/kd"] <= 2
    assert torch.isfinite(grad.float()).all() and (grad[batch.response_mask == 0] == 0).all()


def test_the_batchwise_distance_does_not_pin_a_position_to_its_own_teacher_position():
    """Uniform marginals: permuting the student's n positions permutes the plan's rows, so the
    distance <P, W> is unchanged (it matches the student's set of distributions to the teacher's
    set, not position i to position i), while a per-position divergence changes. Why SinKD can
    move a position's distribution towards another position's teacher (docs/algorithms.md)."""
    logits, anchor = _inputs(21, n=7, vocab=12)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    fn = D.get("sinkhorn", iters=50)
    same = fn(logits[perm], anchor).sum()
    torch.testing.assert_close(same, fn(logits, anchor).sum(), atol=1e-12, rtol=0)
    torch.testing.assert_close(fn(anchor[perm], anchor).sum(), fn(anchor, anchor).sum(), atol=1e-12, rtol=0)
    kl = D.get("full_reverse_kl")
    assert (kl(logits[perm], anchor).sum() - kl(logits, anchor).sum()).abs() > 0.1
