"""Advantage estimators (docs/algorithms.md#advantage-estimators and #nash-mp)."""
import math

import pytest
import torch

from rlplat import advantages

GROUP_ZERO_SUM = ["grpo", "dr_grpo", "rloo", "reinforce_pp"]
# reinforce_pp's sequence statistic keeps these group properties; the token one re-centres over the
# batch's tokens (OpenRLHF, verl) and is tested on its own below.
PARAMS = {"reinforce_pp": {"norm": "sequence"}}


def est(name):
    """Estimator ``name`` with the parameters under which the group properties hold."""
    fn = advantages.get(name)
    return lambda r, g, **kw: fn(r, g, **{**PARAMS.get(name, {}), **kw})


def test_registered_names():
    assert set(advantages.names()) >= {"grpo", "dr_grpo", "rloo", "reinforce_pp", "nash_mp"}
    with pytest.raises(KeyError, match="unknown advantage estimator 'nope'"):
        advantages.get("nope")


def test_hand_computed_group():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    g = torch.zeros(4, dtype=torch.long)
    # mean 0.25; unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    torch.testing.assert_close(advantages.get("grpo")(r, g, eps=0.0), torch.tensor([1.5, -0.5, -0.5, -0.5]))
    torch.testing.assert_close(advantages.get("dr_grpo")(r, g), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # leave-one-out: 1 - mean(0,0,0) = 1; 0 - mean(1,0,0) = -1/3
    torch.testing.assert_close(advantages.get("rloo")(r, g), torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    # single group: centred values divided by their population std sqrt(0.1875)
    expect = torch.tensor([0.75, -0.25, -0.25, -0.25]) / math.sqrt(0.1875)
    torch.testing.assert_close(advantages.get("reinforce_pp")(r, g, eps=0.0, norm="sequence"), expect)


def test_grpo_eps_default_is_small():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    a = advantages.get("grpo")(r, torch.zeros(4, dtype=torch.long))
    assert 1.5 * (1 - 1e-5) < a[0].item() < 1.5


@pytest.mark.parametrize("name", GROUP_ZERO_SUM)
def test_group_sums_are_zero(name):
    torch.manual_seed(0)
    r = torch.rand(24)
    g = torch.arange(24) % 3 * 7  # non-contiguous, interleaved ids 0, 7, 14
    a = est(name)(r, g)
    for gid in (0, 7, 14):
        assert abs(a[g == gid].sum().item()) < 1e-5
    assert a.abs().max() > 0.1  # not trivially zero


@pytest.mark.parametrize("name", GROUP_ZERO_SUM)
def test_identical_rewards_give_exact_zero(name):
    # the float32 mean of six copies of 1/997 differs from 1/997 in the last bit, so a naive
    # r - mean is not exactly 0 there
    same = torch.full((6,), 1 / 997)
    assert (same - same.mean() != 0).any()
    r = torch.cat([same, torch.tensor([1.0, 0.0, 0.7, 0.7, 0.7])])
    g = torch.tensor([0] * 6 + [1, 1, 2, 2, 2])
    a = est(name)(r, g)
    assert not torch.isnan(a).any()
    assert (a[g == 0] == 0).all() and (a[g == 2] == 0).all()
    assert (a[g == 1] != 0).all()


@pytest.mark.parametrize("name", GROUP_ZERO_SUM)
def test_whole_batch_identical_no_nan(name):
    a = est(name)(torch.ones(6), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert (a == 0).all()


def test_rloo_is_scaled_dr_grpo():
    torch.manual_seed(1)
    r = torch.rand(12)
    g = torch.arange(12) // 4
    torch.testing.assert_close(advantages.get("rloo")(r, g), advantages.get("dr_grpo")(r, g) * 4 / 3)


def test_estimators_are_permutation_equivariant():
    torch.manual_seed(2)
    r, g = torch.rand(12), torch.arange(12) // 3
    perm = torch.randperm(12)
    for name in GROUP_ZERO_SUM:
        fn = est(name)
        torch.testing.assert_close(fn(r, g)[perm], fn(r[perm], g[perm]))
    lengths = torch.randint(1, 9, (12,)).float()
    fn = advantages.get("reinforce_pp")
    torch.testing.assert_close(fn(r, g, response_lengths=lengths)[perm], fn(r[perm], g[perm], response_lengths=lengths[perm]))


def test_reinforce_pp_whitens_across_batch():
    torch.manual_seed(3)
    r = torch.rand(32)
    g = torch.arange(32) // 4
    a = advantages.get("reinforce_pp")(r, g, eps=0.0, norm="sequence")
    assert abs(a.mean().item()) < 1e-6
    assert abs(a.pow(2).mean().sqrt().item() - 1.0) < 1e-5


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_singleton_group_raises(name):
    with pytest.raises(ValueError, match=r"G >= 2.*\[5\]"):
        advantages.get(name)(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([3, 3, 5]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="non-finite"):
        advantages.get("grpo")(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="group_ids has shape"):
        advantages.get("dr_grpo")(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0]))


def test_nash_mp_hand_computed():
    win = torch.tensor([0.8, 0.3, 0.5])
    ref = torch.tensor([1.0, -2.0, 0.0], requires_grad=True)
    snap = torch.tensor([0.5, -1.0, 0.0], requires_grad=True)
    a = advantages.get("nash_mp")(win, torch.zeros(3, dtype=torch.long), seq_logratio_ref=ref,
                                  seq_logratio_snapshot=snap, beta=0.1, eta=0.5)
    # A = P - 1/2 - beta * ref - (beta / eta) * snap, beta / eta = 0.2
    # row 0: 0.8 - 0.5 - 0.1 - 0.1 = 0.1; row 1: 0.3 - 0.5 + 0.2 + 0.2 = 0.2; row 2: 0
    torch.testing.assert_close(a, torch.tensor([0.1, 0.2, 0.0]))
    assert not a.requires_grad  # both log-ratios are stop-gradient


def test_nash_mp_checks_arguments():
    fn = advantages.get("nash_mp")
    r, g = torch.tensor([0.5, 0.5]), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="seq_logratio_snapshot"):
        fn(r, g, seq_logratio_ref=torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(torch.tensor([1.5, 0.0]), g, seq_logratio_ref=torch.zeros(2), seq_logratio_snapshot=torch.zeros(2))
    with pytest.raises(ValueError, match="eta > 0"):
        fn(r, g, seq_logratio_ref=torch.zeros(2), seq_logratio_snapshot=torch.zeros(2), eta=0.0)


def test_seq_logratio():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 9.0]], requires_grad=True)
    anchor = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = advantages.seq_logratio(lp, anchor, mask)
    torch.testing.assert_close(out, torch.tensor([0.5 - 1.0 - 3.0, 1.0]))
    assert not out.requires_grad


