"""Several weighted reward functions as one: ``reward = sum_k weight_k * fn_k(response, answer, prompt, **columns)``.

Each function runs in its own ``RewardRunner`` (its own worker processes, timeout and failure
counting); the functions of a batch run one after the other. A sample is valid only when every
function returned a value for it: a failure is counted under the function's name and the sample
gets NaN, never a partial sum (that would be a substitute reward, see ``rlplat.rewards.runner``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Sequence

from rlplat.rewards.runner import RewardCall, RewardOutcome, RewardRunner
from rlplat.rewards.spec import RewardSpec


def combine(outcomes: Dict[str, RewardOutcome], weights: Dict[str, float]) -> RewardOutcome:
    """One outcome of B samples from each function's outcome (``outcomes[name]``, B rows each).

    rewards   Float32 [B]  ``sum_k weights[k] * outcomes[k].rewards``; NaN where any function failed
    valid     Bool    [B]  every function's ``valid``
    components             name -> that function's own rewards [B] (unweighted)
    errors / timeouts / failures: every function's, failures tagged with its name, in index order;
    seconds add up (the functions run one after another), call_seconds_max is the largest.
    """
    import torch

    names = list(outcomes)
    valid = torch.stack([outcomes[n].valid for n in names]).all(0)
    total = sum(weights[n] * outcomes[n].rewards.double() for n in names)
    rewards = torch.where(valid, total, torch.full_like(total, math.nan)).float()
    failures = sorted((dataclasses.replace(f, fn=n) for n in names for f in outcomes[n].failures),
                      key=lambda f: (f.index, names.index(f.fn)))
    n_returned = {n: max(int(o.valid.numel()) - o.timeouts, 0) for n, o in outcomes.items()}
    return RewardOutcome(
        rewards=rewards, valid=valid, errors=sum(o.errors for o in outcomes.values()),
        timeouts=sum(o.timeouts for o in outcomes.values()), failures=failures,
        seconds=sum(o.seconds for o in outcomes.values()),
        call_seconds_mean=sum(o.call_seconds_mean * n_returned[n] for n, o in outcomes.items())
        / max(sum(n_returned.values()), 1),
        call_seconds_max=max(o.call_seconds_max for o in outcomes.values()),
        components={n: outcomes[n].rewards.float() for n in names},
    )


class WeightedRewardRunner:
    """``RewardRunner``s for ``specs`` (``rlplat.rewards.spec.reward_specs``) scoring as one.
    A single spec's outcome is that runner's own (no ``components``), weighted by its weight."""

    def __init__(self, specs: Sequence[RewardSpec], timeout_s: float, num_workers: int = 1,
                 memory_limit_mb: int = 0) -> None:
        if not specs:
            raise ValueError("WeightedRewardRunner needs at least one reward function")
        self.specs = list(specs)
        self.runners: Dict[str, RewardRunner] = {}
        try:
            for s in self.specs:
                self.runners[s.name] = RewardRunner(s.fn, timeout_s, num_workers, memory_limit_mb=memory_limit_mb)
        except BaseException:
            self.close()
            raise

    def wait_ready(self) -> None:
        for runner in self.runners.values():
            runner.wait_ready()

    def score(self, calls: Sequence[RewardCall]) -> RewardOutcome:
        """Weighted rewards of ``calls`` (see ``combine``)."""
        outcomes = {s.name: self.runners[s.name].score(calls) for s in self.specs}
        if len(self.specs) == 1 and self.specs[0].weight == 1.0:
            return outcomes[self.specs[0].name]  # reward.fn: exactly the function's outcome
        return combine(outcomes, {s.name: s.weight for s in self.specs})

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()

    def __enter__(self) -> "WeightedRewardRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["WeightedRewardRunner", "combine"]
