"""``algorithm.loss_type`` (ppo | gspo | cispo) and ``algorithm.entropy_coef`` (issue 34, item 3;
docs/algorithms.md#loss-types-gspo-and-cispo and #entropy-bonus): values and autograd gradients against
the papers' formulas on small ragged batches, the properties /work/shared/ALGORITHMS.md section 10
lists, the entropy bonus, how each reaches the trainer's loss, and the config refusals."""
import math
import os
from types import SimpleNamespace

import pytest
import torch

from rlplat import algorithms
from rlplat import losses as L
from rlplat.batch import Batch
from rlplat.config import ConfigError, RunConfig, load_config
from rlplat.losses import (
    LOSS_TYPES,
    PolicyLossConfig,
    loss_totals,
    pack_totals,
    policy_loss,
    token_entropy,
    unpack_totals,
)
from rlplat.rollout_correction import RolloutCorrection

DT = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def make_batch(lengths, R=None, adv=None, kind=None, **logprobs):
    B, R = len(lengths), R or max(lengths)
    mask = torch.zeros(B, R, dtype=DT)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return Batch(prompt_ids=torch.ones(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
                 response_ids=torch.ones(B, R, dtype=torch.long), response_mask=mask, group_ids=torch.arange(B),
                 logprobs=logprobs, advantages=None if adv is None else torch.as_tensor(adv, dtype=DT),
                 kind=None if kind is None else torch.as_tensor(kind))


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def grad_of(loss, x):
    return torch.autograd.grad(loss, x)[0]


def agg_weights(mask, mode, norm_len=8):
    """d loss / d (per-token value) of each aggregation mode, by hand."""
    lens, seqs = mask.sum(1, keepdim=True), (mask.sum(1) > 0).sum()
    return {"token-mean": mask / mask.sum(), "seq-mean-token-mean": mask / lens.clamp(min=1) / seqs,
            "seq-mean-token-sum": mask / seqs, "seq-mean-token-sum-norm": mask / norm_len / seqs}[mode]


# Ragged batch: lengths 3, 1, 4, 2; per-token log-ratios lp - lp_old chosen so that with a clip range
# of 0.1 row 0 is clipped above (A > 0), row 1 below (A < 0), row 2 sits inside, row 3 is above the
# range with A < 0 (not clipped: the ratio moves against its advantage). Padding holds garbage.
LENGTHS = [3, 1, 4, 2]
ADV = [1.5, -0.5, 2.0, -1.0]
LOG_RATIO = torch.tensor([[0.3, 0.2, 0.1, 0.0],   # mean 0.2 -> s = 1.221 > 1.1
                          [-0.4, 0.0, 0.0, 0.0],  # s = 0.670 < 0.9
                          [0.05, -0.1, 0.02, -0.01],  # mean -0.01 -> s = 0.990
                          [0.5, 0.1, 0.0, 0.0]], dtype=DT)  # mean 0.3 -> s = 1.350, A < 0
OLD = torch.tensor([[-1.0, -2.0, -0.5, 7.0], [-0.3, 1e4, -float("inf"), 3.0],
                    [-1.2, -0.7, -2.2, -0.9], [-0.1, -1.5, 9.0, -9.0]], dtype=DT)


def gspo_batch():
    batch = make_batch(LENGTHS, adv=ADV, old=OLD.clone())
    mask = batch.response_mask
    lp = torch.where(mask > 0, OLD + LOG_RATIO, torch.full_like(OLD, 50.0))  # garbage on padding
    return batch, lp


# ============================================================================ GSPO
def gspo_paper(lp, batch, eps_low, eps_high):
    """GSPO's objective as the paper writes it (arXiv 2507.18071, eq. 5-7), as a loss: the sequence
    ratio s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|) = exp(mean_t (lp - lp_old)) WITH its gradient (no
    stop-gradient), -1/G sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)."""
    mask = batch.response_mask
    old = torch.where(mask > 0, batch.logprobs["old"], torch.zeros_like(lp))
    cur = torch.where(mask > 0, lp, torch.zeros_like(lp))
    s = torch.exp(((cur - old) * mask).sum(-1) / mask.sum(-1))
    A = batch.advantages
    return -torch.minimum(s * A, s.clamp(1 - eps_low, 1 + eps_high) * A).mean(), s


def test_gspo_value_and_gradient_equal_the_papers_sequence_objective():
    batch, lp0 = gspo_batch()
    cfg = PolicyLossConfig(loss_type="gspo", eps_low=0.1, eps_high=0.1)
    lp, ref_lp = leaf(lp0), leaf(lp0)
    loss, metrics = policy_loss(lp, batch, cfg, [], step=0)
    want, s = gspo_paper(ref_lp, batch, 0.1, 0.1)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    g, g_ref = grad_of(loss, lp), grad_of(want, ref_lp)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-15)
    # Hand form: an unclipped row's tokens each get -A_i s_i / (L_i G); clipped rows get 0; padding 0.
    L = batch.response_mask.sum(-1)
    A = batch.advantages
    hand = torch.zeros_like(g)
    for i in (2, 3):
        hand[i, : LENGTHS[i]] = -A[i] * s[i].detach() / (L[i] * 4)
    torch.testing.assert_close(g, hand, rtol=1e-12, atol=0)
    assert (g[0] == 0).all() and (g[1] == 0).all()
    # metrics: token-weighted over the 10 tokens: clipped rows 0 and 1 hold 4 of them
    assert metrics["actor/clip_frac"] == pytest.approx(4 / 10)
    assert metrics["actor/ratio_mean"] == pytest.approx(float((s.detach() * L).sum() / L.sum()))


