"""What an algorithm is: a small declarative object turned into an ``AlgorithmPlan``.

The runtime never branches on the algorithm's name: it asks the plan which scorer roles to start,
how to sample, which advantage estimator to run and which divergence terms enter the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Tuple

from rlplat.config.errors import ConfigError
from rlplat.config.schema import RunConfig

# Where each anchor's log-probs come from: a scorer role, or samples stored before training.
ANCHOR_ROLES = {
    "reference": "reference",
    "teacher": "teacher",
    "snapshot": "snapshot",
    "initial": None,  # DPH-RL: stored pi_0 log-probs, no actor
}


@dataclass(frozen=True)
class AlgorithmPlan:
    """Everything the controller needs to run one algorithm; built once from the config."""

    name: str
    loop: str  # the controller's step program: rl | rehearsal | mirror_prox
    scorer_roles: FrozenSet[str]  # forward-only models to start: reference | teacher | snapshot
    preference: bool  # a pairwise preference model or judge is needed (Nash-MP)
    initial_samples: bool  # stored pi_0 rehearsal samples are needed (DPH-RL)
    group_size: int  # samples per prompt
    opponents: bool  # Nash-MP: each sample is compared with opponent samples of the same prompt
    advantage: str
    advantage_params: Tuple[Tuple[str, float], ...]
    terms: Tuple  # rlplat.losses.DivergenceTerm, one per active divergence term
    loss: object  # rlplat.losses.PolicyLossConfig


class Algorithm:
    """Base class. Subclasses set the class attributes and may extend ``check``.

    ``anchors``: anchors a divergence term may use. ``advantages``: allowed estimators (None = any
    but the preference one). ``samples_from``: which samples the divergence estimators must assume,
    per anchor ("policy" for on-policy rollouts, "anchor" for stored anchor samples).
    """

    name: str = ""
    loop: str = "rl"
    anchors: FrozenSet[str] = frozenset({"reference"})
    advantages: FrozenSet[str] | None = None
    needs_preference: bool = False
    needs_opponents: bool = False
    extra_roles: FrozenSet[str] = frozenset()  # scorer roles needed beyond divergence anchors
    samples_from = {"reference": "policy", "teacher": "policy", "snapshot": "policy", "initial": "anchor"}

    # ----------------------------------------------------------------- checks
    def check(self, cfg: RunConfig) -> None:
        """Raise ConfigError naming the key when this algorithm cannot run with ``cfg``."""
        from rlplat import advantages, divergences, masks, schedules

        alg = cfg.algorithm
        if alg.group_size < 2:
            raise ConfigError(f"algorithm.group_size={alg.group_size}: group-relative advantages need >= 2 samples per prompt")
        if alg.advantage not in advantages.names():
            raise ConfigError(f"algorithm.advantage='{alg.advantage}' is not registered; choose one of {advantages.names()}")
        allowed_adv = self.advantages if self.advantages is not None else set(advantages.names()) - {"nash_mp"}
        if alg.advantage not in allowed_adv:
            raise ConfigError(f"algorithm.advantage='{alg.advantage}' does not fit algorithm '{self.name}'; allowed: {sorted(allowed_adv)}")
        seen = set()
        for i, term in enumerate(alg.divergences):
            key = f"algorithm.divergences[{i}]"
            if term.name in seen:
                raise ConfigError(f"{key}.name='{term.name}' is used twice; term names label metrics and must be unique")
            seen.add(term.name)
            if term.anchor not in self.anchors:
                raise ConfigError(f"{key}.anchor='{term.anchor}' is not available to algorithm '{self.name}'; allowed: {sorted(self.anchors)}")
            if term.divergence not in divergences.names():
                raise ConfigError(f"{key}.divergence='{term.divergence}' is not registered; choose one of {divergences.names()}")
            try:
                divergences.get(term.divergence, **dict(term.params))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key}.params: {exc}") from None
            want = self.samples_from[term.anchor]
            got = divergences.info(term.divergence)
            if got not in (want, "full"):
                raise ConfigError(
                    f"{key}.divergence='{term.divergence}' assumes tokens sampled from the {got}, but anchor "
                    f"'{term.anchor}' is evaluated on tokens sampled from the {want}")
            if got == "full":
                works = [n for n in divergences.names() if divergences.info(n) == want]
                raise ConfigError(
                    f"{key}.divergence='{term.divergence}' needs full logits: full-distribution divergence terms do "
                    f"not train yet. Use a per-token estimator; on anchor '{term.anchor}' these work: {works}")
            if term.mask not in masks.names():
                raise ConfigError(f"{key}.mask='{term.mask}' is not registered; choose one of {masks.names()}")
            if term.coef.kind not in schedules.names():
                raise ConfigError(f"{key}.coef.kind='{term.coef.kind}' is not registered; choose one of {schedules.names()}")
        if self.needs_preference and not (alg.nash_mp.judge or cfg.roles.preference.path):
            raise ConfigError(f"algorithm '{self.name}' needs a preference model: set roles.preference.path or algorithm.nash_mp.judge")

    # ------------------------------------------------------------------ plan
    def plan(self, cfg: RunConfig) -> AlgorithmPlan:
        from rlplat.losses import DivergenceTerm, PolicyLossConfig

        self.check(cfg)
        alg = cfg.algorithm
        terms = tuple(DivergenceTerm.from_config(t) for t in alg.divergences)
        roles = {ANCHOR_ROLES[t.anchor] for t in terms if ANCHOR_ROLES[t.anchor]} | set(self.extra_roles)
        loss = PolicyLossConfig(
            eps_low=alg.eps_low, eps_high=alg.eps_high, dual_clip=alg.dual_clip, agg=alg.loss_agg,
            norm_len=alg.norm_len or cfg.rollout.max_new_tokens,
        )
        return AlgorithmPlan(
            name=self.name,
            loop=self.loop,
            scorer_roles=frozenset(roles),
            preference=self.needs_preference,
            initial_samples=any(t.anchor == "initial" for t in terms),
            group_size=alg.group_size,
            opponents=self.needs_opponents,
            advantage=alg.advantage,
            advantage_params=tuple(sorted(alg.advantage_params.items())),
            terms=terms,
            loss=loss,
        )