# ----------------------------------------------------------------------------- reinforce_pp's statistic
# Hand case on ragged lengths: group 0 = rewards (1, 0, 0), centred (2/3, -1/3, -1/3); group 1 = (2, 2),
# all equal, centred (0, 0); response lengths (3, 1, 2, 4, 2), 12 tokens.
RPP_R = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0])
RPP_G = torch.tensor([0, 0, 0, 1, 1])
RPP_L = torch.tensor([3.0, 1.0, 2.0, 4.0, 2.0])


def test_reinforce_pp_sequence_statistic_hand_computed_on_ragged_lengths():
    # population std over the 5 rows: sqrt((4/9 + 1/9 + 1/9) / 5) = sqrt(2/15); lengths play no part
    a = advantages.get("reinforce_pp")(RPP_R, RPP_G, eps=0.0, norm="sequence", response_lengths=RPP_L)
    expect = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0]) * math.sqrt(15 / 2)
    torch.testing.assert_close(a, expect)
    assert (a[3:] == 0).all()  # all-equal group: exactly 0


def test_reinforce_pp_token_statistic_hand_computed_on_ragged_lengths():
    # token-weighted mean m = (3 * 2/3 - 1/3 - 2 * 1/3) / 12 = 1/12; deviations 7/12, -5/12, -5/12, -1/12, -1/12;
    # population variance over tokens = (3*49 + 25 + 2*25 + 4*1 + 2*1) / 144 / 12 = 19/144: A = dev * 12 / sqrt(19)
    expect = torch.tensor([7.0, -5.0, -5.0, -1.0, -1.0]) / math.sqrt(19)
    fn = advantages.get("reinforce_pp")
    torch.testing.assert_close(fn(RPP_R, RPP_G, response_lengths=RPP_L), expect)  # norm="token" is the default
    torch.testing.assert_close(fn(RPP_R, RPP_G, norm="token", response_lengths=RPP_L, eps=0.0), expect)
    # the two statistics differ on ragged lengths (here by 12% to 100% relative per row)
    seq = fn(RPP_R, RPP_G, norm="sequence")
    assert ((seq - expect).abs() / expect.abs()).max() > 0.5


