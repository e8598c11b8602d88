"""The algorithm families of docs/algorithms.md, each a declaration on top of ``Algorithm``."""
from __future__ import annotations

from rlplat.algorithms.base import Algorithm
from rlplat.config.errors import ConfigError
from rlplat.config.schema import RunConfig
from rlplat.registry import Registry

ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


def register(cls: type) -> type:
    ALGORITHMS.register(cls.name)(cls())
    return cls


@register
class GRPO(Algorithm):
    """Group-relative policy optimisation: clipped surrogate + optional KL to the reference."""

    name = "grpo"
    episodes_refusal = ""  # every loss, estimator and divergence term reads Batch.loss_mask
    anchors = frozenset({"reference"})


@register
class KDRL(Algorithm):
    """GRPO without reference KL plus reverse KL (k2) to a teacher on the student's rollouts."""

    name = "kdrl"
    anchors = frozenset({"reference", "teacher"})

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        if not any(t.anchor == "teacher" for t in cfg.algorithm.divergences):
            raise ConfigError("algorithm 'kdrl' needs a divergence term with anchor 'teacher' in algorithm.divergences")
        if not cfg.roles.teacher.path:
            raise ConfigError("algorithm 'kdrl' needs a teacher: set roles.teacher.path (a model sharing the policy's tokenizer)")


@register
class Distill(Algorithm):
    """On-policy distillation (GKD-style, arXiv 2306.13649): the student samples, the loss is the
    divergence terms to the teacher alone (no surrogate, no reward in the loss). Rewards are still
    computed and logged (``reward/*``), and advantages with them, but nothing trains on them."""

    name = "distill"
    anchors = frozenset({"teacher"})
    surrogate = False
    dynamic_sampling = False  # it filters groups by their rewards, which this loss does not use
    # The surrogate's keys: accepted, they would be ignored.
    unused_keys = Algorithm.unused_keys + ("algorithm.eps_low", "algorithm.eps_high", "algorithm.dual_clip",
                                           "algorithm.rollout_correction", "algorithm.loss_type",
                                           "algorithm.entropy_coef")

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        if not cfg.algorithm.divergences:
            raise ConfigError("algorithm 'distill' trains on its divergence terms alone: add one with anchor 'teacher' "
                              "to algorithm.divergences (e.g. full_jsd with roles.teacher.top_k_logits > 0)")
        if not cfg.roles.teacher.path:
            raise ConfigError("algorithm 'distill' needs a teacher: set roles.teacher.path (a model sharing the policy's tokenizer)")


@register
class DPHRL(Algorithm):
    """RL on exploration prompts + a mass-covering divergence on stored pi_0 rehearsal samples."""

    name = "dph_rl"
    loop = "rehearsal"
    anchors = frozenset({"initial"})

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        terms = cfg.algorithm.divergences
        if not any(t.anchor == "initial" for t in terms):
            raise ConfigError("algorithm 'dph_rl' needs a divergence term with anchor 'initial' in algorithm.divergences")
        for i, t in enumerate(terms):
            if t.mask != "rehearsal":
                raise ConfigError(f"algorithm.divergences[{i}].mask='{t.mask}': DPH-RL applies its divergence to rehearsal rows only; use mask 'rehearsal'")
        d = cfg.algorithm.dph_rl
        if d.samples_per_prompt < 1:
            raise ConfigError(f"algorithm.dph_rl.samples_per_prompt={d.samples_per_prompt} must be >= 1")
        if d.rehearsal_per_step < 1:
            raise ConfigError(f"algorithm.dph_rl.rehearsal_per_step={d.rehearsal_per_step} must be >= 1")


@register
class NashMP(Algorithm):
    """Nash learning from preferences by Mirror Prox: half step vs pi_k, full step vs pi_{k+1/2}."""

    name = "nash_mp"
    episodes_refusal = "its judge compares single completions of one prompt, not episodes"
    loop = "mirror_prox"
    anchors = frozenset({"reference", "snapshot"})
    advantages = frozenset({"nash_mp"})
    needs_preference = True
    needs_opponents = True
    extra_roles = frozenset({"reference", "snapshot"})  # the advantage's sequence log-ratios
    several_updates_per_batch = True  # inner_steps updates per proximal step, two proximal steps
    loss_agg = "seq-mean-token-sum"  # REINFORCE: a per-token mean would bias the 1/2 baseline by length
    # Its advantage is a REINFORCE one aggregated per sequence (token sum): gspo's per-sequence mean and
    # cispo's token mean would both reweight sequences by length and bias the 1/2 baseline.
    loss_types = frozenset({"ppo"})

    def policy_advantage(self, cfg: RunConfig):
        from rlplat.losses import PolicyAdvantage

        n = cfg.algorithm.nash_mp
        return PolicyAdvantage(
            name=cfg.algorithm.advantage, params=(("beta", n.beta), ("eta", n.eta)),
            logratios=(("seq_logratio_ref", "reference"), ("seq_logratio_snapshot", "snapshot")))
    dynamic_sampling = False  # win rates against opponents, sampled in two phases, are not one reward group

    def updates_per_step(self, cfg: RunConfig) -> int:
        """``launch.loops.mirror_prox``: a half and a full proximal step of ``inner_steps`` calls of
        ``StepContext.train`` each. Restoring pi_k before the full step restores its parameters and
        Adam state but not the schedule's count: the full step's updates are updates taken, so the
        learning rate keeps moving forward (``TrainerRank.restore_state``)."""
        return 2 * cfg.algorithm.nash_mp.inner_steps * super().updates_per_step(cfg)

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        n = cfg.algorithm.nash_mp
        if n.beta <= 0 or n.eta <= 0:
            raise ConfigError(f"algorithm.nash_mp.beta={n.beta} and eta={n.eta} must both be > 0")
        if n.inner_steps < 1:
            raise ConfigError(f"algorithm.nash_mp.inner_steps={n.inner_steps} must be >= 1")
        if cfg.algorithm.advantage_params:
            raise ConfigError(f"algorithm.advantage_params={dict(cfg.algorithm.advantage_params)}: Nash-MP's advantage "
                              "takes its parameters from algorithm.nash_mp (beta, eta); leave advantage_params empty")