def test_gspo_defaults_are_the_papers_clip_range_and_aggregation():
    cfg = PolicyLossConfig(loss_type="gspo")
    assert (cfg.eps_low, cfg.eps_high, cfg.agg) == (3e-4, 4e-4, "seq-mean-token-mean")
    batch, lp0 = gspo_batch()
    lp, ref = leaf(lp0), leaf(lp0)
    loss, _ = policy_loss(lp, batch, cfg, [], step=0)
    want, _ = gspo_paper(ref, batch, 3e-4, 4e-4)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_of(loss, lp), grad_of(want, ref), rtol=1e-12, atol=1e-15)


def test_gspo_with_one_token_sequences_is_ppo():
    """ALGORITHMS.md section 10: GSPO with one-token sequences = PPO (value, gradient, metrics)."""
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 1, generator=gen, dtype=DT) * 2
    lp0 = old + torch.tensor([[0.3], [-0.3], [0.05], [0.2], [-0.25], [0.0]], dtype=DT)
    batch = make_batch([1] * 6, adv=[1.0, -1.0, 0.5, -2.0, 0.7, 1.3], old=old)
    for eps in (0.1, 0.2):
        a, b = leaf(lp0), leaf(lp0)
        la, ma = policy_loss(a, batch, PolicyLossConfig(loss_type="gspo", eps_low=eps, eps_high=eps), [], 0)
        lb, mb = policy_loss(b, batch, PolicyLossConfig(loss_type="ppo", eps_low=eps, eps_high=eps), [], 0)
        torch.testing.assert_close(la, lb, rtol=1e-14, atol=0)
        torch.testing.assert_close(grad_of(la, a), grad_of(lb, b), rtol=1e-14, atol=0)
        assert ma == mb


