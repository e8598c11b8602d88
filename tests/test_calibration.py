"""Reward calibration (rlplat/rewards/calibration.py) and the reference store's fingerprint
(rlplat/rewards/reference_store.py): docs/algorithms.md#infalign-ctrl."""
from __future__ import annotations

import math

import pytest
import torch

from rlplat.rewards.calibration import calibrate
from launch.loops.store import load_store, save_store
from rlplat.rewards.reference_store import SAMPLING_KEYS, fingerprint


def test_reference_samples_calibrate_to_exact_mid_ranks():
    """Distinct reference rewards: the m samples' own calibrated values are exactly {(i + 0.5) / m}."""
    g = torch.Generator().manual_seed(0)
    m, num_prompts = 16, 5
    ref = torch.randn(num_prompts, m, generator=g, dtype=torch.float64) * torch.arange(1, num_prompts + 1).unsqueeze(1)
    c = calibrate(ref.flatten(), ref, torch.arange(num_prompts).repeat_interleave(m))
    expected = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    for p in range(num_prompts):
        assert torch.equal(c[p * m:(p + 1) * m].sort().values, expected)


def test_ties_count_half_on_small_cases():
    ref = torch.tensor([[1.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    r = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 4.0, 6.0])
    idx = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    # r=1 ties 2 of 4: 0.5*2/4; r=2 has 2 below and ties 1: (2 + 0.5)/4; all-equal reference: 1/2.
    expected = [0.0, 0.25, 0.5, 0.625, 0.875, 1.0, 0.5, 0.0, 1.0]
    assert calibrate(r, ref, idx).tolist() == expected


def test_binary_rewards_give_the_tie_rule_values():
    """0/1 rewards (a checker): with k of m reference samples correct, a correct response gets
    1 - k/(2m) and a wrong one (m - k)/(2m)."""
    m, k = 8, 3
    ref = torch.tensor([[1.0] * k + [0.0] * (m - k)])
    c = calibrate(torch.tensor([1.0, 0.0]), ref, torch.tensor([0, 0]))
    assert c.tolist() == [1 - k / (2 * m), (m - k) / (2 * m)]


def test_fresh_reference_samples_are_uniform_for_any_reward_distribution():
    """Fresh draws from each prompt's (different, continuous) reward distribution calibrate to
    K/m with K uniform on {0..m}: KS distance to Uniform[0, 1] at most 1/(m+1) plus sampling noise,
    bounded here by the DKW inequality at level 1e-3: sqrt(log(2/1e-3) / (2 n))."""
    g = torch.Generator().manual_seed(1)
    num_prompts, m, fresh = 40, 64, 100
    scale = torch.rand(num_prompts, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    shift = torch.randn(num_prompts, 1, generator=g, dtype=torch.float64) * 100

    def draw(k: int) -> torch.Tensor:  # half the prompts Gaussian, half exponential, each rescaled
        z = torch.randn(num_prompts, k, generator=g, dtype=torch.float64)
        e = -torch.log(torch.rand(num_prompts, k, generator=g, dtype=torch.float64))
        return torch.where(torch.arange(num_prompts).unsqueeze(1) % 2 == 0, z, e) * scale + shift

    ref, new = draw(m), draw(fresh)
    c = calibrate(new.flatten(), ref, torch.arange(num_prompts).repeat_interleave(fresh)).sort().values
    n = c.numel()
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum(ecdf_hi - c, c - (ecdf_hi - 1.0 / n)).max())
    bound = 1 / (m + 1) + math.sqrt(math.log(2 / 1e-3) / (2 * n))
    assert ks < bound, (ks, bound)
    assert abs(float(c.mean()) - 0.5) < 0.02


def test_calibration_ignores_increasing_maps_of_the_reward():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(3, 10, generator=g, dtype=torch.float64)
    r = torch.randn(12, generator=g, dtype=torch.float64)
    idx = torch.arange(3).repeat(4)
    base = calibrate(r, ref, idx)
    for f in (torch.exp, lambda x: 3 * x - 7, torch.sigmoid):
        assert torch.equal(calibrate(f(r), f(ref), idx), base)


def test_each_response_uses_its_own_prompts_reference():
    ref = torch.tensor([[0.0, 1.0], [10.0, 11.0]])
    c = calibrate(torch.tensor([10.5, 10.5, 0.5]), ref, torch.tensor([0, 1, 1]))
    assert c.tolist() == [1.0, 0.5, 0.0]


def test_float32_ties_are_exact_and_dtype_is_kept():
    ref = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float32)
    c = calibrate(torch.tensor([0.2], dtype=torch.float32), ref, torch.tensor([0]))
    assert c.dtype == torch.float32 and c.tolist() == [0.5]


