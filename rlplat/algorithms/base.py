"""What an algorithm is: a small declarative object turned into an ``AlgorithmPlan``.

The runtime never branches on the algorithm's name: it asks the plan which scorer roles to start,
how to sample, which advantage estimator to run and which divergence terms enter the loss.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import FrozenSet, Set, Tuple

from rlplat.config.errors import ConfigError
from rlplat.config.schema import RunConfig

# Where each anchor's log-probs come from: a scorer role, or samples stored before training.
ANCHOR_ROLES = {
    "reference": "reference",
    "teacher": "teacher",
    "snapshot": "snapshot",
    "initial": None,  # DPH-RL: stored pi_0 log-probs, no actor
}
# Anchors whose scorer can send top-k next-token distributions (roles.<role>.top_k_logits), which
# full-distribution divergence terms need.
FULL_ANCHORS = frozenset({"teacher"})


@dataclass(frozen=True)
class AlgorithmPlan:
    """Everything the controller needs to run one algorithm; built once from the config."""

    name: str
    loop: str  # the controller's step program: rl | rehearsal | mirror_prox | pairs
    pairs: bool  # the training data are preference pairs (data.chosen_key / rejected_key), not prompts
    scorer_roles: FrozenSet[str]  # forward-only models to start: reference | teacher | snapshot
    preference: bool  # a pairwise preference model or judge is needed (Nash-MP)
    initial_samples: bool  # stored pi_0 rehearsal samples are needed (DPH-RL)
    group_size: int  # samples per prompt
    opponents: bool  # Nash-MP: each sample is compared with opponent samples of the same prompt
    advantage: str
    advantage_params: Tuple[Tuple[str, object], ...]  # algorithm.advantage_params (+ reinforce_pp's norm)
    terms: Tuple  # rlplat.losses.DivergenceTerm, one per active divergence term
    loss: object  # rlplat.losses.PolicyLossConfig
    pair_loss: object = None  # pairs: the trainer's loss spec (rlplat.pairs.PairLoss)


def _reward_threshold(term, threshold: float):
    """``term`` whose mask, if it tells correct from incorrect, uses ``reward.correct_threshold``
    (as pass rates and DPH-RL's split do) unless the term's ``mask_params`` set their own."""
    from rlplat import masks

    if not masks.takes(term.mask, "correct_threshold") or "correct_threshold" in term.mask_params:
        return term
    return dataclasses.replace(term, mask_params={**term.mask_params, "correct_threshold": threshold})


class Algorithm:
    """Base class. Subclasses set the class attributes and may extend ``check``.

    ``anchors``: anchors a divergence term may use. ``advantages``: allowed estimators (None = any
    but the preference one). ``loss_types``: allowed surrogates (``algorithm.loss_type``; None = any
    registered in ``rlplat.losses.LOSS_TYPES``). ``samples_from``: which samples the divergence
    estimators must assume, per anchor ("policy" for on-policy rollouts, "anchor" for stored anchor samples).
    """

    name: str = ""
    loop: str = "rl"
    anchors: FrozenSet[str] = frozenset({"reference"})
    advantages: FrozenSet[str] | None = None
    loss_types: FrozenSet[str] | None = None
    needs_preference: bool = False
    needs_opponents: bool = False
    extra_roles: FrozenSet[str] = frozenset()  # scorer roles needed beyond divergence anchors
    loss_agg: str = "seq-mean-token-mean"  # used when algorithm.loss_agg is null
    several_updates_per_batch: bool = False  # the loop itself trains a batch more than once (Nash-MP)
    pairs: bool = False  # trains on preference pairs (``pair_loss``), not on sampled prompts
    # Config keys this algorithm never reads: a value other than the schema default is refused.
    unused_keys: Tuple[str, ...] = ("algorithm.fdpo", "algorithm.ctrl", "data.chosen_key", "data.rejected_key")
    # The loop can drop groups with identical rewards and sample more (DAPO, algorithm.dynamic_sampling).
    dynamic_sampling: bool = True
    samples_from = {"reference": "policy", "teacher": "policy", "snapshot": "policy", "initial": "anchor"}
    # The clipped surrogate is part of the loss; False: the divergence terms alone (pure distillation).
    surrogate: bool = True
    # Why this algorithm refuses rollout.env (multi-turn episodes); "" = it runs them.
    episodes_refusal: str = "its loop has not been run and tested with multi-turn episodes yet"

    # ----------------------------------------------------------------- checks
    def check(self, cfg: RunConfig) -> None:
        """Raise ConfigError naming the key when this algorithm cannot run with ``cfg``."""
        from rlplat import advantages, divergences, masks, schedules

        alg = cfg.algorithm
        self._check_unused(cfg)
        if alg.group_size < 2:
            raise ConfigError(f"algorithm.group_size={alg.group_size}: group-relative advantages need >= 2 samples per prompt")
        if alg.advantage not in advantages.names():
            raise ConfigError(f"algorithm.advantage='{alg.advantage}' is not registered; choose one of {advantages.names()}")
        allowed_adv = self.advantages if self.advantages is not None else set(advantages.names()) - {"nash_mp"}
        if alg.advantage not in allowed_adv:
            raise ConfigError(f"algorithm.advantage='{alg.advantage}' does not fit algorithm '{self.name}'; allowed: {sorted(allowed_adv)}")
        if alg.reinforce_pp_norm not in advantages.REINFORCE_PP_NORMS:
            raise ConfigError(f"algorithm.reinforce_pp_norm='{alg.reinforce_pp_norm}' is not one of "
                              f"{list(advantages.REINFORCE_PP_NORMS)} (token: whiten over the batch's response tokens, "
                              "as OpenRLHF and verl; sequence: std over the batch's sequences)")
        if alg.advantage != "reinforce_pp" and alg.reinforce_pp_norm != type(alg)().reinforce_pp_norm:
            raise ConfigError(f"algorithm.reinforce_pp_norm='{alg.reinforce_pp_norm}' acts only with "
                              f"algorithm.advantage='reinforce_pp' (it is '{alg.advantage}'); drop it")
        if self.surrogate and not self.pairs:
            self._check_loss_type(cfg)
        seen = set()
        for i, term in enumerate(alg.divergences):
            key = f"algorithm.divergences[{i}]"
            if term.name in seen:
                raise ConfigError(f"{key}.name='{term.name}' is used twice; term names label metrics and must be unique")
            seen.add(term.name)
            if term.name in ("policy", "explore"):  # rlplat.losses.POLICY_KEY, EXPLORE_KEY
                raise ConfigError(f"{key}.name='{term.name}' is reserved (it labels the surrogate's normalisers); rename the term")
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
                self._check_full_term(cfg, key, term, want)
            if term.mask not in masks.names():
                raise ConfigError(f"{key}.mask='{term.mask}' is not registered; choose one of {masks.names()}")
            if term.coef.kind not in schedules.names():
                raise ConfigError(f"{key}.coef.kind='{term.coef.kind}' is not registered; choose one of {schedules.names()}")
        self._check_top_k_logits(cfg)
        if alg.dynamic_sampling and not self.dynamic_sampling:
            raise ConfigError(f"algorithm.dynamic_sampling=true is not supported by algorithm '{self.name}' "
                              f"(its '{self.loop}' loop does not filter groups); set it to false")
        k = cfg.trainer.max_staleness
        if k < 0:
            raise ConfigError(f"trainer.max_staleness={k} must be >= 0 (0: synchronous)")
        if k and self.several_updates_per_batch:
            raise ConfigError(f"trainer.max_staleness={k}: algorithm '{self.name}' samples within its step from the "
                              f"policy it is updating (its '{self.loop}' loop); set trainer.max_staleness=0")
        if k and alg.dynamic_sampling:
            raise ConfigError(f"trainer.max_staleness={k} with algorithm.dynamic_sampling=true is not supported yet "
                              "(the rounds of a step depend on its rewards); set one of them off")
        if self.needs_preference and not (alg.nash_mp.judge or cfg.roles.preference.path):
            raise ConfigError(f"algorithm '{self.name}' needs a preference model: set roles.preference.path or algorithm.nash_mp.judge")

    def loss_aggregation(self, cfg: RunConfig) -> str:
        """The loss aggregation the run uses: ``algorithm.loss_agg``, else the loss type's (gspo's
        ``seq-mean-token-mean``, cispo's ``token-mean``), else this algorithm's default."""
        from rlplat.losses import LOSS_TYPES

        alg = cfg.algorithm
        own = LOSS_TYPES.get(alg.loss_type).agg if alg.loss_type in LOSS_TYPES else None
        return alg.loss_agg or own or self.loss_agg

    def _check_loss_type(self, cfg: RunConfig) -> None:
        """``algorithm.loss_type`` is registered and allowed here, and its rules (clip range, dual
        clip, aggregation, rollout correction: ``rlplat.losses.LossType.check``) hold; the entropy
        coefficient is a finite number >= 0."""
        import math

        from rlplat import losses
        from rlplat.rollout_correction import RolloutCorrection

        alg = cfg.algorithm
        allowed = sorted(self.loss_types if self.loss_types is not None else losses.LOSS_TYPES.names())
        if alg.loss_type not in losses.LOSS_TYPES:
            raise ConfigError(f"algorithm.loss_type='{alg.loss_type}' is not registered; choose one of {losses.LOSS_TYPES.names()}")
        if alg.loss_type not in allowed:
            raise ConfigError(f"algorithm.loss_type='{alg.loss_type}' does not fit algorithm '{self.name}'; allowed: {allowed}")
        spec = losses.LOSS_TYPES.get(alg.loss_type)
        eps_low = spec.eps_low if alg.eps_low is None else alg.eps_low
        eps_high = spec.eps_high if alg.eps_high is None else alg.eps_high
        try:
            spec.check(eps_low, eps_high, alg.dual_clip, self.loss_aggregation(cfg),
                       RolloutCorrection.from_config(alg.rollout_correction))
        except ValueError as exc:
            raise ConfigError(f"algorithm.loss_type='{alg.loss_type}': {exc}") from None
        if not (math.isfinite(alg.entropy_coef) and alg.entropy_coef >= 0):
            raise ConfigError(f"algorithm.entropy_coef={alg.entropy_coef} must be a finite number >= 0 (0: no entropy bonus)")

    def _check_full_term(self, cfg: RunConfig, key: str, term, want: str) -> None:
        """A full-distribution term compares the student's logits with the anchor's top-k
        distribution, which only the teacher's scorer sends (``roles.teacher.top_k_logits`` > 0)."""
        from rlplat import divergences
        from rlplat.divergences.topk import topk_term

        works = [n for n in divergences.names() if divergences.info(n) == want]
        if term.anchor not in FULL_ANCHORS:
            raise ConfigError(
                f"{key}.divergence='{term.divergence}' is a full-distribution divergence: it needs the anchor's "
                f"next-token distributions, which only {sorted(FULL_ANCHORS)} sends (roles.teacher.top_k_logits); "
                f"on anchor '{term.anchor}' use a per-token estimator: {works}")
        try:
            topk_term(term.divergence, **dict(term.params))
        except ValueError as exc:  # bad params, or sinkhorn's dense-only top_k
            raise ConfigError(f"{key}.params: {exc}") from None
        k = getattr(cfg.roles, ANCHOR_ROLES[term.anchor]).top_k_logits
        if k <= 0:
            raise ConfigError(
                f"{key}.divergence='{term.divergence}' needs the {term.anchor}'s top-k distributions: set "
                f"roles.{term.anchor}.top_k_logits > 0 (e.g. 32-512; the divergence is taken on those k tokens plus "
                f"one bucket for the rest), or use a per-token estimator: {works}")

    def _check_top_k_logits(self, cfg: RunConfig) -> None:
        """``roles.<anchor>.top_k_logits`` acts only for a full-distribution term on that anchor:
        refused otherwise (the scorer would compute and ship distributions no loss reads)."""
        from rlplat import divergences

        for anchor in sorted(FULL_ANCHORS):
            role = ANCHOR_ROLES[anchor]
            k = getattr(cfg.roles, role).top_k_logits
            if k < 0:
                raise ConfigError(f"roles.{role}.top_k_logits={k} must be >= 0 (0: log-probs of the sampled tokens only)")
            used = any(t.anchor == anchor and t.divergence in divergences.names() and divergences.info(t.divergence) == "full"
                       for t in cfg.algorithm.divergences)
            if k and not used:
                raise ConfigError(
                    f"roles.{role}.top_k_logits={k} acts only for a full-distribution divergence term with anchor "
                    f"'{anchor}' (full_forward_kl, full_reverse_kl, full_jsd, sinkhorn in algorithm.divergences); there is none: "
                    "add one or set it to 0")

    def _check_unused(self, cfg: RunConfig) -> None:
        """Refuse a non-default value of a key in ``unused_keys``: accepted, it would be ignored."""
        default = RunConfig()
        for key in self.unused_keys:
            mine, theirs = cfg, default
            for part in key.split("."):
                mine, theirs = getattr(mine, part), getattr(theirs, part)
            if mine != theirs:
                raise ConfigError(f"{key} is set, but algorithm '{self.name}' does not use it; remove it from the config")

    def _check_unused_roles(self, cfg: RunConfig, roles: Set[str]) -> None:
        """Refuse settings of a model role this run never starts: accepted, they would be ignored."""
        default = RunConfig().roles
        used = roles | ({"preference"} if self.needs_preference else set())
        for role in ("reference", "teacher", "preference"):
            if role not in used and getattr(cfg.roles, role) != getattr(default, role):
                raise ConfigError(f"roles.{role} is set, but algorithm '{self.name}' with these divergence terms starts "
                                  f"no {role} model (no term is anchored at it); remove roles.{role} from the config")

    def updates_per_step(self, cfg: RunConfig) -> int:
        """Optimizer updates one training step makes: ``StepContext.train`` runs
        ``algorithm.ppo_epochs`` x ``algorithm.mini_batches`` of them, and the ``rl``, ``rehearsal``
        and ``pairs`` loops call it once per step. A loop that calls it more often says so here."""
        return cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches

    def total_updates(self, cfg: RunConfig) -> int:
        """S, the optimizer updates the run plans: ``trainer.max_steps`` x ``updates_per_step``.
        The learning-rate schedule (``rlplat.lr_schedules``) runs over them. It counts the updates
        actually taken, so a step that takes fewer (dynamic sampling's skipped update, a NaN/inf
        loss, fewer groups than ``algorithm.mini_batches``) leaves the run ending above the floor."""
        return cfg.trainer.max_steps * self.updates_per_step(cfg)

    def pair_loss(self, cfg: RunConfig):
        """The trainer's loss spec for preference pairs (``pairs`` algorithms), else None."""
        return None

    def old_from_forward(self, cfg: RunConfig) -> bool:
        """True when every batch meets exactly one optimizer update, on the current weights (pi_prox,
        whatever version sampled the batch): then the "old" log-probs are the training forward's own
        and no separate pass computes them."""
        alg = cfg.algorithm
        if not self.surrogate:
            return True  # no surrogate: nothing reads pi_prox, so no forward computes it
        # MIS drops tokens by pi_prox / mu, which the loss normalisers must know before the forward.
        masks = alg.rollout_correction.kind == "mis"
        return not self.several_updates_per_batch and alg.ppo_epochs == 1 and alg.mini_batches == 1 and not masks

    def policy_advantage(self, cfg: RunConfig):
        """An ``rlplat.losses.PolicyAdvantage`` when the advantage depends on the policy being
        updated (recomputed in the loss at every update); None: advantages are computed once per batch."""
        return None

    # ------------------------------------------------------------------ plan
    def plan(self, cfg: RunConfig) -> AlgorithmPlan:
        from rlplat.losses import DivergenceTerm, PolicyLossConfig
        from rlplat.rollout_correction import RolloutCorrection

        self.check(cfg)
        alg = cfg.algorithm
        terms = tuple(_reward_threshold(DivergenceTerm.from_config(t), cfg.reward.correct_threshold) for t in alg.divergences)
        roles = {ANCHOR_ROLES[t.anchor] for t in terms if ANCHOR_ROLES[t.anchor]} | set(self.extra_roles)
        self._check_unused_roles(cfg, roles)
        loss = PolicyLossConfig(
            loss_type=alg.loss_type, eps_low=alg.eps_low, eps_high=alg.eps_high, dual_clip=alg.dual_clip,
            agg=self.loss_aggregation(cfg), norm_len=alg.norm_len or cfg.rollout.max_new_tokens,
            advantage=self.policy_advantage(cfg), old_from_forward=self.old_from_forward(cfg),
            rollout_correction=RolloutCorrection.from_config(alg.rollout_correction),
            surrogate=self.surrogate, entropy_coef=alg.entropy_coef,
        )
        advantage_params = dict(alg.advantage_params)
        if alg.advantage == "reinforce_pp":
            advantage_params["norm"] = alg.reinforce_pp_norm
        return AlgorithmPlan(
            name=self.name,
            loop=self.loop,
            pairs=self.pairs,
            scorer_roles=frozenset(roles),
            preference=self.needs_preference,
            initial_samples=any(t.anchor == "initial" for t in terms),
            group_size=alg.group_size,
            opponents=self.needs_opponents,
            advantage=alg.advantage,
            advantage_params=tuple(sorted(advantage_params.items())),
            terms=terms,
            loss=loss,
            pair_loss=self.pair_loss(cfg),
        )
