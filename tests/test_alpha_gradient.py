"""The alpha-divergence gradient exact in float32 (issue 34, item 4; docs/algorithms.md, "Numerics of both
families" and "f-DPO"): the per-token generator ``f(u)`` (``rlplat.divergences.per_token.alpha_value``,
DPH-RL's ``alpha``) and the f-DPO link ``f'(u)`` (``rlplat.divergences.links``, ``alpha``) keep ``expm1``
for their values and take their gradients from the closed forms, so that the float32 gradient agrees
with the float64 one within 1e-5 relative wherever the float64 gradient is representable in float32,
for ``alpha * log u`` up to 50 in magnitude, on both sides of ``u = 1``."""
import pytest
import torch

from rlplat import divergences
from rlplat.divergences.links import link
from rlplat.losses import fdpo_loss

ALPHAS = (1e-3, 0.05, 0.2, 0.5, 0.8, 0.95, 1 - 1e-3)
F32_MAX, F32_TINY = float(torch.finfo(torch.float32).max), float(torch.finfo(torch.float32).tiny)


def log_u_grid(alpha):
    """float32-representable ``log u`` with ``alpha * log u`` in [-50, 50], both signs, dense near 0."""
    y = torch.cat([torch.linspace(-50, 50, 4001, dtype=torch.float64),
                   torch.logspace(-8, 0, 200, dtype=torch.float64), -torch.logspace(-8, 0, 200, dtype=torch.float64),
                   torch.tensor([0.0, 16.5, 17.0, 17.5, 20.0, -17.0, -20.0], dtype=torch.float64)])
    return (y / alpha).float().double()  # the very same inputs in both precisions


def generator(alpha):
    fn = divergences.get("alpha", alpha=alpha)
    return lambda x: fn(x, torch.zeros_like(x))


def alpha_link(alpha):
    return lambda x: link("alpha", x, alpha=alpha)


def value_and_grad(fn, x, dtype):
    x = x.to(dtype).clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


def check_float32_against_float64(fn, x):
    _, g32 = value_and_grad(fn, x, torch.float32)
    _, g64 = value_and_grad(fn, x, torch.float64)
    representable = torch.isfinite(g64) & (g64.abs() <= F32_MAX) & (g64.abs() >= F32_TINY)
    assert representable.sum() > 100
    rel = (g32.double() - g64).abs() / g64.abs()
    worst = rel[representable].max().item()
    assert worst <= 1e-5, f"float32 gradient off by {worst:.2e} relative at log u = {x[representable][rel[representable].argmax()]}"
    assert (g32[g64 == 0] == 0).all()  # u = 1: exactly 0 in both
    return g64


@pytest.mark.parametrize("alpha", ALPHAS)
def test_generator_gradient_float32_matches_float64(alpha):
    """d f / d log u = (u - u^(1-alpha)) / alpha = u^(1-alpha) (u^alpha - 1) / alpha."""
    x = log_u_grid(alpha)
    g64 = check_float32_against_float64(generator(alpha), x)
    closed = (torch.exp(x) - torch.exp((1 - alpha) * x)) / alpha
    # away from u = 1, where this difference form cancels, and from float64 overflow
    moderate = (x.abs() * max(alpha, 1 - alpha) > 1) & (x.abs() < 700)
    torch.testing.assert_close(g64[moderate], closed[moderate], rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_link_gradient_float32_matches_float64(alpha):
    """d f'(u) / d log u = u^(-alpha) = exp(-alpha log u)."""
    x = log_u_grid(alpha)
    g64 = check_float32_against_float64(alpha_link(alpha), x)
    torch.testing.assert_close(g64, torch.exp(-alpha * x), rtol=1e-14, atol=0)


@pytest.mark.parametrize("alpha", (0.2, 0.5))
def test_values_unchanged_expm1_forms(alpha):
    """The values are still the expm1 forms, bit for bit, in both precisions."""
    for dtype in (torch.float32, torch.float64):
        x = log_u_grid(alpha).to(dtype)
        a = 1.0 - alpha
        gen = (torch.expm1(a * x) - a * torch.expm1(x)) / (alpha * (alpha - 1.0))
        assert torch.equal(generator(alpha)(x).nan_to_num(), gen.nan_to_num())
        assert torch.equal(alpha_link(alpha)(x), -torch.expm1(-alpha * x) / alpha)


def test_the_expm1_backward_is_what_lost_the_gradient():
    """Why: autograd of expm1 takes its derivative as expm1(y) + 1, exactly 0 in float32 once y < -17
    (u^-alpha below 4e-8); the gradients here keep it."""
    alpha, x = 0.5, torch.tensor([40.0])  # alpha * log u = 20
    naive = value_and_grad(lambda t: -torch.expm1(-alpha * t) / alpha, x, torch.float32)[1]
    ours = value_and_grad(alpha_link(alpha), x, torch.float32)[1]
    assert naive.item() == 0.0
    assert ours.item() == pytest.approx(torch.exp(torch.tensor(-20.0, dtype=torch.float64)).item(), rel=1e-6)


def test_fdpo_alpha_loss_gradient_float32_matches_float64():
    """Through the f-DPO pair loss: chosen and rejected log-ratios far from 0 on both sides."""
    chosen = torch.tensor([60.0, -30.0, 5.0, 90.0])
    rejected = torch.tensor([-60.0, 30.0, -5.0, 80.0])
    grads = {}
    for dtype in (torch.float32, torch.float64):
        pc, pr = chosen.to(dtype).requires_grad_(True), rejected.to(dtype).requires_grad_(True)
        zero = torch.zeros(4, dtype=dtype)
        loss = fdpo_loss(pc, pr, zero, zero, "alpha", beta=0.1, alpha=0.3).sum()
        grads[dtype] = torch.autograd.grad(loss, (pc, pr))
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        ok = g64.abs() >= F32_TINY
        torch.testing.assert_close(g32.double()[ok], g64[ok], rtol=1e-5, atol=0)


@pytest.mark.parametrize("alpha", (0.2, 0.7))
def test_second_derivatives_still_work(alpha):
    x = torch.tensor([-3.0, -0.1, 0.4, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(generator(alpha), (x,))
    assert torch.autograd.gradgradcheck(generator(alpha), (x,))
    assert torch.autograd.gradcheck(alpha_link(alpha), (x,))
    assert torch.autograd.gradgradcheck(alpha_link(alpha), (x,))
