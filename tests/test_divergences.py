"""Exact checks of every divergence property in docs/algorithms.md#divergence-estimators.

Expectations are computed exactly by enumerating a small vocabulary (V = 5) in float64:
the per-token estimators are elementwise, so evaluating one on the whole vocabulary vector
``log pi[v]`` gives its value on every possible sampled token at once, and
``E_q[k] = sum_v q(v) k(v)``. Each test uses a batch of independent random distribution pairs
(rows), including peaked ones.

How "E_pi[grad k]" is read (checked numerically before writing these tests): the loss is the
mean of ``k`` over tokens sampled from pi, differentiated through ``logp`` with the tokens held
fixed. Its expected gradient is the *pathwise* term ``sum_v sg(pi_v) grad k(v)``; that is the
quantity the spec's identities are about (k1 -> 0, k2 -> grad KL(pi||anchor),
k3 -> grad KL(anchor||pi)). The *total* derivative of ``sum_v pi_v k(v)`` (pathwise plus the
score-function term ``sum_v pi_v k(v) grad log pi_v``, i.e. k used as a REINFORCE reward) is a
different quantity: it equals grad KL(pi||anchor) for the unbiased k1 and k3 and not for k2.
``test_total_derivative_is_a_different_quantity`` pins that distinction down.
"""
from __future__ import annotations

import math

import pytest
import torch

import rlplat.divergences as D
from rlplat.divergences import full as full_mod

F64 = torch.float64
V = 5
LOG2 = math.log(2.0)
PER_TOKEN = ["k1", "k2", "k3", "k3_st", "forward_kl", "js", "alpha", "tv"]
FULL = ["full_forward_kl", "full_reverse_kl", "full_jsd"]
# Row scales of the random logits: near-uniform to sharply peaked distributions.
SCALES = torch.tensor([0.3, 1.0, 1.0, 2.0, 3.0, 5.0], dtype=F64)