@register
class NashOMD(NashMP):
    """Nash-MP's one-step baseline, online mirror descent: self-play against the current policy,
    each iteration the half step alone (``launch.loops.mirror_prox.MirrorDescentLoop``). The same
    keys as Nash-MP (``algorithm.nash_mp``: beta, eta, inner_steps, judge) and the same advantage;
    the step size eta is the same, the second (extragradient) step is what it lacks."""

    name = "nash_omd"
    loop = "mirror_descent"

    def updates_per_step(self, cfg: RunConfig) -> int:
        """One proximal step of ``inner_steps`` calls of ``StepContext.train`` per iteration."""
        return cfg.algorithm.nash_mp.inner_steps * Algorithm.updates_per_step(self, cfg)


@register
class CTRL(Algorithm):
    """InfAlign-CTRL: KL-regularised RL on a calibrated-then-transformed reward. The reward of each
    sample is calibrated against ``algorithm.ctrl.reference_samples`` samples of pi_ref of the
    same prompt (drawn once before training), then transformed (``algorithm.ctrl.transform``)."""

    name = "ctrl"
    loop = "ctrl"
    anchors = frozenset({"reference"})
    unused_keys = ("algorithm.fdpo", "data.chosen_key", "data.rejected_key")

    def check(self, cfg: RunConfig) -> None:
        from rlplat.rewards import transforms

        super().check(cfg)
        c = cfg.algorithm.ctrl
        if c.reference_samples < 2:
            raise ConfigError(f"algorithm.ctrl.reference_samples={c.reference_samples}: calibration needs >= 2 "
                              "reference samples per prompt (16-64 is usual)")
        if c.transform not in transforms.names():
            raise ConfigError(f"algorithm.ctrl.transform='{c.transform}' is not registered; choose one of {transforms.names()}")
        try:
            transforms.check_params(c.transform, {} if c.t is None else {"t": c.t})
        except ValueError as exc:
            raise ConfigError(f"algorithm.ctrl.t: {exc}") from None
        if cfg.roles.reference.path and cfg.roles.reference.path != cfg.model.path:
            raise ConfigError(
                f"roles.reference.path='{cfg.roles.reference.path}': CTRL draws its calibration samples of pi_ref "
                "with the rollout engines before the first update, when they hold model.path; leave "
                "roles.reference.path unset (pi_ref = the initial policy)")
        if not any(t.anchor == "reference" for t in cfg.algorithm.divergences):
            raise ConfigError("algorithm 'ctrl' is KL-regularised RL: add a divergence term with anchor 'reference' "
                              "to algorithm.divergences")


@register
class FDPO(Algorithm):
    """f-DPO: offline preference pairs, ``-log sigmoid(beta (f'(u_w) - f'(u_l)))`` under the
    divergence ``algorithm.fdpo.divergence``; reference log-probs scored once before training."""

    name = "fdpo"
    episodes_refusal = "f-DPO trains on stored preference pairs and samples no rollouts"
    loop = "pairs"
    anchors = frozenset()  # the divergence is the loss itself (algorithm.fdpo), not a term
    extra_roles = frozenset({"reference"})
    pairs = True
    dynamic_sampling = False
    # Keys of the online objective that the pair loss never reads: refused unless left at their defaults.
    unused_keys = ("algorithm.group_size", "algorithm.advantage", "algorithm.advantage_params", "algorithm.eps_low",
                   "algorithm.eps_high", "algorithm.dual_clip", "algorithm.loss_agg", "algorithm.norm_len",
                   "algorithm.dynamic_sampling", "algorithm.max_sampling_rounds", "algorithm.rollout_correction",
                   "algorithm.divergences", "algorithm.dph_rl", "algorithm.nash_mp", "algorithm.ctrl", "trainer.max_staleness",
                   "rollout.ignore_eos", "algorithm.reinforce_pp_norm", "algorithm.loss_type", "algorithm.entropy_coef")

    def check(self, cfg: RunConfig) -> None:
        from rlplat.divergences.links import LINKS

        super().check(cfg)
        f = cfg.algorithm.fdpo
        if f.divergence not in LINKS:
            raise ConfigError(f"algorithm.fdpo.divergence='{f.divergence}' is not registered; choose one of {LINKS.names()}")
        if f.beta <= 0:
            raise ConfigError(f"algorithm.fdpo.beta={f.beta} must be > 0")
        if not 0 < f.alpha < 1:
            raise ConfigError(f"algorithm.fdpo.alpha={f.alpha} must be in (0, 1)")
        if f.divergence != "alpha" and f.alpha != type(f)().alpha:
            raise ConfigError(f"algorithm.fdpo.alpha={f.alpha} acts only with algorithm.fdpo.divergence='alpha' "
                              f"(it is '{f.divergence}'); drop it or choose the alpha divergence")
        if cfg.rollout.temperature != 1.0:
            raise ConfigError(f"rollout.temperature={cfg.rollout.temperature}: f-DPO's sequence log-probs are the "
                              "policy's own (temperature 1; the trainer and scorers divide logits by rollout.temperature)")

    def pair_loss(self, cfg: RunConfig):
        from rlplat.pairs import PairLoss

        f = cfg.algorithm.fdpo
        return PairLoss(f.divergence, f.beta, f.alpha)