def test_gspo_sequence_ratio_sums_over_model_tokens_only():
    """ALGORITHMS.md sections 10 and 12: padding (any value, inf included) and rehearsal rows never
    enter a sequence ratio; the same rows trimmed give the same loss and gradient."""
    batch, lp0 = gspo_batch()
    lp = leaf(lp0)
    loss, _ = policy_loss(lp, batch, PolicyLossConfig(loss_type="gspo", eps_low=0.1, eps_high=0.1), [], 0)
    g = grad_of(loss, lp)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and (g[batch.response_mask == 0] == 0).all()
    clean_old = torch.where(batch.response_mask > 0, OLD, torch.zeros_like(OLD))
    clean = make_batch(LENGTHS, adv=ADV, old=clean_old)
    lp2 = leaf(torch.where(batch.response_mask > 0, lp0, torch.zeros_like(lp0)))
    loss2, _ = policy_loss(lp2, clean, PolicyLossConfig(loss_type="gspo", eps_low=0.1, eps_high=0.1), [], 0)
    torch.testing.assert_close(loss, loss2, rtol=0, atol=0)
    torch.testing.assert_close(g, grad_of(loss2, lp2), rtol=0, atol=0)
    # A rehearsal row gets no surrogate and its tokens are in no ratio.
    mixed = make_batch(LENGTHS + [3], adv=ADV + [9.0], kind=[0, 0, 0, 0, 1],
                       old=torch.cat([OLD, torch.zeros(1, 4, dtype=DT)]))
    lp3 = leaf(torch.cat([lp0, torch.full((1, 4), 5.0, dtype=DT)]))
    loss3, _ = policy_loss(lp3, mixed, PolicyLossConfig(loss_type="gspo", eps_low=0.1, eps_high=0.1), [], 0)
    torch.testing.assert_close(loss3, loss, rtol=1e-14, atol=0)
    assert (grad_of(loss3, lp3)[4] == 0).all()


def test_gspo_on_policy_gradient_is_grpos_seq_mean():
    """At s = 1 (one update on the sampling weights) GSPO's gradient is -A_i / (L_i G) per token, the
    PPO seq-mean-token-mean gradient at rho = 1: GSPO differs only off-policy."""
    batch, lp0 = gspo_batch()
    batch.logprobs["old"] = lp0.clone()
    a, b = leaf(lp0), leaf(lp0)
    la, _ = policy_loss(a, batch, PolicyLossConfig(loss_type="gspo"), [], 0)
    lb, _ = policy_loss(b, batch, PolicyLossConfig(loss_type="ppo", agg="seq-mean-token-mean"), [], 0)
    expect = -batch.advantages[:, None] * agg_weights(batch.response_mask, "seq-mean-token-mean")
    torch.testing.assert_close(grad_of(la, a), expect, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_of(lb, b), expect, rtol=1e-12, atol=1e-15)


# ============================================================================ CISPO
def cispo_paper(lp, batch, eps_low, eps_high):
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4-5) as a loss: -(1 / sum_i |o_i|) sum_{i,t}
    sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_i log pi(o_i,t), r_t = pi / pi_old of the token."""
    mask = batch.response_mask
    old = torch.where(mask > 0, batch.logprobs["old"], torch.zeros_like(lp))
    cur = torch.where(mask > 0, lp, torch.zeros_like(lp))
    r = torch.exp(cur - old).detach()
    w = r.clamp(1 - eps_low, 1 + eps_high)
    return -(w * batch.advantages[:, None] * cur * mask).sum() / mask.sum(), r, w


@pytest.mark.parametrize("eps_low,eps_high", [(1.0, 0.2), (0.2, 0.28), (10.0, 0.1)])
def test_cispo_value_and_gradient_equal_the_papers_objective(eps_low, eps_high):
    batch, lp0 = gspo_batch()
    cfg = PolicyLossConfig(loss_type="cispo", eps_low=eps_low, eps_high=eps_high)
    assert cfg.agg == "token-mean"  # the paper's normaliser, the loss type's default
    lp, ref = leaf(lp0), leaf(lp0)
    loss, metrics = policy_loss(lp, batch, cfg, [], step=0)
    want, r, w = cispo_paper(ref, batch, eps_low, eps_high)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    g = grad_of(loss, lp)
    torch.testing.assert_close(g, grad_of(want, ref), rtol=1e-12, atol=1e-15)
    mask = batch.response_mask
    # Hand form: every token keeps a gradient, -w_t A_i / N_tok; none is clipped away.
    torch.testing.assert_close(g, -w * batch.advantages[:, None] * mask / mask.sum(), rtol=1e-12, atol=0)
    assert (g[mask > 0] != 0).all()
    clipped = ((r < 1 - eps_low) | (r > 1 + eps_high)) & (mask > 0)
    assert clipped.any()
    assert metrics["actor/clip_frac"] == pytest.approx(float(clipped.sum() / mask.sum()))
    assert metrics["actor/ratio_mean"] == pytest.approx(float((r * mask).sum() / mask.sum()))


def test_cispo_default_has_no_lower_bound():
    """eps_low defaults to 1: the lower bound 1 - 1 = 0 never binds, a tiny ratio keeps its weight."""
    cfg = PolicyLossConfig(loss_type="cispo")
    assert (cfg.eps_low, cfg.eps_high) == (1.0, 0.2)
    old = torch.tensor([[-1.0, -1.0]], dtype=DT)
    batch = make_batch([2], adv=[1.0], old=old)
    lp = leaf(old + torch.tensor([[-3.0, 2.0]], dtype=DT))  # ratios e^-3 and e^2
    g = grad_of(policy_loss(lp, batch, cfg, [], 0)[0], lp)
    torch.testing.assert_close(g, torch.tensor([[-math.exp(-3.0) / 2, -1.2 / 2]], dtype=DT), rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_cispo_gradient_at_ratio_one_is_reinforce_with_the_same_normaliser(mode):
    """ALGORITHMS.md section 10: at rho = 1, CISPO's gradient = REINFORCE's, -A_i x the aggregation
    weight, which is also PPO's on-policy gradient."""
    batch, lp0 = gspo_batch()
    batch.logprobs["old"] = lp0.clone()
    a, b = leaf(lp0), leaf(lp0)
    kw = dict(agg=mode, norm_len=8 if mode == "seq-mean-token-sum-norm" else None)
    la, _ = policy_loss(a, batch, PolicyLossConfig(loss_type="cispo", **kw), [], 0)
    lb, _ = policy_loss(b, batch, PolicyLossConfig(loss_type="ppo", **kw), [], 0)
    expect = -batch.advantages[:, None] * agg_weights(batch.response_mask, mode)
    torch.testing.assert_close(grad_of(la, a), expect, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_of(lb, b), expect, rtol=1e-12, atol=1e-15)