def openrlhf_reference(rewards, group_ids, lengths, bessel=False):
    """OpenRLHF's ``compute_advantages_and_returns`` for ``reinforce_baseline`` (gamma 1, no KL in the
    reward), written on [B, R] tensors as there: group-centred reward on the last token, cumulative
    returns broadcast it to every response token, then a masked mean and (population) variance over
    all response tokens, ``(A - mean) * var.clamp(min=1e-8).rsqrt()``. ``bessel``: verl's
    ``masked_whiten`` instead (unbiased variance, ``rsqrt(var + 1e-8)``)."""
    R = int(lengths.max())
    mask = (torch.arange(R)[None, :] < lengths[:, None]).double()
    r = rewards.double()
    centred = r.clone()
    for gid in group_ids.unique():
        rows = group_ids == gid
        centred[rows] = r[rows] - r[rows].mean()
    returns = centred[:, None] * mask
    n = mask.sum()
    mean = (returns * mask).sum() / n
    var = ((returns - mean).pow(2) * mask).sum() / n
    if bessel:
        var = var * n / (n - 1)
        adv = (returns - mean) * torch.rsqrt(var + 1e-8)
    else:
        adv = (returns - mean) * var.clamp(min=1e-8).rsqrt()
    return adv, mask


def test_reinforce_pp_token_statistic_matches_openrlhf_per_token():
    """Random rewards and ragged lengths: every response token of row i carries exactly our A_i in
    OpenRLHF's per-token advantages; verl's masked_whiten differs only by Bessel's sqrt((n-1)/n)."""
    gen = torch.Generator().manual_seed(4)
    r = torch.rand(24, generator=gen, dtype=torch.float64)
    g = torch.arange(24) % 6
    lengths = torch.randint(1, 17, (24,), generator=gen).double()
    ours = advantages.get("reinforce_pp")(r, g, response_lengths=lengths)
    ref, mask = openrlhf_reference(r, g, lengths)
    torch.testing.assert_close(ref * mask, ours[:, None] * mask, rtol=1e-12, atol=1e-12)  # padding is never trained
    verl, _ = openrlhf_reference(r, g, lengths, bessel=True)
    n = lengths.sum()
    torch.testing.assert_close(verl * mask, ours[:, None] * mask * torch.sqrt((n - 1) / n), rtol=1e-6, atol=1e-9)


def test_reinforce_pp_token_statistic_whitens_over_tokens():
    gen = torch.Generator().manual_seed(5)
    r = torch.rand(32, generator=gen)
    g = torch.arange(32) // 4
    lengths = torch.randint(0, 9, (32,), generator=gen).float()  # includes empty rows
    a = advantages.get("reinforce_pp")(r, g, response_lengths=lengths).double()
    w = lengths.double()
    assert abs((w * a).sum() / w.sum()) < 1e-6  # token-weighted mean 0
    assert abs((w * a.pow(2)).sum() / w.sum() - 1.0) < 1e-5  # token-weighted variance 1


def test_reinforce_pp_token_statistic_with_equal_lengths_is_the_sequence_one():
    gen = torch.Generator().manual_seed(6)
    r = torch.rand(16, generator=gen, dtype=torch.float64)
    g = torch.arange(16) // 4
    fn = advantages.get("reinforce_pp")
    torch.testing.assert_close(fn(r, g, eps=0.0, response_lengths=torch.full((16,), 5.0)), fn(r, g, eps=0.0, norm="sequence"))


