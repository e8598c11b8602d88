"""f-DPO (docs/algorithms.md#f-dpo): each link f'(u) against its generator, the pair loss against
its closed form and DPO, exact gradients, stability at |log u| = 50, and the metrics."""
import math

import pytest
import torch

from rlplat.divergences.links import LINKS, link
from rlplat.losses import fdpo_loss, fdpo_metrics

LOG_U = torch.linspace(-6.0, 6.0, 49, dtype=torch.float64)
ALPHAS = (0.1, 0.5, 0.9)

# The generators f(u) of the constraint D_f(pi || pi_ref) = E_ref[f(pi / pi_ref)] (the paper's table).
GENERATORS = {
    "reverse_kl": lambda u: u * torch.log(u),
    "forward_kl": lambda u: -torch.log(u),
    "js": lambda u: u * torch.log(u) - (u + 1) * torch.log((u + 1) / 2),
}


def _alpha_generator(a):
    return lambda u: (u ** (1 - a) - (1 - a) * u - a) / (a * (a - 1))


# d f'(u) / d log u, written from the closed forms.
SLOPES = {
    "reverse_kl": lambda u: torch.ones_like(u),
    "forward_kl": lambda u: 1 / u,
    "js": lambda u: 1 / (1 + u),
}


def _cases():
    for name in GENERATORS:
        yield name, {}, GENERATORS[name], SLOPES[name]
    for a in ALPHAS:
        yield "alpha", {"alpha": a}, _alpha_generator(a), (lambda u, a=a: u ** (-a))


CASES = list(_cases())
IDS = [f"{n}{p.get('alpha', '')}" for n, p, _, _ in CASES]


def test_every_registered_link_is_tested():
    assert set(LINKS.names()) == set(GENERATORS) | {"alpha"}


@pytest.mark.parametrize("name,params,generator,slope", CASES, ids=IDS)
def test_link_is_the_derivative_of_its_generator(name, params, generator, slope):
    u = LOG_U.exp().requires_grad_(True)
    (df_du,) = torch.autograd.grad(generator(u).sum(), u)
    torch.testing.assert_close(link(name, LOG_U, **params), df_du.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,params,generator,slope", CASES, ids=IDS)
def test_link_gradient_in_log_u_is_exact(name, params, generator, slope):
    log_u = LOG_U.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(link(name, log_u, **params).sum(), log_u)
    torch.testing.assert_close(g, slope(LOG_U.exp()), rtol=1e-10, atol=1e-12)


def test_closed_forms_by_hand():
    u = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
    lu = u.log()
    torch.testing.assert_close(link("reverse_kl", lu), lu + 1)
    torch.testing.assert_close(link("forward_kl", lu), torch.tensor([-4.0, -1.0, -0.25], dtype=torch.float64))
    torch.testing.assert_close(link("js", lu), torch.log(2 * u / (1 + u)))
    torch.testing.assert_close(link("alpha", lu, alpha=0.5), torch.tensor([-2.0, 0.0, 1.0], dtype=torch.float64))


def test_alpha_limits_are_reverse_and_forward_kl():
    lu = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    torch.testing.assert_close(link("alpha", lu, alpha=1e-6), lu, atol=1e-4, rtol=0)  # f' -> log u
    torch.testing.assert_close(link("alpha", lu, alpha=1 - 1e-6), 1 - torch.exp(-lu), atol=1e-4, rtol=0)  # -> 1 - 1/u


def _pairs(n=16, seed=0, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, generator=g, dtype=dtype) - 10.0 for _ in range(4)]


def test_reverse_kl_is_exactly_dpo():
    pw, pl, rw, rl = _pairs()
    beta = 0.1
    dpo = -torch.nn.functional.logsigmoid(beta * ((pw - rw) - (pl - rl)))
    torch.testing.assert_close(fdpo_loss(pw, pl, rw, rl, "reverse_kl", beta), dpo, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,params,generator,slope", CASES, ids=IDS)
def test_pair_loss_value_and_gradients_are_the_closed_forms(name, params, generator, slope):
    pw, pl, rw, rl = _pairs(seed=1)
    beta = 0.3
    pw, pl = pw.requires_grad_(True), pl.requires_grad_(True)
    rw, rl = rw.requires_grad_(True), rl.requires_grad_(True)
    loss = fdpo_loss(pw, pl, rw, rl, name, beta, **params)
    uw, ul = (pw - rw).detach().exp(), (pl - rl).detach().exp()
    # f' straight from the generator (autograd in u), not from the code under test.
    uw_, ul_ = uw.clone().requires_grad_(True), ul.clone().requires_grad_(True)
    (fw,) = torch.autograd.grad(generator(uw_).sum(), uw_)
    (fl,) = torch.autograd.grad(generator(ul_).sum(), ul_)
    z = beta * (fw - fl)
    torch.testing.assert_close(loss.detach(), -torch.nn.functional.logsigmoid(z), rtol=1e-10, atol=1e-10)
    gw, gl, grw, grl = torch.autograd.grad(loss.sum(), [pw, pl, rw, rl], allow_unused=True)
    sig = torch.sigmoid(-z)  # -d/dz log sigmoid(z)
    torch.testing.assert_close(gw, -sig * beta * slope(uw), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gl, sig * beta * slope(ul), rtol=1e-9, atol=1e-12)
    assert grw is None and grl is None  # the reference is a constant


@pytest.mark.parametrize("name,params,generator,slope", CASES, ids=IDS)
def test_finite_for_log_ratios_of_50_in_float32(name, params, generator, slope):
    x = torch.tensor([50.0, -50.0, 50.0, -50.0, 0.0])
    y = torch.tensor([-50.0, 50.0, 50.0, -50.0, 0.0])
    pw, pl = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    loss = fdpo_loss(pw, pl, torch.zeros(5), torch.zeros(5), name, 0.1, **params)
    gw, gl = torch.autograd.grad(loss.sum(), [pw, pl])
    assert torch.isfinite(loss).all() and torch.isfinite(gw).all() and torch.isfinite(gl).all(), (loss, gw, gl)
    assert (loss >= 0).all()
    assert float(loss[2]) == pytest.approx(math.log(2)) and float(loss[4]) == pytest.approx(math.log(2))  # margin 0


def test_unknown_divergence_and_bad_alpha_are_named():
    z = torch.zeros(2)
    with pytest.raises(KeyError, match="unknown f-DPO divergence 'kl'.*forward_kl"):
        fdpo_loss(z, z, z, z, "kl", 0.1)
    with pytest.raises(ValueError, match="param alpha must be in the open interval"):
        fdpo_loss(z, z, z, z, "alpha", 0.1, alpha=1.5)


def test_metrics_by_hand():
    # log u_w = [1, -1], log u_l = [0, 0], reverse KL, beta 0.5: rewards 0.5 (log u + 1).
    pw, pl = torch.tensor([1.0, -1.0]), torch.zeros(2)
    m = fdpo_metrics(pw, pl, torch.zeros(2), torch.zeros(2), "reverse_kl", 0.5)
    assert m["rewards/chosen"] == pytest.approx(0.5) and m["rewards/rejected"] == pytest.approx(0.5)
    assert m["rewards/margin"] == pytest.approx(0.0) and m["rewards/accuracy"] == pytest.approx(0.5)
    assert m["rewards/preference_prob"] == pytest.approx(0.5 * (torch.sigmoid(torch.tensor(0.5)) + torch.sigmoid(torch.tensor(-0.5))).item())