# ============================================================================ with rollout correction
@pytest.mark.parametrize("loss_type", ["gspo", "cispo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_weight_multiplies_each_tokens_loss(loss_type, level):
    """Decoupled: the loss type's ratio is to pi_prox ("old"), the TIS weight min(pi_prox / mu, C)
    corrects mu -> pi_prox and multiplies each token's loss (and gradient)."""
    batch, lp0 = gspo_batch()
    mask = batch.response_mask
    noise = torch.tensor([[0.9, -0.2, 0.1, 0.0], [0.3, 0, 0, 0], [-0.5, 0.8, 0.1, 0.2], [0.0, 1.2, 0, 0]], dtype=DT)
    old = torch.where(mask > 0, OLD, torch.zeros_like(OLD))
    batch.logprobs["old"] = old
    batch.logprobs["rollout"] = (old - noise) * mask  # lp_prox - lp_mu = noise
    d = noise * mask if level == "token" else (noise * mask).sum(-1, keepdim=True).expand_as(noise)
    w = d.exp().clamp(max=2.0) * mask
    eps = dict(eps_low=0.1, eps_high=0.1)
    lp, ref = leaf(lp0), leaf(lp0)
    corrected = PolicyLossConfig(loss_type=loss_type, rollout_correction=RolloutCorrection("tis", level, 2.0), **eps)
    loss, _ = policy_loss(lp, batch, corrected, [], 0)
    # the loss type's own per-token losses without correction, each times its weight, aggregated alike
    on = mask > 0
    adv = torch.where(on, batch.advantages[:, None].expand_as(ref), torch.zeros_like(ref))
    values, _, _ = L.loss_type(loss_type).fn(ref, old, adv, on, 0.1, 0.1, None)
    want = L.aggregate(values * w, mask, corrected.agg)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_of(loss, lp), grad_of(want, ref), rtol=1e-12, atol=1e-15)


# ============================================================================ entropy bonus
def entropy_batch():
    lengths = [3, 1, 4, 2]
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 4, 7, generator=gen, dtype=DT) * 2
    old = torch.log_softmax(logits, -1)[..., 0]
    batch = make_batch(lengths, adv=[1.0, -0.5, 0.3, 0.0], kind=[0, 0, 1, 0], old=old.detach())
    return batch, logits