def test_reinforce_pp_token_statistic_recentres_all_equal_groups_and_never_nans():
    fn = advantages.get("reinforce_pp")
    a = fn(RPP_R, RPP_G, response_lengths=RPP_L)
    assert (a[3:] != 0).all() and a[3] == a[4]  # the batch's shift -m * rstd, as OpenRLHF and verl
    same = fn(torch.ones(6), torch.tensor([0, 0, 1, 1, 2, 2]), response_lengths=torch.tensor([1.0, 2, 3, 4, 5, 6]))
    assert (same == 0).all()  # whole batch identical: 0 * rsqrt(1e-8), no NaN
    empty = fn(RPP_R, RPP_G, response_lengths=torch.zeros(5))
    assert (empty == 0).all()


def test_reinforce_pp_statistic_errors():
    fn = advantages.get("reinforce_pp")
    with pytest.raises(ValueError, match="norm='token' needs response_lengths"):
        fn(RPP_R, RPP_G)
    with pytest.raises(ValueError, match=r"response_lengths has shape \(4,\)"):
        fn(RPP_R, RPP_G, response_lengths=torch.ones(4))
    with pytest.raises(ValueError, match=">= 0"):
        fn(RPP_R, RPP_G, response_lengths=-RPP_L)
    with pytest.raises(ValueError, match="norm='batch' is not one of \\['token', 'sequence'\\]"):
        fn(RPP_R, RPP_G, norm="batch", response_lengths=RPP_L)


def test_for_batch_hands_the_response_lengths_to_estimators_that_take_them():
    """The runtime's call (``StepContext.compute_advantages``): token counts from the batch's mask."""
    from rlplat.batch import Batch

    R = int(RPP_L.max())
    mask = (torch.arange(R)[None, :] < RPP_L[:, None]).float()
    batch = Batch(prompt_ids=torch.ones(5, 1, dtype=torch.long), prompt_mask=torch.ones(5, 1, dtype=torch.long),
                  response_ids=torch.ones(5, R, dtype=torch.long), response_mask=mask, group_ids=RPP_G,
                  rewards=RPP_R)
    assert advantages.takes("reinforce_pp", "response_lengths") and not advantages.takes("grpo", "response_lengths")
    torch.testing.assert_close(advantages.for_batch("reinforce_pp", batch, {"norm": "token"}),
                               torch.tensor([7.0, -5.0, -5.0, -1.0, -1.0]) / math.sqrt(19))
    torch.testing.assert_close(advantages.for_batch("reinforce_pp", batch, {"norm": "sequence", "eps": 0.0}),
                               torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0]) * math.sqrt(15 / 2))
    torch.testing.assert_close(advantages.for_batch("grpo", batch, {}), advantages.get("grpo")(RPP_R, RPP_G))


@pytest.fixture
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_reinforce_pp_norm_key_reaches_the_estimator_and_defaults_to_token(_in_tmp):
    """``algorithm.reinforce_pp_norm``: default ``token`` (OpenRLHF, the paper's reference code), plan -> estimator."""
    import os

    from rlplat import algorithms
    from rlplat.config import RunConfig, load_config

    assert RunConfig().algorithm.reinforce_pp_norm == "token" == advantages.REINFORCE_PP_NORMS[0]
    grpo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "grpo.yaml")
    for overrides, norm in (([], "token"), (["algorithm.reinforce_pp_norm=sequence"], "sequence")):
        cfg = load_config(grpo, ["algorithm.advantage=reinforce_pp", *overrides])
        plan = algorithms.get("grpo").plan(cfg)
        assert dict(plan.advantage_params) == {"norm": norm}
    assert algorithms.get("grpo").plan(load_config(grpo)).advantage_params == ()  # other estimators: untouched


@pytest.mark.parametrize("overrides,fragments", [
    (["algorithm.advantage=reinforce_pp", "algorithm.reinforce_pp_norm=tokens"],
     ["algorithm.reinforce_pp_norm='tokens'", "'token', 'sequence'"]),
    (["algorithm.reinforce_pp_norm=sequence"], ["algorithm.reinforce_pp_norm='sequence'", "acts only with", "'grpo'"]),
])
def test_reinforce_pp_norm_key_refusals(_in_tmp, overrides, fragments):
    import os

    from rlplat.config import ConfigError, load_config

    grpo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "grpo.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(grpo, overrides)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
