"""DAPO dynamic sampling end to end through the CLI (``algorithm.dynamic_sampling=true``).

The built-in policy solves many 2-digit additions in every sample, so with 4 samples per prompt
some groups are all-correct (and some all-wrong): exactly the groups dynamic sampling must drop.
"""
import math

import pytest

from tests.test_e2e import assert_weights_arrived, train
from tests.test_resume import metrics, run

pytestmark = pytest.mark.runtime
DYNAMIC = ("algorithm.dynamic_sampling=true", "rollout.backend=hf")


def one(response, answer, prompt):
    """A reward that is 1 for everything: every group is uniform (``reward.fn=tests.test_dynamic_sampling:one``)."""
    return 1.0


@pytest.fixture(scope="module")
def dynamic_reference(tiny_models, ray_cluster, tmp_path_factory):
    """One uninterrupted 4-step dynamic-sampling GRPO run (HF engine, at most 4 rounds, a checkpoint
    every step): the trained-groups test reads its metrics, the resume test compares with them."""
    out = tmp_path_factory.mktemp("dynamic-reference") / "run"
    code, log = run(out, "algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=4")
    assert code == 0, log[-5000:]
    return metrics(out)


def test_only_groups_with_unequal_rewards_are_trained(dynamic_reference):
    rows = dynamic_reference
    assert any(r["sampling/dropped_groups"] > 0 for r in rows), "the policy should solve some prompts in all 4 samples"
    for r in rows:
        assert 1 <= r["sampling/rounds"] <= 4
        assert r["sampling/trained_uniform_groups"] == 0  # counted on the batch the trainer received
        kept = r["sampling/informative_groups"]
        assert r["samples"] == kept * 4  # the trained batch holds the kept groups, nothing else
        assert r["sampling/bound_hit"] == float(kept < 4) and (kept == 4 or r["sampling/rounds"] == 4)
        assert 0 < r["reward/pass_rate"] < 1  # mixed groups only: never all right or all wrong
        # every valid sample of every round enters sampled/*; rounds draw 4 prompts each
        assert r["sampled/samples"] == 4 * 4 * r["sampling/rounds"]
        assert r["sampled/samples"] == r["samples"] + 4 * (r["sampling/dropped_groups"] + r["sampling/surplus_groups"])
    assert_weights_arrived(rows)


def test_dph_rl_exploration_groups_are_filtered_too(tmp_path, tiny_models):
    _, rows, _ = train(tmp_path, "dph_rl", *DYNAMIC, "algorithm.dph_rl.samples_per_prompt=4",
                       "algorithm.dph_rl.rehearsal_per_step=4", steps=2)
    for r in rows:
        assert r["sampling/trained_uniform_groups"] == 0 and 0 < r["reward/pass_rate"] < 1
        assert r["samples"] == 4 * r["sampling/informative_groups"]  # batch_metrics: exploration rows only
        assert "div/rehearsal" in r  # the stored pi_0 rows still enter the update
    assert_weights_arrived(rows)


def test_no_informative_group_skips_the_update_without_nan(tmp_path, tiny_models):
    _, rows, log = train(tmp_path, "grpo", *DYNAMIC, "algorithm.max_sampling_rounds=2",
                         "reward.fn=tests.test_dynamic_sampling:one", steps=2)
    for r in rows:
        assert r["sampling/skipped_update"] == 1 and r["sampling/rounds"] == 2 and r["sampling/bound_hit"] == 1
        assert r["sampling/dropped_groups"] == 8 and r["sampling/informative_groups"] == 0 and r["samples"] == 0
        assert "loss/policy" not in r and r["sampled/reward/mean"] == 1.0
        assert all(math.isfinite(v) for v in r.values())
    assert log.count("no informative group: the update is skipped") == 2


def test_resumed_dynamic_sampling_run_logs_each_step_once_and_samples_the_same(tmp_path, dynamic_reference):
    crash_dir = tmp_path / "crashed"
    code, log = run(crash_dir, "algorithm.dynamic_sampling=true", fault="after_generate:2")
    assert code == 3, log[-5000:]
    code, log = run(crash_dir, "algorithm.dynamic_sampling=true", "trainer.resume=auto")
    assert code == 0, log[-5000:]
    resumed, reference = metrics(crash_dir), dynamic_reference
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    assert sum(r["sampling/rounds"] for r in reference) > 4, "some step should need a second round"
    for a, b in zip(resumed, reference):
        for key in ("sampling/rounds", "sampling/dropped_groups", "sampled/reward/mean", "reward/mean", "loss/policy", "samples"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key, a[key], b[key])