def direct_entropy(logits):
    return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_entropy_bonus_value_and_gradient(mode):
    """loss = surrogate - c * (token mean of H over the surrogate's tokens: explore rows only), whatever
    the surrogate's aggregation; its gradient is that of -c * mean H, through the logits."""
    batch, logits0 = entropy_batch()
    mask = batch.response_mask
    tok = mask * (batch.kind == 0).to(DT)[:, None]
    c = 0.05
    grads, losses = {}, {}
    for coef in (0.0, c):
        logits = leaf(logits0)
        lp = torch.log_softmax(logits, -1)[..., 0] * mask
        ent = token_entropy(logits) * mask  # with its gradient, as micro_batch_forward(entropy_grad=True)
        loss, metrics = policy_loss(lp, batch, PolicyLossConfig(agg=mode, entropy_coef=coef), [], 0, entropy=ent)
        losses[coef], grads[coef] = loss, grad_of(loss, logits)
        if coef:
            assert metrics["loss/entropy_bonus"] == pytest.approx(float((losses[c] - losses[0.0]).detach()), rel=1e-9)
            assert metrics["loss/total"] == pytest.approx(float(loss.detach()))
        else:
            assert "loss/entropy_bonus" not in metrics
    ref = leaf(logits0)
    bonus = -c * (direct_entropy(ref) * tok).sum() / tok.sum()
    # token_entropy works in float32 whatever the logits' dtype (its memory bound): float32 tolerances
    torch.testing.assert_close(losses[c] - losses[0.0], bonus, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grads[c] - grads[0.0], grad_of(bonus, ref), rtol=1e-5, atol=1e-8)
    assert (grads[c][2] == grads[0.0][2]).all()  # the rehearsal row gets no entropy gradient


def test_entropy_bonus_gradient_in_closed_form():
    """d H / d z_v = -p_v (log p_v + H): the bonus pushes each logit by c * p_v (log p_v + H) / N."""
    logits = leaf(torch.tensor([[[2.0, 0.0, -1.0, 0.5]]], dtype=DT))
    batch = make_batch([1], adv=[0.0], old=torch.zeros(1, 1, dtype=DT))
    lp = torch.log_softmax(logits, -1)[..., 1]
    loss, _ = policy_loss(lp, batch, PolicyLossConfig(entropy_coef=0.3), [], 0, entropy=token_entropy(logits))
    p = torch.softmax(logits.detach(), -1)
    H = -(p * p.log()).sum(-1, keepdim=True)
    # token_entropy works in float32: float32 tolerances
    torch.testing.assert_close(grad_of(loss, logits), 0.3 * p * (p.log() + H), rtol=1e-6, atol=1e-8)


def test_entropy_bonus_micro_batches_and_ranks_add_up():
    batch, logits0 = entropy_batch()
    mask = batch.response_mask
    cfg = PolicyLossConfig(loss_type="cispo", entropy_coef=0.1)
    logits = leaf(logits0)
    lp = torch.log_softmax(logits, -1)[..., 0] * mask
    ent = token_entropy(logits) * mask
    full, _ = policy_loss(lp, batch, cfg, [], 0, entropy=ent)
    g_full = grad_of(full, logits)
    logits = leaf(logits0)
    lp = torch.log_softmax(logits, -1)[..., 0] * mask
    ent = token_entropy(logits) * mask
    ranks = [[[0], [1, 2]], [[3]]]
    per_rank = [loss_totals(batch.select(sum(m, [])), [], 2) for m in ranks]
    keys, packed = pack_totals(per_rank[0])
    totals = unpack_totals(keys, packed + pack_totals(per_rank[1])[1], 2)
    total = sum(policy_loss(lp[rows], batch.select(rows), cfg, [], 0, totals=totals, entropy=ent[rows])[0] / 2
                for micro in ranks for rows in micro)
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_of(total, logits), g_full, rtol=1e-10, atol=1e-15)