def _pairs(seed: int):
    """theta [K, V] (policy logits, requires grad) and anchor log-probs [K, V] (constant)."""
    g = torch.Generator().manual_seed(seed)
    theta = (torch.randn(len(SCALES), V, generator=g, dtype=F64) * SCALES[:, None]).requires_grad_(True)
    anchor = torch.randn(len(SCALES), V, generator=g, dtype=F64) * SCALES[:, None]
    return theta, torch.log_softmax(anchor, -1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Exact KL(p||q) per row, [K]."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _grad(value: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    # Rows are independent, so the gradient of the row sum holds each row's own gradient.
    (g,) = torch.autograd.grad(value.sum(), wrt)
    return g


def _close(a, b, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


SEEDS = [0, 1, 2]


# --- all estimators at pi == anchor ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize(
    "name,params",
    [(n, {}) for n in PER_TOKEN] + [("alpha", {"alpha": a}) for a in (1e-3, 0.5, 0.9, 1 - 1e-3)],
)
def test_per_token_zero_at_equality(name, params, dtype):
    """Every estimator is exactly 0 at logp == anchor_logp; every gradient too, except k1's
    (d k1 / d logp = 1 per token; only its *expected* gradient vanishes, tested below)."""
    logp = (torch.randn(64, dtype=dtype) * 4).requires_grad_(True)
    values = D.get(name, **params)(logp, logp.detach().clone())
    assert torch.equal(values, torch.zeros_like(values))
    grad = _grad(values, logp)
    expected = torch.ones_like(grad) if name == "k1" else torch.zeros_like(grad)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_k1_expected_gradient_is_zero(seed):
    theta, anchor = _pairs(seed)
    logp = torch.log_softmax(theta, -1)
    expectation = (logp.exp().detach() * D.get("k1")(logp, anchor)).sum(-1)
    _close(_grad(expectation, theta), torch.zeros_like(theta), atol=1e-14)


# --- sampled from the policy: k1, k2, k3, k3_st -----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_k3_is_nonnegative(dtype):
    log_r = torch.cat([torch.linspace(-60, 60, 2001, dtype=dtype), torch.randn(1000, dtype=dtype) * 1e-3])
    values = D.get("k3")(-log_r, torch.zeros_like(log_r))  # logp = -log_r, anchor_logp = 0
    assert torch.isfinite(values).all()
    assert (values >= 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_k1_and_k3_expectations_equal_reverse_kl(seed):
    theta, anchor = _pairs(seed)
    logp = torch.log_softmax(theta, -1).detach()
    kl = _kl(logp, anchor)
    for name in ("k1", "k3", "k3_st"):
        _close((logp.exp() * D.get(name)(logp, anchor)).sum(-1), kl)
    # k2 is biased: its expectation is not the KL (this is why it is not used as a value).
    e_k2 = (logp.exp() * D.get("k2")(logp, anchor)).sum(-1)
    assert (e_k2 - kl).abs().max() > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_k2_expected_gradient_is_reverse_kl_gradient(seed):
    theta, anchor = _pairs(seed)
    logp = torch.log_softmax(theta, -1)
    pathwise = _grad((logp.exp().detach() * D.get("k2")(logp, anchor)).sum(-1), theta)
    _close(pathwise, _grad(_kl(torch.log_softmax(theta, -1), anchor), theta))


@pytest.mark.parametrize("seed", SEEDS)
def test_k3_expected_gradient_is_forward_kl_gradient(seed):
    theta, anchor = _pairs(seed)
    logp = torch.log_softmax(theta, -1)
    pathwise = _grad((logp.exp().detach() * D.get("k3")(logp, anchor)).sum(-1), theta)
    forward = _grad(_kl(anchor, torch.log_softmax(theta, -1)), theta)
    reverse = _grad(_kl(torch.log_softmax(theta, -1), anchor), theta)
    _close(pathwise, forward)
    assert (pathwise - reverse).abs().max() > 1e-3  # and genuinely not the reverse-KL gradient


@pytest.mark.parametrize("seed", SEEDS)
def test_total_derivative_is_a_different_quantity(seed):
    """d/dtheta sum_v pi_v k(v) with the weights differentiated too (k as a REINFORCE reward):
    grad KL(pi||anchor) for the unbiased k1 and k3, not for k2. The spec's gradient identities
    hold for the pathwise term only, which is what the loss computes."""
    theta, anchor = _pairs(seed)
    reverse = _grad(_kl(torch.log_softmax(theta, -1), anchor), theta)
    for name, matches in (("k1", True), ("k3", True), ("k2", False)):
        logp = torch.log_softmax(theta, -1)
        total = _grad((logp.exp() * D.get(name)(logp, anchor)).sum(-1), theta)
        if matches:
            _close(total, reverse)
        else:
            assert (total - reverse).abs().max() > 1e-3


def test_k3_st_has_k3_value_and_k2_gradient():
    g = torch.Generator().manual_seed(3)
    logp = (torch.randn(200, generator=g, dtype=F64) * 2).requires_grad_(True)
    anchor = torch.randn(200, generator=g, dtype=F64) * 2
    st = D.get("k3_st")(logp, anchor)
    k3 = D.get("k3")(logp, anchor)
    _close(st, k3, rtol=1e-15, atol=1e-15)
    g_st = _grad(st, logp)
    _close(g_st, _grad(D.get("k2")(logp, anchor), logp), rtol=0, atol=0)
    assert (g_st - _grad(k3, logp)).abs().max() > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_k3_st_expected_gradient_is_reverse_kl_gradient(seed):
    theta, anchor = _pairs(seed)
    logp = torch.log_softmax(theta, -1)
    pathwise = _grad((logp.exp().detach() * D.get("k3_st")(logp, anchor)).sum(-1), theta)
    _close(pathwise, _grad(_kl(torch.log_softmax(theta, -1), anchor), theta))


# --- sampled from the anchor: generator functions -----------------------------------------


def _closed_form(name: str, logp: torch.Tensor, anchor: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
    """D_f(anchor||pi) per row, computed from the definitions, not from f."""
    p, a = logp.exp(), anchor.exp()
    if name == "forward_kl":
        return _kl(anchor, logp)
    if name == "js":
        logm = torch.log(0.5 * (p + a))
        return 0.5 * _kl(anchor, logm) + 0.5 * _kl(logp, logm)
    if name == "alpha":
        return (1.0 - (p ** (1.0 - alpha) * a**alpha).sum(-1)) / (alpha * (1.0 - alpha))
    if name == "tv":
        return 0.5 * (p - a).abs().sum(-1)
    raise AssertionError(name)


GENERATORS = [("forward_kl", 0.2), ("js", 0.2), ("tv", 0.2)] + [("alpha", a) for a in (0.05, 0.2, 0.5, 0.8, 0.95)]


def _anchor_expectation(name, alpha, logp, anchor):
    fn = D.get(name, alpha=alpha) if name == "alpha" else D.get(name)
    return (anchor.exp() * fn(logp, anchor)).sum(-1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,alpha", GENERATORS)
def test_anchor_expectation_equals_closed_form_value_and_gradient(name, alpha, seed):
    theta, anchor = _pairs(seed)
    estimate = _anchor_expectation(name, alpha, torch.log_softmax(theta, -1), anchor)
    exact = _closed_form(name, torch.log_softmax(theta, -1), anchor, alpha)
    _close(estimate, exact)
    _close(_grad(estimate, theta), _grad(exact, theta))
    assert (estimate > 0).all()


@pytest.mark.parametrize("name,alpha", GENERATORS)
def test_generator_functions_are_nonnegative(name, alpha):
    log_u = torch.linspace(-40, 40, 4001, dtype=F64)
    fn = D.get(name, alpha=alpha) if name == "alpha" else D.get(name)
    values = fn(log_u, torch.zeros_like(log_u))
    assert torch.isfinite(values).all() and (values >= 0).all()


def _extreme_pairs():
    """Rows from near-uniform to near-disjoint supports (logits up to +-60)."""
    rows = []
    for scale in (1.0, 10.0, 30.0, 60.0):
        pol = torch.full((V,), -scale, dtype=F64)
        anc = torch.full((V,), -scale, dtype=F64)
        pol[0], anc[1] = scale, scale
        rows.append((pol, anc))
    pol = torch.stack([r[0] for r in rows])
    anc = torch.stack([r[1] for r in rows])
    return torch.log_softmax(pol, -1), torch.log_softmax(anc, -1)


def test_js_and_tv_bounds_including_extremes():
    for seed in SEEDS:
        theta, anchor = _pairs(seed)
        logp = torch.log_softmax(theta, -1).detach()
        assert (_anchor_expectation("js", 0, logp, anchor) <= LOG2).all()
        assert (_anchor_expectation("tv", 0, logp, anchor) <= 1.0).all()
    logp, anchor = _extreme_pairs()
    js = _anchor_expectation("js", 0, logp, anchor)
    tv = _anchor_expectation("tv", 0, logp, anchor)
    assert torch.isfinite(js).all() and (js <= LOG2).all()
    assert (tv <= 1.0).all()
    _close(js, _closed_form("js", logp, anchor), rtol=1e-9, atol=1e-12)
    # Near-disjoint supports reach the bounds.
    assert LOG2 - js[-1] < 1e-12 and 1.0 - tv[-1] < 1e-12
    # A per-token value at u -> 0 is the finite limit 0.5 log 2, not a 0 * log 0 NaN.
    tiny = D.get("js")(torch.tensor([-1e4, -745.0, -100.0], dtype=F64), torch.zeros(3, dtype=F64))
    _close(tiny, torch.full((3,), 0.5 * LOG2, dtype=F64), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_alpha_limits(seed):
    """alpha -> 0 tends to KL(pi||anchor), alpha -> 1 to KL(anchor||pi); values and gradients."""
    theta, anchor = _pairs(seed)
    for alpha, target in ((1e-4, lambda lp: _kl(lp, anchor)), (1 - 1e-4, lambda lp: _kl(anchor, lp))):
        estimate = _anchor_expectation("alpha", alpha, torch.log_softmax(theta, -1), anchor)
        exact = target(torch.log_softmax(theta, -1))
        _close(estimate, exact, rtol=2e-3, atol=1e-6)
        _close(_grad(estimate, theta), _grad(exact, theta), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("name", PER_TOKEN)
def test_float32_matches_float64_and_stays_finite(name):
    """Per-token values in float32 over log-ratios in [-60, 60] agree with float64."""
    log_x = torch.linspace(-60, 60, 1201, dtype=F64)
    fn = D.get(name)
    ref = fn(log_x, torch.zeros_like(log_x))
    got = fn(log_x.float(), torch.zeros_like(log_x).float())
    assert torch.isfinite(got).all()
    _close(got.double(), ref, rtol=2e-5, atol=1e-6)


def test_js_naive_reference_agrees_in_float64():
    """The softplus form equals the generator exactly as written in the spec."""
    log_u = torch.linspace(-30, 30, 601, dtype=F64)
    u = log_u.exp()
    naive = 0.5 * (u * log_u - (u + 1) * torch.log((u + 1) / 2))
    _close(D.get("js")(log_u, torch.zeros_like(log_u)), naive, rtol=1e-9, atol=1e-12)


def test_per_token_anchor_is_detached_and_shape_is_kept():
    logp = torch.randn(3, 4, dtype=F64, requires_grad=True)
    anchor = torch.randn(3, 4, dtype=F64, requires_grad=True)
    for name in PER_TOKEN:
        values = D.get(name)(logp, anchor)
        assert values.shape == (3, 4)
        values.sum().backward()
    assert anchor.grad is None and logp.grad is not None


# --- full-distribution variants ---------------------------------------------------------


def _ref_full(name: str, logits: torch.Tensor, anchor_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Naive, unchunked definitions (autograd through everything)."""
    s, t = torch.log_softmax(logits, -1), torch.log_softmax(anchor_logits, -1)
    if name == "full_forward_kl":
        return _kl(t, s)
    if name == "full_reverse_kl":
        return _kl(s, t)
    m = torch.log(beta * t.exp() + (1 - beta) * s.exp())
    return beta * _kl(t, m) + (1 - beta) * _kl(s, m)


def _full_inputs(seed: int, shape=(2, 3), vocab: int = V, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g, dtype=F64) * scale).requires_grad_(True)
    anchor = torch.randn(*shape, vocab, generator=g, dtype=F64) * scale
    return logits, anchor


FULL_CASES = [("full_forward_kl", {}), ("full_reverse_kl", {})] + [
    ("full_jsd", {"beta": b}) for b in (0.1, 0.5, 0.9)
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,params", FULL_CASES)
def test_full_equals_enumerated_definition(name, params, seed):
    logits, anchor = _full_inputs(seed)
    got = D.get(name, chunk_size=4, **params)(logits, anchor)
    ref = _ref_full(name, logits, anchor, params.get("beta", 0.5))
    assert got.shape == (2, 3)
    _close(got, ref)
    w = torch.randn(2, 3, dtype=F64)  # a non-uniform upstream gradient
    (g_got,) = torch.autograd.grad((got * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    _close(g_got, g_ref)


@pytest.mark.parametrize("name,params", FULL_CASES + [("full_jsd", {"beta": 0.0}), ("full_jsd", {"beta": 1.0})])
def test_full_chunked_equals_unchunked(name, params):
    logits, anchor = _full_inputs(7, shape=(3, 7), vocab=37, scale=3.0)
    n = 21
    w = torch.randn(3, 7, dtype=F64)
    ref = D.get(name, chunk_size=n, **params)(logits, anchor)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    for chunk in (1, 2, 4, 5, 20, 64, None):
        got = D.get(name, chunk_size=chunk, **params)(logits, anchor)
        (g_got,) = torch.autograd.grad((got * w).sum(), logits)
        _close(got, ref, rtol=1e-13, atol=1e-15)
        _close(g_got, g_ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_full_jsd_endpoints_and_limits(seed):
    logits, anchor = _full_inputs(seed)
    fwd = D.get("full_forward_kl")(logits, anchor)
    rev = D.get("full_reverse_kl")(logits, anchor)
    at0 = D.get("full_jsd", beta=0)(logits, anchor)
    at1 = D.get("full_jsd", beta=1)(logits, anchor)
    assert torch.equal(at0, fwd) and torch.equal(at1, rev)
    _close(at0, _kl(torch.log_softmax(anchor, -1), torch.log_softmax(logits, -1)))
    _close(at1, _kl(torch.log_softmax(logits, -1), torch.log_softmax(anchor, -1)))
    for beta, loss in ((0.0, at0), (1.0, at1)):
        (g,) = torch.autograd.grad(loss.sum(), logits)
        (g_ref,) = torch.autograd.grad((fwd if beta == 0 else rev).sum(), logits)
        assert torch.isfinite(g).all()
        _close(g, g_ref)
    # The mixture formula near the endpoints: JSD_b ~ b KL(T||S) and ~ (1-b) KL(S||T).
    eps = 1e-7
    _close(D.get("full_jsd", beta=eps)(logits, anchor) / eps, fwd, rtol=1e-4, atol=1e-8)
    _close(D.get("full_jsd", beta=1 - eps)(logits, anchor) / eps, rev, rtol=1e-4, atol=1e-8)
    assert (D.get("full_jsd", beta=0.5)(logits, anchor) <= LOG2).all()


@pytest.mark.parametrize("name,params", FULL_CASES)
def test_full_zero_at_equality(name, params):
    logits, _ = _full_inputs(8)
    values = D.get(name, chunk_size=4, **params)(logits, logits.detach().clone())
    (g,) = torch.autograd.grad(values.sum(), logits)
    _close(values, torch.zeros_like(values), rtol=0, atol=1e-15)
    _close(g, torch.zeros_like(g), rtol=0, atol=1e-15)


def test_full_handles_zero_probability_anchor_entries():
    """Anchor logits of -inf (outside a teacher's top-k): zero-probability terms count 0, no NaN."""
    logits, anchor = _full_inputs(4, vocab=8)
    anchor = anchor.clone()
    anchor[..., 5:] = float("-inf")
    xlogy = torch.special.xlogy
    for name, beta in (("full_forward_kl", 0.0), ("full_jsd", 0.0), ("full_jsd", 0.3), ("full_jsd", 0.5)):
        params = {"beta": beta} if name == "full_jsd" else {}
        got = D.get(name, chunk_size=2, **params)(logits, anchor)
        S, T = torch.softmax(logits, -1), torch.softmax(anchor, -1)
        if beta == 0.0:
            ref = (xlogy(T, T) - xlogy(T, S)).sum(-1)
        else:
            M = beta * T + (1 - beta) * S
            ref = beta * (xlogy(T, T) - xlogy(T, M)).sum(-1) + (1 - beta) * (xlogy(S, S) - xlogy(S, M)).sum(-1)
        assert torch.isfinite(got).all()
        _close(got, ref)
        (g,) = torch.autograd.grad(got.sum(), logits)
        (g_ref,) = torch.autograd.grad(ref.sum(), logits)
        assert torch.isfinite(g).all()
        _close(g, g_ref)


def test_full_saves_no_extra_vocab_sized_tensors():
    """The chunked backward keeps only its inputs; the naive formula keeps several [N, V] tensors."""
    logits, anchor = _full_inputs(0, shape=(4, 16), vocab=64)
    big = logits.numel()

    def count_new_big(run):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            run()
        inputs = {logits.data_ptr(), anchor.data_ptr()}
        return sum(1 for t in saved if t.numel() >= big and t.data_ptr() not in inputs)

    for name in FULL:
        assert count_new_big(lambda: D.get(name, chunk_size=8)(logits, anchor)) == 0
    assert count_new_big(lambda: _ref_full("full_reverse_kl", logits, anchor)) >= 2


def test_full_shapes_dtypes_and_detached_anchor():
    fn = D.get("full_reverse_kl", chunk_size=3)
    one = torch.randn(V, dtype=F64, requires_grad=True)
    assert fn(one, torch.randn(V, dtype=F64)).shape == ()
    empty = torch.zeros(0, 4, V, dtype=F64, requires_grad=True)
    out = fn(empty, torch.zeros(0, 4, V, dtype=F64))
    out.sum().backward()
    assert out.shape == (0, 4) and empty.grad.shape == empty.shape

    logits, anchor = _full_inputs(5, vocab=50)
    anchor = anchor.clone().requires_grad_(True)
    half = logits.detach().to(torch.bfloat16).requires_grad_(True)
    got = fn(half, anchor.detach().to(torch.bfloat16))
    assert got.dtype == torch.float32
    got.sum().backward()
    assert half.grad.dtype == torch.bfloat16
    ref = _ref_full("full_reverse_kl", half.detach().double(), anchor.detach().to(torch.bfloat16).double())
    _close(got.double(), ref, rtol=1e-5, atol=1e-6)

    fn(logits, anchor).sum().backward()
    assert anchor.grad is None and logits.grad is not None


def test_make_full_autograd_path_matches_analytic_gradient():
    """A user full divergence given only as a value function is differentiated chunk by chunk."""
    logits, anchor = _full_inputs(6, shape=(3, 5), vocab=11)
    generic = full_mod.make_full(full_mod.reverse_kl_value, None, chunk_size=2)
    analytic = D.get("full_reverse_kl", chunk_size=15)
    a, b = generic(logits, anchor), analytic(logits, anchor)
    _close(a, b)
    _close(torch.autograd.grad(a.sum(), logits)[0], torch.autograd.grad(b.sum(), logits)[0])


# --- registry -------------------------------------------------------------------------------


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test are dropped afterwards."""
    monkeypatch.setattr(D._REGISTRY, "_items", dict(D._REGISTRY._items))


def test_builtin_names_and_samples():
    expected = {
        "k1": "policy", "k2": "policy", "k3": "policy", "k3_st": "policy",
        "forward_kl": "anchor", "js": "anchor", "alpha": "anchor", "tv": "anchor",
        "full_forward_kl": "full", "full_reverse_kl": "full", "full_jsd": "full",
    }  # fmt: skip
    assert set(expected) <= set(D.names())
    assert {n: D.info(n) for n in expected} == expected
    assert D.params("alpha") == {"alpha": 0.2}
    assert D.params("full_jsd") == {"beta": 0.5, "chunk_size": None}


def test_register_adds_a_factory_and_duplicates_raise(isolated_registry):
    @D.register("test_scaled_k2", samples="policy")
    def scaled(scale: float = 1.0):
        return lambda logp, anchor_logp: scale * 0.5 * (logp - anchor_logp.detach()) ** 2

    x = torch.tensor([0.0, -1.0], dtype=F64)
    assert torch.equal(D.get("test_scaled_k2", scale=4.0)(x, torch.zeros_like(x)), torch.tensor([0.0, 2.0], dtype=F64))
    assert D.info("test_scaled_k2") == "policy"
    with pytest.raises(ValueError, match="test_scaled_k2"):
        D.register("test_scaled_k2")(scaled)
    with pytest.raises(ValueError, match="k3"):
        D.register("k3", samples="policy")(scaled)
    with pytest.raises(ValueError, match="samples"):
        D.register("test_bad_samples", samples="teacher")


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError, match="k3_st.*") as err:
        D.get("kl3")
    assert "full_jsd" in str(err.value) and "kl3" in str(err.value)
    with pytest.raises(KeyError, match="kl3"):
        D.info("kl3")


@pytest.mark.parametrize(
    "name,params,param",
    [
        ("k2", {"beta": 1.0}, "beta"),
        ("alpha", {"alhpa": 0.5}, "alhpa"),
        ("full_forward_kl", {"beta": 0.5}, "beta"),
        ("alpha", {"alpha": 0.0}, "alpha"),
        ("alpha", {"alpha": 1.0}, "alpha"),
        ("alpha", {"alpha": -0.1}, "alpha"),
        ("alpha", {"alpha": 1.5}, "alpha"),
        ("alpha", {"alpha": float("nan")}, "alpha"),
        ("alpha", {"alpha": "0.5"}, "alpha"),
        ("alpha", {"alpha": True}, "alpha"),
        ("full_jsd", {"beta": -0.01}, "beta"),
        ("full_jsd", {"beta": 1.01}, "beta"),
        ("full_jsd", {"beta": float("nan")}, "beta"),
        ("full_jsd", {"chunk_size": 0}, "chunk_size"),
        ("full_reverse_kl", {"chunk_size": -2}, "chunk_size"),
        ("full_forward_kl", {"chunk_size": 2.5}, "chunk_size"),
        ("full_forward_kl", {"chunk_size": True}, "chunk_size"),
    ],
)
def test_bad_params_raise_naming_the_param(name, params, param):
    with pytest.raises(ValueError, match=param):
        D.get(name, **params)


def test_alpha_param_changes_the_estimator():
    log_u = torch.tensor([-1.0, 0.5, 2.0], dtype=F64)
    a5 = D.get("alpha", alpha=0.5)(log_u, torch.zeros(3, dtype=F64))
    default = D.get("alpha")(log_u, torch.zeros(3, dtype=F64))
    u = log_u.exp()
    _close(a5, (u**0.5 - 0.5 * u - 0.5) / (0.5 * -0.5))
    _close(default, (u**0.8 - 0.8 * u - 0.2) / (0.2 * -0.8))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        D.get("k2")(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        D.get("full_forward_kl")(torch.zeros(2, 5), torch.zeros(2, 6))
