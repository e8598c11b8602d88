"""Reward scoring off the driver: a plain class the controller wraps with ``ray.remote``.

    worker = ray.remote(num_cpus=cfg.resources.reward_cpus)(RewardWorker).remote(cfg.reward)
    ray.get(worker.ready.remote())          # surfaces a reward fn that cannot load, before step 1
    outcome = ray.get(worker.score.remote(responses, answers, prompts, columns))

Inside, a ``WeightedRewardRunner`` keeps ``reward.num_workers`` processes per reward function
(``reward.fn``, or each of ``reward.fns``) with a per-call timeout of ``reward.timeout_s`` and
sums the weighted values (see ``rlplat.rewards.runner``, ``rlplat.rewards.weighted``). A ``module:function``
reward must be importable in the actor: pass its directory in the actor's runtime_env
(``env_vars={"PYTHONPATH": ...}``) when it is not installed.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Optional, Sequence, Union

from actors import quiet
from rlplat.batch import Batch
from rlplat.config.schema import RewardConfig, RewardFnConfig
from rlplat.rewards.runner import RewardOutcome
from rlplat.rewards.spec import reward_specs
from rlplat.rewards.weighted import WeightedRewardRunner


class RewardWorker:
    """Scores batches with the reward function of ``reward_cfg`` (a ``RewardConfig`` or its dict)."""

    def __init__(self, reward_cfg: Union[RewardConfig, Dict[str, Any]]) -> None:
        quiet.apply()  # third-party log noise off (trainer.log_level, via RLPLAT_LOG_LEVEL)
        if isinstance(reward_cfg, dict):
            known = {f.name for f in fields(RewardConfig)}
            unknown = sorted(set(reward_cfg) - known)
            if unknown:
                raise ValueError(f"unknown reward config keys {unknown}; allowed: {sorted(known)}")
            fns = [RewardFnConfig(**f) if isinstance(f, dict) else f for f in reward_cfg.get("fns", [])]
            reward_cfg = RewardConfig(**{**reward_cfg, "fns": fns})
        self.cfg = reward_cfg
        self.runner = WeightedRewardRunner(reward_specs(reward_cfg), reward_cfg.timeout_s, reward_cfg.num_workers,
                                           memory_limit_mb=reward_cfg.memory_limit_mb)

    def ready(self) -> bool:
        """Block until the worker processes have loaded the function (raises ``RewardSetupError``)."""
        self.runner.wait_ready()
        return True

    def score(
        self, responses: Sequence[str], answers: Sequence[Optional[str]], prompts: Sequence[str],
        columns: Optional[Sequence[Optional[Dict[str, Any]]]] = None,
    ) -> RewardOutcome:
        """Rewards for B samples; sample i is ``sum_k w_k fn_k(responses[i], answers[i], prompts[i],
        **columns[i])`` (each function gets the columns it accepts; ``columns`` None: none).
        The outcome is picklable (tensors + dataclasses) and never hides a failure: see
        ``RewardOutcome``."""
        columns = [None] * len(responses) if columns is None else list(columns)
        if not len(responses) == len(answers) == len(prompts) == len(columns):
            raise ValueError(
                f"score() needs equally long lists, got {len(responses)} responses, {len(answers)} answers, "
                f"{len(prompts)} prompts, {len(columns)} column dicts"
            )
        return self.runner.score(list(zip(responses, answers, prompts, columns)))

    def score_batches(self, *batches: Batch) -> RewardOutcome:
        """``score`` of every row of ``batches`` (rollout Batches with ``meta`` "response_text",
        "answer", "prompt" and, for data rows, "extra"; passed as ObjectRefs, so the call starts
        when they are generated), in row order."""
        m = {k: [x for b in batches for x in b.meta.get(k, [None] * len(b))]
             for k in ("response_text", "answer", "prompt", "extra")}
        return self.score(m["response_text"], m["answer"], m["prompt"], m["extra"])

    def close(self) -> None:
        self.runner.close()