def test_entropy_bonus_needs_the_entropy_with_its_gradient():
    batch, logits0 = entropy_batch()
    logits = leaf(logits0)
    lp = torch.log_softmax(logits, -1)[..., 0]
    cfg = PolicyLossConfig(entropy_coef=0.1)
    with pytest.raises(ValueError, match="needs the per-token entropy"):
        policy_loss(lp, batch, cfg, [], 0)
    with pytest.raises(ValueError, match="carries no gradient"):
        policy_loss(lp, batch, cfg, [], 0, entropy=token_entropy(logits).detach())
    with pytest.raises(ValueError, match="entropy_coef must be a finite number >= 0"):
        PolicyLossConfig(entropy_coef=-0.1)


class ToyLM(torch.nn.Module):
    def __init__(self, vocab=9):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 6)
        self.out = torch.nn.Linear(6, vocab)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.out(self.emb(input_ids)))


def test_the_trainers_forward_gives_the_entropy_with_its_gradient_when_the_loss_asks():
    """Where the trainer computes it: ``TrainerRank.train_mini_batch`` passes ``entropy_grad`` of the loss
    function (``PolicyLossFn``: ``entropy_coef > 0``) to ``micro_batch_forward``, whose one forward
    already has the logits: no second forward, the entropy from the same temperature-scaled logits."""
    from actors.trainer.rank import PolicyLossFn
    from rlplat.modeling import micro_batch_forward

    assert PolicyLossFn(PolicyLossConfig(entropy_coef=0.01), []).entropy_grad
    assert not PolicyLossFn(PolicyLossConfig(), []).entropy_grad
    model = ToyLM()
    batch = make_batch([3, 2], adv=[1.0, -1.0])
    batch.response_ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    batch.response_mask = batch.response_mask.float()
    fwd = micro_batch_forward(model, batch, temperature=0.7, with_entropy=True, entropy_grad=True)
    assert fwd.entropy.requires_grad
    torch.testing.assert_close(fwd.entropy, token_entropy(fwd.logits) * batch.response_mask)
    detached = micro_batch_forward(model, batch, temperature=0.7, with_entropy=True)
    assert not detached.entropy.requires_grad
    fn = PolicyLossFn(PolicyLossConfig(entropy_coef=0.5, old_from_forward=True), [])
    loss, metrics = fn(fwd.logp, batch, 0, None, fwd.entropy)
    params = list(model.parameters())
    with_bonus = torch.autograd.grad(loss, params)
    plain, _ = PolicyLossFn(PolicyLossConfig(old_from_forward=True), [])(
        micro_batch_forward(model, batch, temperature=0.7).logp, batch, 0, None)
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(with_bonus, torch.autograd.grad(plain, params)))
    assert metrics["loss/entropy_bonus"] < 0


# ============================================================================ registry and PolicyLossConfig
def test_loss_types_registry_and_config_rules():
    assert LOSS_TYPES.names() == ["cispo", "gspo", "ppo"]
    assert PolicyLossConfig().loss_type == "ppo" and (PolicyLossConfig().eps_low, PolicyLossConfig().eps_high) == (0.2, 0.2)
    with pytest.raises(ValueError, match="unknown loss type 'sapo'; registered: cispo, gspo, ppo"):
        PolicyLossConfig(loss_type="sapo")
    with pytest.raises(ValueError, match="eps_low must be in \\[0, 1\\) for loss type 'gspo', got 1.0"):
        PolicyLossConfig(loss_type="gspo", eps_low=1.0)
    assert PolicyLossConfig(loss_type="cispo", eps_low=10.0).eps_low == 10.0  # verl's example: no lower bound
    with pytest.raises(ValueError, match="dual_clip=3.0 bounds the loss of the PPO surrogate"):
        PolicyLossConfig(loss_type="cispo", dual_clip=3.0)
    with pytest.raises(ValueError, match="'gspo' is defined with the aggregation 'seq-mean-token-mean'"):
        PolicyLossConfig(loss_type="gspo", agg="token-mean")
    with pytest.raises(ValueError, match="token-level MIS"):
        PolicyLossConfig(loss_type="gspo", rollout_correction=RolloutCorrection("mis", "token", 2.0))
    PolicyLossConfig(loss_type="gspo", rollout_correction=RolloutCorrection("mis", "sequence", 2.0))
    PolicyLossConfig(loss_type="cispo", rollout_correction=RolloutCorrection("mis", "token", 2.0))


