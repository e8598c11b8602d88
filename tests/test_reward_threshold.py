"""reward.correct_threshold reaches KDRL's reward-guided masks through the plan, as it reaches
pass rates and DPH-RL's split: a reward of 0.7 at threshold 0.5 is correct and gets no KD term."""
import os

import pytest
import torch

from rlplat import algorithms
from rlplat.batch import Batch
from rlplat.config import load_config
from rlplat.losses import policy_loss

KDRL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "kdrl.yaml")


@pytest.fixture(autouse=True)
def _fresh_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def kdrl_plan(*overrides):
    cfg = load_config(KDRL, list(overrides))
    return algorithms.get(cfg.algorithm.name).plan(cfg)


def kd_batch(rewards, group_ids):
    """One-token responses; the policy is off the teacher on every row, so an unmasked row has KD > 0."""
    b = len(rewards)
    old = torch.full((b, 1), -1.0, dtype=torch.float64)
    return Batch(
        prompt_ids=torch.ones(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
        response_ids=torch.ones(b, 1, dtype=torch.long), response_mask=torch.ones(b, 1, dtype=torch.float64),
        group_ids=torch.as_tensor(group_ids), rewards=torch.tensor(rewards, dtype=torch.float64),
        advantages=torch.zeros(b, dtype=torch.float64),
        logprobs={"old": old, "teacher": torch.full((b, 1), -2.0, dtype=torch.float64)},
    )


def kd_grad_rows(plan, batch):
    """Which rows get a KD gradient under ``plan``'s loss (the advantages are 0: only KD acts)."""
    lp = batch.logprobs["old"].clone().requires_grad_(True)
    loss, _ = policy_loss(lp, batch, plan.loss, list(plan.terms), 0)
    (g,) = torch.autograd.grad(loss, lp)
    return (g[:, 0] != 0).tolist()


def test_plan_gives_the_reward_threshold_to_the_response_mask():
    batch = kd_batch([0.7, 0.2, 1.0], group_ids=[0, 1, 2])
    plan = kdrl_plan("reward.correct_threshold=0.5")
    assert plan.terms[0].mask_params == {"correct_threshold": 0.5}
    assert kd_grad_rows(plan, batch) == [False, True, False]  # 0.7 >= 0.5: correct, no KD
    assert kd_grad_rows(kdrl_plan(), batch) == [True, True, False]  # default threshold 1.0: 0.7 is wrong


def test_plan_gives_the_reward_threshold_to_the_group_mask():
    batch = kd_batch([0.7, 0.2, 0.2, 0.3], group_ids=[0, 0, 1, 1])
    plan = kdrl_plan("reward.correct_threshold=0.5", "algorithm.divergences.0.mask=group_no_correct")
    assert kd_grad_rows(plan, batch) == [False, False, True, True]  # group 0 has a correct response


def test_explicit_mask_threshold_wins_and_other_masks_get_none():
    plan = kdrl_plan("reward.correct_threshold=0.5", "algorithm.divergences.0.mask_params.correct_threshold=0.9")
    assert plan.terms[0].mask_params == {"correct_threshold": 0.9}
    assert kd_grad_rows(plan, kd_batch([0.7], group_ids=[0])) == [True]
    plan = kdrl_plan("reward.correct_threshold=0.5", "algorithm.divergences.0.mask=all")
    assert plan.terms[0].mask_params == {}  # "all" takes no threshold