def test_failed_reference_samples_are_left_out():
    ref = torch.tensor([[1.0, float("nan"), 3.0, float("nan")], [float("nan")] * 4])
    assert calibrate(torch.tensor([2.0, 3.0]), ref, torch.tensor([0, 0])).tolist() == [0.5, 0.75]
    with pytest.raises(ValueError, match=r"prompts \[1\] have no valid reference reward"):
        calibrate(torch.tensor([2.0]), ref, torch.tensor([1]))


@pytest.mark.parametrize(
    "rewards, ref, idx, match",
    [
        (torch.zeros(2, 1), torch.zeros(1, 3), torch.zeros(2, dtype=torch.long), r"rewards must be 1-D"),
        (torch.zeros(2), torch.zeros(3), torch.zeros(2, dtype=torch.long), r"reference_rewards must be 2-D"),
        (torch.zeros(2), torch.zeros(1, 0), torch.zeros(2, dtype=torch.long), r"m >= 1"),
        (torch.zeros(2), torch.zeros(1, 3), torch.zeros(3, dtype=torch.long), r"prompt_index has shape"),
        (torch.zeros(2), torch.zeros(1, 3), torch.zeros(2), r"prompt_index must be an integer"),
        (torch.tensor([0.0, math.nan]), torch.zeros(1, 3), torch.zeros(2, dtype=torch.long), r"non-finite values at rows \[1\]"),
        (torch.zeros(2), torch.tensor([[0.0, math.inf]]), torch.zeros(2, dtype=torch.long), r"\+-inf in prompts \[0\]"),
        (torch.zeros(2), torch.zeros(1, 3), torch.tensor([0, 1]), r"out of range \[0, 1\) at rows \[1\]"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(rewards, ref, idx, match):
    with pytest.raises(ValueError, match=match):
        calibrate(rewards, ref, idx)


# ----------------------------------------------------------------------------- store fingerprint
def _fp(**over):
    args = dict(reference="builtin:tiny-policy", tokenizer=None, dtype="float32", m=16, rows=[0, 1],
                prompt_ids=[[5, 6], [7]], sampling={k: None for k in SAMPLING_KEYS}, reward="arithmetic_graded",
                seed=0)
    args.update(over)
    return fingerprint(**args)


def test_store_is_reused_only_under_a_matching_fingerprint(tmp_path, capsys):
    """The CTRL loop's store (``launch.loops.store``) under ``fingerprint``: reused when equal,
    prepared again, naming the entries that differ, otherwise."""
    path = str(tmp_path / "ctrl_reference.pt")
    base = _fp()
    save_store(path, {"fingerprint": base, "rewards": torch.zeros(2, 16)})
    assert load_store(path, _fp())["rewards"].shape == (2, 16)
    for over, changed in [(dict(m=32), "m"), (dict(prompt_ids=[[5, 6], [8]]), "prompt_ids_sha256"),
                          (dict(sampling={**{k: None for k in SAMPLING_KEYS}, "temperature": 0.7}), "temperature"),
                          (dict(reward="arithmetic", seed=1), "reward, seed")]:
        assert load_store(path, _fp(**over)) is None
        assert f"made under another {changed}; preparing it again" in capsys.readouterr().out
    assert load_store(str(tmp_path / "missing.pt"), base) is None


def test_fingerprint_refuses_bad_arguments():
    with pytest.raises(ValueError, match="m .* must be an int >= 1"):
        _fp(m=0)
    with pytest.raises(ValueError, match="prompt_ids has 1 entries, rows has 2"):
        _fp(prompt_ids=[[1]])
    with pytest.raises(ValueError, match=r"missing \['top_k'\], unexpected \['beam'\]"):
        _fp(sampling={**{k: None for k in SAMPLING_KEYS if k != "top_k"}, "beam": 2})