# ============================================================================ config: the keys act or are refused
@pytest.fixture
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def config(name="grpo"):
    return os.path.join(ROOT, "configs", f"{name}.yaml")


@pytest.mark.usefixtures("_in_tmp")
@pytest.mark.parametrize("name,loss_type,eps,agg,mini_batches", [
    ("gspo", "gspo", (3e-4, 4e-4), "seq-mean-token-mean", 4),
    ("cispo", "cispo", (1.0, 0.2), "token-mean", 4),
])
def test_shipped_configs_plan_their_loss_type(name, loss_type, eps, agg, mini_batches):
    cfg = load_config(config(name))
    plan = algorithms.get(cfg.algorithm.name).plan(cfg)
    loss = plan.loss
    assert (loss.loss_type, (loss.eps_low, loss.eps_high), loss.agg) == (loss_type, eps, agg)
    assert cfg.algorithm.mini_batches == mini_batches and not loss.old_from_forward  # off-policy updates: it acts
    # everything else is configs/grpo.yaml's
    grpo = load_config(config("grpo"))
    for key in ("name", "group_size", "advantage", "divergences", "dual_clip", "entropy_coef"):
        assert getattr(cfg.algorithm, key) == getattr(grpo.algorithm, key)
    assert (cfg.rollout, cfg.data, cfg.reward, cfg.model) == (grpo.rollout, grpo.data, grpo.reward, grpo.model)


@pytest.mark.usefixtures("_in_tmp")
def test_loss_type_defaults_come_from_the_loss_type_and_explicit_keys_win():
    assert RunConfig().algorithm.loss_type == "ppo" and RunConfig().algorithm.entropy_coef == 0.0
    plan = lambda *o: algorithms.get("grpo").plan(load_config(config(), list(o))).loss  # noqa: E731
    null = ["algorithm.eps_low=null", "algorithm.eps_high=null", "algorithm.loss_agg=null"]
    assert (lambda l: (l.eps_low, l.eps_high, l.agg))(plan(*null, "algorithm.loss_type=gspo")) == (3e-4, 4e-4, "seq-mean-token-mean")
    assert (lambda l: (l.eps_low, l.eps_high, l.agg))(plan(*null, "algorithm.loss_type=cispo")) == (1.0, 0.2, "token-mean")
    assert (lambda l: (l.eps_low, l.eps_high, l.agg))(plan(*null)) == (0.2, 0.2, "seq-mean-token-mean")
    l = plan("algorithm.loss_type=cispo", "algorithm.loss_agg=seq-mean-token-sum-norm", "algorithm.eps_high=4")  # noqa: E741
    assert (l.agg, l.eps_low, l.eps_high) == ("seq-mean-token-sum-norm", 0.2, 4.0)
    assert plan("algorithm.entropy_coef=0.001").entropy_coef == 0.001
    assert plan("algorithm.loss_type=gspo", "algorithm.rollout_correction.kind=mis",
                "algorithm.rollout_correction.level=sequence").loss_type == "gspo"


REFUSALS = [
    ("grpo", ["algorithm.loss_type=sapo"], ["algorithm.loss_type='sapo'", "not registered", "cispo", "gspo", "ppo"]),
    ("grpo", ["algorithm.loss_type=gspo", "algorithm.loss_agg=token-mean"],
     ["algorithm.loss_type='gspo'", "'seq-mean-token-mean'", "got 'token-mean'", "algorithm.loss_agg"]),
    ("grpo", ["algorithm.loss_type=gspo", "algorithm.dual_clip=3"], ["algorithm.loss_type='gspo'", "dual_clip=3.0"]),
    ("grpo", ["algorithm.loss_type=cispo", "algorithm.dual_clip=3"], ["algorithm.loss_type='cispo'", "dual_clip=3.0"]),
    ("grpo", ["algorithm.loss_type=gspo", "algorithm.rollout_correction.kind=mis"],
     ["algorithm.loss_type='gspo'", "token-level MIS", "algorithm.rollout_correction.level=sequence"]),
    ("grpo", ["algorithm.eps_low=1.0"], ["algorithm.loss_type='ppo'", "eps_low must be in [0, 1)", "got 1.0"]),
    ("grpo", ["algorithm.loss_type=cispo", "algorithm.eps_high=-1"], ["algorithm.loss_type='cispo'", "eps_high", "got -1.0"]),
    ("grpo", ["algorithm.entropy_coef=-0.01"], ["algorithm.entropy_coef=-0.01", ">= 0"]),
    ("grpo", ["algorithm.entropy_coef=.inf"], ["algorithm.entropy_coef=inf", "finite"]),
    ("nash_mp", ["algorithm.loss_type=cispo"], ["algorithm.loss_type='cispo'", "does not fit algorithm 'nash_mp'", "['ppo']"]),
    ("nash_omd", ["algorithm.loss_type=gspo"], ["algorithm.loss_type='gspo'", "does not fit algorithm 'nash_omd'"]),
    ("distill", ["algorithm.loss_type=gspo"], ["algorithm.loss_type is set", "'distill' does not use it"]),
    ("distill", ["algorithm.entropy_coef=0.01"], ["algorithm.entropy_coef is set", "'distill' does not use it"]),
    ("fdpo", ["algorithm.loss_type=cispo"], ["algorithm.loss_type is set", "'fdpo' does not use it"]),
    ("fdpo", ["algorithm.entropy_coef=0.01"], ["algorithm.entropy_coef is set", "'fdpo' does not use it"]),
]


@pytest.mark.usefixtures("_in_tmp")
@pytest.mark.parametrize("name,overrides,fragments", REFUSALS, ids=[" ".join(r[1]) for r in REFUSALS])
def test_loss_type_and_entropy_refusals_name_the_key_and_value(name, overrides, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(config(name), overrides)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


@pytest.mark.usefixtures("_in_tmp")
@pytest.mark.parametrize("name", ["kdrl", "dph_rl", "ctrl_bon"])
def test_other_surrogate_algorithms_accept_the_loss_types(name):
    for loss_type in ("gspo", "cispo"):
        overrides = [f"algorithm.loss_type={loss_type}", "algorithm.eps_low=null", "algorithm.eps_high=null",
                     "algorithm.loss_agg=null", "algorithm.entropy_coef=0.001"]
        cfg = load_config(config(name), overrides)
        loss = algorithms.get(cfg.algorithm.name).plan(cfg).loss
        assert loss.loss_type == loss_type and loss.entropy_coef == 0.001


@pytest.mark.usefixtures("_in_tmp")
@pytest.mark.parametrize("loss_type", ["ppo", "gspo", "cispo"])
def test_the_plans_loss_reaches_the_trainers_loss_function(loss_type):
    """The run's path: config -> plan.loss -> the trainer's ``resolve_loss((plan.loss, plan.terms))`` ->
    ``policy_loss`` with that loss type: off-policy, each gives its own formula's gradient."""
    from actors.trainer.rank import resolve_loss

    cfg = load_config(config(), [f"algorithm.loss_type={loss_type}", "algorithm.eps_low=0.1", "algorithm.eps_high=0.1",
                                 "algorithm.loss_agg=null", "algorithm.mini_batches=2", "algorithm.divergences=[]"])
    plan = algorithms.get("grpo").plan(cfg)
    fn = resolve_loss((plan.loss, list(plan.terms)))
    batch, lp0 = gspo_batch()
    lp, ref = leaf(lp0), leaf(lp0)
    loss, _ = fn(lp.float(), batch, 0, fn.totals(batch, 1))
    want = {"gspo": lambda: gspo_paper(ref, batch, 0.1, 0.1)[0], "cispo": lambda: cispo_paper(ref, batch, 0.1, 0.1)[0]}
    if loss_type == "ppo":
        mask = batch.response_mask
        rho = torch.exp(torch.where(mask > 0, ref - batch.logprobs["old"], torch.zeros_like(ref)))
        A = batch.advantages[:, None]
        per = torch.maximum(-A * rho, -A * rho.clamp(0.9, 1.1)) * mask
        expected = (per.sum(-1) / mask.sum(-1)).mean()
    else:
        expected = want[loss_type]()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_of(loss, lp), grad_of(expected, ref), rtol=1e-5, atol=1e-7)
