"""The policy loss: clipped surrogate on exploration rows plus pluggable divergence terms.

``loss = aggregate(surrogate, explore tokens) + sum_terms coef_t * aggregate(D(logp, anchor), term tokens)
- entropy_coef * token-mean(entropy, explore tokens)``
(docs/algorithms.md#the-shared-objective). The surrogate is one of ``LOSS_TYPES`` (``ppo``, the clipped
token-level surrogate; ``gspo``, its sequence-ratio form; ``cispo``, REINFORCE with clipped, detached
importance weights). Rows of kind ``DATA_REHEARSAL`` get no surrogate (DPH-RL); each
divergence term selects its rows with a sequence mask from ``rlplat.masks``.

Micro-batching and data parallelism: a mini-batch is split into micro-batches on each of
``world_size`` ranks, micro-batch gradients are *summed* and then *averaged* over ranks. Pass
``totals`` (global token/sequence counts per loss component, see ``loss_totals``) and every
micro-batch loss becomes ``sum of its contributions / global count * world_size``, so the
result equals the gradient of the loss over the whole mini-batch exactly. Without ``totals``
each call normalises by its own counts (plain means). If the engine scales the micro-batch loss
by ``1 / gradient_accumulation_steps`` (DeepSpeed's default), undo that scaling, or the update
shrinks by that factor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from rlplat import advantages as advantage_estimators
from rlplat import divergences
from rlplat import masks as masks_lib
from rlplat import rollout_correction
from rlplat.divergences import links
from rlplat.batch import DATA_EXPLORE, DATA_REHEARSAL, Batch
from rlplat.registry import Registry
from rlplat.rollout_correction import RolloutCorrection
from rlplat.schedules import CoefSchedule

if TYPE_CHECKING:
    from rlplat.config.schema import DivergenceTermConfig
    from rlplat.divergences.topk import TopK

POLICY_KEY = "policy"  # key of the surrogate's normalisers in a totals mapping
# component_tokens key: the exploration tokens before rollout correction masks any (rollout/* metrics)
EXPLORE_KEY = "explore"


# ============================================================================ aggregation
@dataclass
class LossTotals:
    """Global normalisers of one loss component: response tokens and sequences (rows with >= 1
    token) over the whole mini-batch on all ranks, and the number of data-parallel ranks."""

    tokens: float
    seqs: float
    world_size: int = 1

    def __add__(self, other: "LossTotals") -> "LossTotals":
        if self.world_size != other.world_size:
            raise ValueError(f"LossTotals: cannot add world_size {self.world_size} and {other.world_size}")
        return LossTotals(self.tokens + other.tokens, self.seqs + other.seqs, self.world_size)

    @staticmethod
    def of(mask: torch.Tensor, world_size: int = 1) -> "LossTotals":
        """Counts of a Float[B, R] token mask (this rank's part; sum the ranks' parts for the global one)."""
        return LossTotals(float(mask.sum()), float((mask.sum(-1) > 0).sum()), world_size)


# A mode returns (sum of per-row or per-token contributions, which count normalises it).
AggFn = Callable[[torch.Tensor, torch.Tensor, Optional[int]], Tuple[torch.Tensor, str]]
AGGREGATIONS: Registry[AggFn] = Registry("loss aggregation mode")


@AGGREGATIONS.register("token-mean")
def _token_mean(v: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int]) -> Tuple[torch.Tensor, str]:
    """DAPO: every token weighs the same across the mini-batch."""
    return v.sum(), "tokens"


@AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(v: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int]) -> Tuple[torch.Tensor, str]:
    """Original GRPO: mean over a sequence's tokens, then over sequences."""
    return (v.sum(-1) / mask.sum(-1).clamp(min=1)).sum(), "seqs"


@AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(v: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int]) -> Tuple[torch.Tensor, str]:
    """REINFORCE on sequences (Nash-MP): token sum per sequence, mean over sequences, so a
    sequence's gradient is ``A * grad log pi(y)`` whatever its length."""
    return v.sum(), "seqs"


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(v: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int]) -> Tuple[torch.Tensor, str]:
    """Dr.GRPO: token sum over a constant length (no length bias), then mean over sequences."""
    if norm_len is None or norm_len <= 0:
        raise ValueError(f"loss aggregation 'seq-mean-token-sum-norm' needs a positive norm_len, got {norm_len}")
    return (v.sum(-1) / norm_len).sum(), "seqs"


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    totals: Optional[LossTotals] = None,
    norm_len: Optional[int] = None,
) -> torch.Tensor:
    """Scalar loss from per-token ``values`` Float[B, R] over ``mask`` Float[B, R] (1 = counts).

    Masked positions contribute exactly 0 value and send exactly 0 gradient into ``values``, even
    if ``values`` is inf/NaN there (an upstream op with an infinite derivative at such a position
    would still make 0 * inf = NaN: sanitise its inputs first, as ``policy_loss`` does). An
    all-zero mask gives exactly 0 (connected to the graph, zero gradient).
    """
    if values.shape != mask.shape:
        raise ValueError(f"aggregate: values shape {tuple(values.shape)} != mask shape {tuple(mask.shape)}")
    mask = mask.to(values.dtype)
    masked = torch.where(mask > 0, values * mask, torch.zeros_like(values))
    total, unit = AGGREGATIONS.get(mode)(masked, mask, norm_len)
    local = LossTotals.of(mask)
    local_count = getattr(local, unit)
    if totals is None:
        count, scale = local_count, 1.0
    else:
        count, scale = getattr(totals, unit), float(totals.world_size)
        # 1e-6 relative slack: counts may arrive as float32 sums from an all-reduce
        if count < local_count * (1 - 1e-6):
            raise ValueError(
                f"aggregate: global {unit} count {count} is smaller than this micro-batch's {local_count}; "
                "totals must cover the whole mini-batch on all ranks"
            )
    if count <= 0:
        return total * 0.0  # total is exactly 0 here (nothing unmasked)
    return total * (scale / count)


# ============================================================================ loss types
# fn(logp, old, adv, on, eps_low, eps_high, dual_clip) -> (per-token loss Float[B, R], the ratio the
# clip acted on Float[B, R] (detached; actor/ratio_mean), clipped Bool[B, R] (actor/clip_frac)).
# ``adv`` is the advantage broadcast to the tokens and 0 off ``on`` (Bool[B, R], the tokens in the loss).
SurrogateFn = Callable[..., Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
DEFAULT_AGG = "seq-mean-token-mean"


@dataclass(frozen=True)
class LossType:
    """One ``algorithm.loss_type``: the per-token surrogate and the rules it needs.

    ``eps_low`` / ``eps_high``: its clip range when the config leaves them null. ``agg``: the loss
    aggregation its objective is written with, used when ``algorithm.loss_agg`` is null (None: the
    algorithm's); ``agg_fixed``: no other aggregation is accepted. ``lower_bound_below_one``: ``eps_low``
    must be < 1 (``1 - eps_low`` a positive lower clip); otherwise ``eps_low >= 1`` means no lower
    bound. ``dual_clip``: accepts ``dual_clip``. ``token_masks``: accepts a token-level MIS mask
    (which drops single tokens of a row)."""

    name: str
    fn: SurrogateFn
    eps_low: float
    eps_high: float
    agg: Optional[str] = None
    agg_fixed: bool = False
    lower_bound_below_one: bool = True
    dual_clip: bool = False
    token_masks: bool = True

    def check(self, eps_low: float, eps_high: float, dual_clip: Optional[float], agg: str,
              correction: RolloutCorrection) -> None:
        """Raise ValueError naming the setting when this loss type cannot run with it: the one
        place the loss types' rules live (``PolicyLossConfig`` and ``Algorithm.check`` both call it)."""
        if not math.isfinite(eps_low) or eps_low < 0 or (self.lower_bound_below_one and eps_low >= 1):
            bound = "[0, 1)" if self.lower_bound_below_one else ">= 0 (>= 1: no lower bound)"
            raise ValueError(f"eps_low must be in {bound} for loss type '{self.name}', got {eps_low}")
        if not math.isfinite(eps_high) or eps_high < 0:
            raise ValueError(f"eps_high must be >= 0 for loss type '{self.name}', got {eps_high}")
        if dual_clip is not None and not self.dual_clip:
            raise ValueError(f"dual_clip={dual_clip} bounds the loss of the PPO surrogate; loss type '{self.name}' "
                             "has no such term: leave dual_clip unset (null)")
        if self.agg_fixed and agg != self.agg:
            raise ValueError(f"loss type '{self.name}' is defined with the aggregation '{self.agg}' (a mean over each "
                             f"sequence's tokens, then over sequences); got '{agg}': set algorithm.loss_agg to "
                             f"'{self.agg}' or null")
        if correction.kind == "mis" and correction.level == "token" and not self.token_masks:
            raise ValueError(f"loss type '{self.name}' takes one ratio per sequence, over all its model tokens; token-level "
                             "MIS would drop single tokens from it: use algorithm.rollout_correction.level=sequence, "
                             "or kind tis")


LOSS_TYPES: Registry[LossType] = Registry("loss type")


def register_loss_type(name: str, **spec: Any) -> Callable[[SurrogateFn], SurrogateFn]:
    """Decorator: ``@register_loss_type("name", eps_low=..., eps_high=..., ...)`` on a ``SurrogateFn``."""

    def deco(fn: SurrogateFn) -> SurrogateFn:
        LOSS_TYPES.register(name)(LossType(name=name, fn=fn, **spec))
        return fn

    return deco


@register_loss_type("ppo", eps_low=0.2, eps_high=0.2, dual_clip=True)
def _ppo(logp, old, adv, on, eps_low, eps_high, dual_clip):
    """PPO (Schulman et al., arXiv 1707.06347), per token:
    ``max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))``, ``rho = exp(lp - lp_old)``; with
    ``dual_clip`` = c, a token with ``A < 0`` has its loss bounded by ``-c A`` (Ye et al.)."""
    # Sanitise before exp: a masked position with a huge log-ratio would give inf, and
    # where()'s zero gradient times inf is NaN.
    rho = torch.where(on, logp - old, torch.zeros_like(logp)).exp()
    unclipped = -adv * rho
    clipped = -adv * rho.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    if dual_clip is not None:
        bound = -adv * dual_clip  # > 0 where adv < 0
        dual = (adv < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        clip_active = clip_active | dual
    return loss, rho.detach(), clip_active


@register_loss_type("gspo", eps_low=3e-4, eps_high=4e-4, agg="seq-mean-token-mean", agg_fixed=True, token_masks=False)
def _gspo(logp, old, adv, on, eps_low, eps_high, dual_clip):
    """GSPO (Zheng et al., arXiv 2507.18071), its GSPO-token form as verl's ``compute_policy_loss_gspo``:
    the sequence ratio ``s_i = exp(mean over row i's tokens of (lp - lp_old))`` (the geometric mean of
    its token ratios), and per token ``s_i,t = sg(s_i) * exp(lp_t - sg(lp_t))`` (value ``s_i``, gradient
    ``s_i * grad lp_t``), clipped PPO-style: ``max(-A s_i,t, -A clip(s_i,t, 1 - eps_low, 1 + eps_high))``.
    Aggregated as ``seq-mean-token-mean``, its gradient for a sequence-level ``A_i`` is exactly GSPO's
    ``-A_i grad s_i`` (clipped rows: 0), ``grad s_i = s_i * mean_t grad lp_t``."""
    zero = torch.zeros_like(logp)
    log_ratio = torch.where(on, logp - old, zero)
    seq = log_ratio.sum(-1, keepdim=True) / on.sum(-1, keepdim=True).clamp(min=1)
    lp = torch.where(on, logp, zero)
    # verl's order (volcengine/verl#2775): lp - sg(lp) is exactly 0, so the value is sg(log s_i) exactly.
    log_s = torch.where(on, lp - lp.detach() + seq.detach(), zero)
    s = log_s.exp()
    unclipped = -adv * s
    clipped = -adv * s.clamp(1 - eps_low, 1 + eps_high)
    return torch.maximum(unclipped, clipped), s.detach(), clipped > unclipped


@register_loss_type("cispo", eps_low=1.0, eps_high=0.2, agg="token-mean", lower_bound_below_one=False)
def _cispo(logp, old, adv, on, eps_low, eps_high, dual_clip):
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4-5), as verl's ``compute_policy_loss_cispo``: per token
    ``-sg(clip(rho, 1 - eps_low, 1 + eps_high)) * A * lp``: REINFORCE weighted by the clipped, detached
    importance weight. No token loses its gradient; only the weight is clipped. The default
    ``eps_low = 1`` puts the lower bound at 0: none, as in the paper (and verl's example, clip_ratio_low=10)."""
    zero = torch.zeros_like(logp)
    rho = torch.where(on, logp - old, zero).exp().detach()
    weight = rho.clamp(1 - eps_low, 1 + eps_high)
    loss = -weight * adv * torch.where(on, logp, zero)
    return loss, rho, (weight != rho) & on


def loss_type(name: str) -> LossType:
    """The registered ``LossType`` ``name`` (ValueError listing the registered ones otherwise)."""
    if name not in LOSS_TYPES:
        raise ValueError(f"unknown loss type '{name}'; registered: {', '.join(LOSS_TYPES.names())}")
    return LOSS_TYPES.get(name)


# ============================================================================ config
@dataclass
class DivergenceTerm:
    """One term ``coef(step) * aggregate(D(logp, logprobs[anchor]))`` on the rows of ``mask``.

    ``divergence`` and ``params`` name an estimator in ``rlplat.divergences``. A per-token one
    ("policy" or "anchor" samples) compares ``logp`` with ``Batch.logprobs[anchor]``. A
    per-position full-distribution one ("full": ``full_forward_kl``, ``full_reverse_kl``,
    ``full_jsd``) compares the student's logits at every response position with the anchor's
    top-k distribution ``Batch.topk[anchor]`` on the top-k + tail support
    (``rlplat.divergences.topk.topk_divergence``, ``support="tail"``); ``policy_loss`` then needs
    the logits. The batch-wise ``sinkhorn`` (SinKD) is computed over each micro-batch's masked
    positions together and its per-position shares scattered back (``full_term_values``).
    """

    name: str = "kl_ref"
    divergence: str = "k3"
    params: Dict[str, Any] = field(default_factory=dict)
    anchor: str = "reference"
    coef: CoefSchedule = field(default_factory=CoefSchedule)
    mask: str = "all"
    mask_params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name in (POLICY_KEY, EXPLORE_KEY):
            raise ValueError(f"divergence term name '{self.name}' is reserved for the surrogate")
        if self.mask not in masks_lib.REGISTRY:
            raise ValueError(f"divergence term '{self.name}': unknown mask '{self.mask}'; registered: "
                             f"{', '.join(masks_lib.names())}")
        # Bad params (or a full divergence without a per-position kernel) fail here, not mid-training.
        self.full_estimator() if self.full else self.estimator()

    @property
    def samples(self) -> str:
        """Which samples the estimator assumes: "policy" (pi's rollouts), "anchor", or "full"
        (exact over the next-token distributions: right on any rows)."""
        return divergences.info(self.divergence)

    @property
    def full(self) -> bool:
        """True for a full-distribution term: it needs the student's logits and ``Batch.topk[anchor]``."""
        return self.samples == "full"

    def estimator(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``fn(logp, anchor_logp) -> Float[B, R]`` (built per call, so the term stays plain, picklable data)."""
        return divergences.get(self.divergence, **self.params)

    @property
    def batchwise(self) -> bool:
        """True for a full term whose values couple the positions transported together (``sinkhorn``)."""
        return self.full and self.full_estimator().batchwise

    def full_estimator(self) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """``fn(logits [..., V], teacher: TopK [...]) -> [...]``: the full divergence on the teacher's
        top-k + tail support (``params["chunk_size"]`` sets the positions per chunk); for a batch-wise
        one, ``[n, V]`` and ``[n]`` only (``rlplat.divergences.topk.topk_term``)."""
        from rlplat.divergences.topk import topk_term

        params = dict(self.params)
        chunk = params.pop("chunk_size", None)
        try:
            return topk_term(self.divergence, chunk_size=chunk, **params)
        except ValueError as exc:
            raise ValueError(f"divergence term '{self.name}': {exc}") from None

    @classmethod
    def from_config(cls, cfg: "DivergenceTermConfig") -> "DivergenceTerm":
        """From an ``rlplat.config.DivergenceTermConfig`` (or anything with its attributes)."""
        return cls(
            name=cfg.name,
            divergence=cfg.divergence,
            anchor=cfg.anchor,
            coef=CoefSchedule.from_config(cfg.coef),
            params=dict(cfg.params),
            mask=cfg.mask,
            mask_params=dict(cfg.mask_params),
        )


@dataclass(frozen=True)
class PolicyAdvantage:
    """An advantage that depends on the policy being updated, so the loss recomputes it at every
    optimizer update from the detached log-probs of the forward pass it trains on:
    ``advantages.get(name)(batch.rewards, batch.group_ids, **params, **{kw: seq_logratio(logp, anchor)})``
    for each ``(kw, anchor)`` in ``logratios`` (``anchor`` a role key of ``Batch.logprobs``).
    Nash-MP's ``- beta sg(log pi/pi_ref) - beta/eta sg(log pi/pi_k)`` is one (docs/algorithms.md, Nash-MP):
    computed once from the sampling policy, its last term would be 0 at every update."""

    name: str
    params: Tuple[Tuple[str, float], ...] = ()
    logratios: Tuple[Tuple[str, str], ...] = ()

    def __call__(self, logp: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Float[B] advantages of ``batch`` for the current log-probs ``logp`` Float[B, R]."""
        if batch.rewards is None:
            raise ValueError(f"advantage '{self.name}' needs batch.rewards")
        ratios = {}
        for kw, anchor in self.logratios:
            if anchor not in batch.logprobs:
                raise ValueError(f"advantage '{self.name}': batch.logprobs has no '{anchor}' role (has {sorted(batch.logprobs)})")
            ratios[kw] = advantage_estimators.seq_logratio(logp, batch.logprobs[anchor].to(logp.dtype), batch.loss_mask.to(logp.dtype))
        return advantage_estimators.get(self.name)(batch.rewards.to(logp.dtype), batch.group_ids, **dict(self.params), **ratios)


@dataclass
class PolicyLossConfig:
    """``loss_type``: a name in ``LOSS_TYPES`` (``ppo``, ``gspo``, ``cispo``), the surrogate. Clip range
    ``[1 - eps_low, 1 + eps_high]``, None = the loss type's default (ppo 0.2 / 0.2, gspo 3e-4 / 4e-4,
    cispo no lower bound / 0.2); ``dual_clip`` = c > 1 bounds the loss of a
    negative-advantage token by ``-c * A`` (Ye et al., dual-clip PPO; ppo only); ``agg`` a mode of
    ``AGGREGATIONS``, None = the loss type's (gspo ``seq-mean-token-mean``, cispo ``token-mean``) or
    ``seq-mean-token-mean``.
    ``advantage``: None (use ``batch.advantages``, computed before training) or a ``PolicyAdvantage``
    recomputed from the current policy in every micro-batch. ``old_from_forward``: the batch is used
    for exactly one optimizer update on the weights that sampled it, so the proximal ("old")
    log-probs are the detached log-probs of the training forward itself (rho == 1 exactly) and no
    separate forward pass computes ``batch.logprobs["old"]``.
    ``rollout_correction``: importance weights between the engine's log-probs ("rollout") and the
    proximal ones ("old") on exploration rows (``rlplat.rollout_correction``); the default is none.
    ``surrogate``: False drops the clipped surrogate (pure distillation: the loss is the divergence
    terms alone; ``loss/policy`` is 0 and no ``actor/clip_frac``/``ratio_mean`` are logged).
    ``entropy_coef``: >= 0; the loss subtracts ``entropy_coef`` times the token-mean entropy of the
    surrogate's tokens (``policy_loss`` then needs the entropy with its gradient)."""

    eps_low: Optional[float] = None
    eps_high: Optional[float] = None
    dual_clip: Optional[float] = None
    agg: Optional[str] = None
    norm_len: Optional[int] = None
    advantage: Optional[PolicyAdvantage] = None
    old_from_forward: bool = False
    rollout_correction: RolloutCorrection = field(default_factory=RolloutCorrection)
    surrogate: bool = True
    loss_type: str = "ppo"
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        spec = loss_type(self.loss_type)
        self.eps_low = spec.eps_low if self.eps_low is None else self.eps_low
        self.eps_high = spec.eps_high if self.eps_high is None else self.eps_high
        self.agg = (spec.agg or DEFAULT_AGG) if self.agg is None else self.agg
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (or None), got {self.dual_clip}")
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation '{self.agg}'; registered: {', '.join(AGGREGATIONS.names())}")
        if self.agg == "seq-mean-token-sum-norm" and (self.norm_len is None or self.norm_len <= 0):
            raise ValueError("loss aggregation 'seq-mean-token-sum-norm' needs a positive norm_len")
        spec.check(self.eps_low, self.eps_high, self.dual_clip, self.agg, self.rollout_correction)
        if not (math.isfinite(self.entropy_coef) and self.entropy_coef >= 0):
            raise ValueError(f"entropy_coef must be a finite number >= 0 (a bonus), got {self.entropy_coef}")


# ============================================================================ masks and totals
def _explore_token_mask(batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    return batch.loss_mask.to(dtype) * (batch.kind == DATA_EXPLORE).to(dtype)[:, None]


def _term_token_mask(term: DivergenceTerm, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    try:
        seq = masks_lib.for_batch(term.mask, batch, **term.mask_params)
    except TypeError as exc:
        raise ValueError(f"divergence term '{term.name}': bad mask_params for mask '{term.mask}': {exc}") from None
    tok = batch.loss_mask.to(dtype) * seq.to(dtype)[:, None]
    rows = tok.sum(-1) > 0
    # An estimator is only right on the samples it assumes: "policy" ones on pi's rollouts,
    # "anchor" ones on rows drawn from the anchor (the stored pi_0 rehearsal rows).
    # A full term is exact on any rows: it does not depend on where the tokens came from.
    wrong_kind = {"policy": DATA_REHEARSAL, "anchor": DATA_EXPLORE}.get(term.samples)
    if wrong_kind is not None and (rows & (batch.kind == wrong_kind)).any():
        which = "rehearsal (pi_0-sampled)" if wrong_kind == DATA_REHEARSAL else "exploration (pi-sampled)"
        raise ValueError(
            f"divergence term '{term.name}': estimator '{term.divergence}' assumes samples from the "
            f"{term.samples}, but mask '{term.mask}' selects {which} rows; use mask "
            f"'{'explore' if wrong_kind == DATA_REHEARSAL else 'rehearsal'}' or another estimator"
        )
    return tok


def loss_totals(
    batch: Batch, terms: Sequence[DivergenceTerm], world_size: int = 1, correction: Optional[RolloutCorrection] = None
) -> Dict[str, LossTotals]:
    """This rank's token/sequence counts of every loss component of ``batch`` (its whole local
    mini-batch): key ``"policy"`` for the surrogate and each term's name. Sum the counts over
    ranks (e.g. all-reduce ``pack_totals``) before passing them to ``policy_loss``.
    ``correction``: the ``PolicyLossConfig.rollout_correction`` the loss will use; the tokens it
    masks out (MIS) leave the surrogate's counts, so pass it whenever it can mask."""
    explore = _explore_token_mask(batch, torch.float32)
    out = {POLICY_KEY: LossTotals.of(rollout_correction.keep_mask(batch, correction, explore), world_size)}
    for term in terms:
        out[term.name] = LossTotals.of(_term_token_mask(term, batch, torch.float32), world_size)
    return out


def explore_tokens(batch: Batch) -> float:
    """Response tokens of the exploration rows, before any rollout-correction mask: the weight of
    the ``rollout/*`` metrics (key ``EXPLORE_KEY`` of a loss function's ``component_tokens``)."""
    return float(_explore_token_mask(batch, torch.float32).sum())


def pack_totals(totals: Mapping[str, LossTotals]) -> Tuple[List[str], torch.Tensor]:
    """(keys, Float64[K, 2] of tokens and seqs) for an all-reduce (sum) across ranks."""
    keys = list(totals)
    return keys, torch.tensor([[totals[k].tokens, totals[k].seqs] for k in keys], dtype=torch.float64)


def unpack_totals(keys: Sequence[str], counts: torch.Tensor, world_size: int) -> Dict[str, LossTotals]:
    return {k: LossTotals(float(counts[i, 0]), float(counts[i, 1]), world_size) for i, k in enumerate(keys)}


# ============================================================================ the loss
def _totals_for(totals: Optional[Mapping[str, LossTotals]], key: str) -> Optional[LossTotals]:
    if totals is None:
        return None
    if isinstance(totals, LossTotals):
        raise TypeError("policy_loss: totals must map component names ('policy', term names) to LossTotals; "
                        "build it with loss_totals()")
    if key not in totals:
        raise KeyError(f"policy_loss: totals has no entry '{key}'; has {sorted(totals)}")
    return totals[key]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((torch.where(mask > 0, x, torch.zeros_like(x)) * mask).sum() / mask.sum())


def proximal_logprobs(logp: torch.Tensor, batch: Batch, cfg: PolicyLossConfig) -> torch.Tensor:
    """Float[B, R] log-probs of pi_prox, the policy the surrogate's ratio is taken against: the
    training forward itself (detached) under ``old_from_forward``, else ``batch.logprobs["old"]``."""
    if cfg.old_from_forward:
        return logp.detach()
    if "old" not in batch.logprobs:
        raise ValueError(f"policy_loss: batch.logprobs has no 'old' role (has {sorted(batch.logprobs)}) "
                         "and the loss is not configured with old_from_forward")
    return batch.logprobs["old"].to(logp.dtype)


def _surrogate(
    logp: torch.Tensor, old: torch.Tensor, batch: Batch, cfg: PolicyLossConfig, tok: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Per-token surrogate loss Float[B, R] of ``cfg.loss_type`` and its stats; ``old`` Float[B, R]
    the proximal log-probs. ``weight`` Float[B, R] (detached): the rollout correction's ``w``
    multiplying each token's loss, e.g. ``w * max(-rho A, -clip(rho) A)`` (decoupled PPO: clip around
    pi_prox, w corrects mu -> pi_prox)."""
    if cfg.advantage is not None:
        advantages = cfg.advantage(logp.detach(), batch)
    elif batch.advantages is None:
        raise ValueError("policy_loss: batch.advantages is None but the batch has exploration rows")
    else:
        advantages = batch.advantages
    on = tok > 0
    adv = advantages.to(logp.dtype)[:, None].expand_as(logp)
    adv = torch.where(on, adv, torch.zeros_like(adv))
    loss, ratio, clip_active = loss_type(cfg.loss_type).fn(logp, old, adv, on, cfg.eps_low, cfg.eps_high, cfg.dual_clip)
    if weight is not None:
        loss = loss * weight.to(logp.dtype)
    stats = {
        "actor/clip_frac": _masked_mean(clip_active.to(logp.dtype), tok),
        "actor/ratio_mean": _masked_mean(ratio, tok),
        "actor/advantage_abs_mean": _masked_mean(adv.detach().abs(), tok),
    }
    return loss, stats


def _neutral_teacher(teacher: "TopK", on: torch.Tensor, vocab: int) -> "TopK":
    """``teacher`` with every position where ``on`` is False replaced by a proper distribution
    (ids 0..k-1, uniform over the k + 1 outcomes; over the k ids when k = V), so that padding,
    which holds zeros (k "probabilities" of 1), gives finite values and gradients."""
    from rlplat.divergences.topk import TopK

    k = teacher.ids.shape[-1]
    ids = torch.arange(k, device=teacher.ids.device, dtype=teacher.ids.dtype).expand_as(teacher.ids)
    if k == vocab:  # no tail outcome: uniform over the k ids, tail empty
        lp, tail = -math.log(k), float("-inf")
    else:
        lp = tail = -math.log(k + 1)
    keep = on[..., None]
    return TopK(torch.where(keep, teacher.logp, torch.full_like(teacher.logp, lp)),
                torch.where(keep, teacher.ids, ids),
                torch.where(on, teacher.tail_logp, torch.full_like(teacher.tail_logp, tail)))


def full_term_values(term: DivergenceTerm, logits: torch.Tensor, batch: Batch, on: torch.Tensor) -> torch.Tensor:
    """Float[B, R]: the full divergence of ``term`` at every response position between the student's
    ``logits`` Float[B, R, V] (already divided by the temperature the anchor's top-k was taken at;
    differentiable) and ``batch.topk[term.anchor]``, on the top-k + tail support (nats; float32 for
    half-precision logits, their dtype otherwise). ``on`` Bool[B, R]:
    the positions that count; elsewhere the anchor is replaced by a neutral distribution (finite
    values, no NaN gradients). No ``[B, R, V]`` tensor beyond ``logits`` and its gradient is made:
    positions are processed in chunks (``rlplat.divergences.topk``).

    A batch-wise term (``sinkhorn``) is computed over the ``on`` positions of this call together
    (in training: one micro-batch's masked response positions, so its value depends on which
    positions share a micro-batch); value i is position i's mean transport cost, in [0, 2], and
    the values' mean over ``on`` is the Sinkhorn distance of those positions."""
    if term.anchor not in batch.topk:
        raise ValueError(f"divergence term '{term.name}': '{term.divergence}' needs the '{term.anchor}' role's top-k "
                         f"distribution (batch.topk has {sorted(batch.topk)}); score it with "
                         f"roles.{term.anchor}.top_k_logits > 0")
    if logits.shape[:-1] != batch.response_mask.shape:
        raise ValueError(f"divergence term '{term.name}': logits shape {tuple(logits.shape)} does not match the "
                         f"responses {tuple(batch.response_mask.shape)}")
    fn = term.full_estimator()
    if fn.batchwise:
        return _batchwise_values(fn, logits, batch.topk[term.anchor], on)
    teacher = _neutral_teacher(batch.topk[term.anchor], on, logits.shape[-1])
    return fn(logits, teacher)  # float32 for half-precision logits


def _batchwise_values(fn, logits: torch.Tensor, teacher: "TopK", on: torch.Tensor) -> torch.Tensor:
    """Float[B, R]: a batch-wise term (SinKD) over the ``on`` positions of this call (a micro-batch)
    together. Their logits ``[n_on, V]`` and TopK ``[n_on]`` are gathered (padding never reaches
    the transport), ``fn`` gives one value per position, and these are scattered back to
    ``[B, R]`` (0 elsewhere; the mask drops them) so the mask, coefficient, aggregation and
    ``div/<term>`` act as for per-position terms. Memory: not chunked; beyond the logits and their
    gradient, a few ``n_on x V`` tensors (the gathered copy, SinKD's saved log-softmax, their
    gradients) plus the cost's ``n_on x n_on x k``."""
    from rlplat.divergences.topk import TopK

    rows = fn(logits[on], TopK(teacher.logp[on], teacher.ids[on], teacher.tail_logp[on]))
    return rows.new_zeros(on.shape).masked_scatter(on, rows)


def policy_loss(
    logp: torch.Tensor,
    batch: Batch,
    cfg: PolicyLossConfig,
    terms: Sequence[DivergenceTerm],
    step: int,
    totals: Optional[Mapping[str, LossTotals]] = None,
    entropy: Optional[torch.Tensor] = None,
    logits: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """(scalar loss, metrics) for ``logp`` Float[B, R], the current policy's log-prob (nats) of
    each response token (requires grad), on ``batch`` at optimizer step ``step``.

    ``logits``: Float[B, R, V] of the same forward, divided by the same temperature as ``logp``
    (requires grad); needed only by full-distribution terms (``DivergenceTerm.full``), whose
    per-token values (``full_term_values``) then go through the same masks, coefficients and
    aggregation as a per-token estimator's.

    ``totals``: None (normalise by this call's own counts) or the global counts per component
    from ``loss_totals`` (keys "policy" and each term name).

    ``entropy``: Float[B, R] token entropies of the same forward: a metric (``actor/entropy``), and,
    with ``cfg.entropy_coef > 0``, the entropy bonus ``-entropy_coef * token-mean(entropy)`` over the
    surrogate's tokens, which then needs it with its gradient.

    Metrics (floats): ``loss/policy``, ``loss/total``, ``coef/<term>``, ``loss/entropy_bonus`` (with
    ``cfg.entropy_coef > 0``); and, only when the set they
    average over is non-empty: ``actor/clip_frac`` and ``actor/ratio_mean`` (over exploration
    tokens the rollout correction keeps), ``div/<term>`` (mean per-token divergence over the term's
    tokens, before the coefficient), ``actor/entropy`` (mean of ``entropy`` Float[B, R] over
    exploration tokens), ``rollout/*`` (``rlplat.rollout_correction.metrics``, over all exploration
    tokens; ``rollout/logprob_abs_diff_mean`` whenever the batch has "rollout" log-probs). With MIS,
    "exploration tokens" of the ``actor/*`` metrics are the kept ones.

    Rollout correction (``cfg.rollout_correction``) reweights or masks the surrogate only: the
    divergence terms are not reweighted (they are estimators of a divergence under the samples
    they assume, computed with the current policy's log-probs, not importance-corrected policy
    gradients), and rehearsal rows get no surrogate, hence no correction.
    """
    if logp.shape != batch.response_mask.shape:
        raise ValueError(f"policy_loss: logp shape {tuple(logp.shape)} != response shape "
                         f"{tuple(batch.response_mask.shape)}")
    seen = set()
    for term in terms:
        if term.name in seen:
            raise ValueError(f"policy_loss: two divergence terms are named '{term.name}'")
        seen.add(term.name)

    metrics: Dict[str, float] = {}
    explore_tok = _explore_token_mask(batch, logp.dtype)
    pg_tok = explore_tok if cfg.surrogate else torch.zeros_like(explore_tok)
    is_weight = None
    old = proximal_logprobs(logp, batch, cfg) if pg_tok.sum() > 0 else None
    if pg_tok.sum() > 0 and (cfg.rollout_correction.active or rollout_correction.BEHAVIOUR_ROLE in batch.logprobs):
        corr = rollout_correction.weights(batch, cfg.rollout_correction, pg_tok, old)
        metrics.update(rollout_correction.metrics(corr, cfg.rollout_correction, pg_tok))
        pg_tok = corr.keep  # MIS: masked tokens leave the loss and (see loss_totals) its normalisers
        is_weight = corr.weight if cfg.rollout_correction.active else None
    if pg_tok.sum() > 0:
        per_token, stats = _surrogate(logp, old, batch, cfg, pg_tok, is_weight)
        metrics.update(stats)
    else:
        per_token = logp * 0.0  # graph-connected, so an all-rehearsal batch still backprops (zeros)
    pg_loss = aggregate(per_token, pg_tok, cfg.agg, totals=_totals_for(totals, POLICY_KEY), norm_len=cfg.norm_len)
    total = pg_loss
    metrics["loss/policy"] = float(pg_loss.detach())

    for term in terms:
        tok = _term_token_mask(term, batch, logp.dtype)
        coef = term.coef(step)
        metrics[f"coef/{term.name}"] = coef
        if tok.sum() > 0:
            if not term.full and term.anchor not in batch.logprobs:
                raise ValueError(f"divergence term '{term.name}': batch.logprobs has no '{term.anchor}' role "
                                 f"(has {sorted(batch.logprobs)})")
            on = tok > 0
            if term.full:
                if logits is None:
                    raise ValueError(f"divergence term '{term.name}': '{term.divergence}' is a full-distribution "
                                     "divergence; policy_loss needs the student's logits")
                values = full_term_values(term, logits, batch, on).to(logp.dtype)
            else:
                # Feed (0, 0) at masked positions: every estimator is finite there, so no NaN
                # can leak into the gradient through where().
                lp = torch.where(on, logp, torch.zeros_like(logp))
                anchor = torch.where(on, batch.logprobs[term.anchor].to(logp.dtype), torch.zeros_like(logp))
                values = term.estimator()(lp, anchor)
            if values.shape != logp.shape:
                raise ValueError(f"divergence '{term.divergence}' returned shape {tuple(values.shape)}, "
                                 f"expected {tuple(logp.shape)}")
            metrics[f"div/{term.name}"] = _masked_mean(values.detach(), tok)
        else:
            values = logp * 0.0  # graph-connected zeros; the empty mask makes the term exactly 0
        term_loss = aggregate(values, tok, cfg.agg, totals=_totals_for(totals, term.name), norm_len=cfg.norm_len)
        total = total + coef * term_loss

    if cfg.entropy_coef and pg_tok.sum() > 0:
        total = total + _entropy_bonus(logp, entropy, pg_tok, cfg.entropy_coef, _totals_for(totals, POLICY_KEY), metrics)
    if entropy is not None and explore_tok.sum() > 0:
        metrics["actor/entropy"] = _masked_mean(entropy.detach().to(logp.dtype), pg_tok if cfg.surrogate else explore_tok)
    metrics["loss/total"] = float(total.detach())
    return total, metrics


def _entropy_bonus(logp: torch.Tensor, entropy: Optional[torch.Tensor], tok: torch.Tensor, coef: float,
                   totals: Optional[LossTotals], metrics: Dict[str, float]) -> torch.Tensor:
    """``-coef * token-mean(entropy over tok)``, the surrogate's tokens, normalised by the surrogate's
    global token count (``totals``, so micro-batches and ranks add up exactly as the surrogate does);
    logged as ``loss/entropy_bonus``. ``entropy`` Float[B, R] must carry its gradient (the trainer
    computes it from the forward's logits, ``micro_batch_forward(..., entropy_grad=True)``)."""
    if entropy is None:
        raise ValueError("policy_loss: entropy_coef > 0 needs the per-token entropy (Float[B, R]) of the forward's "
                         "logits, with its gradient")
    if logp.requires_grad and not entropy.requires_grad:
        raise ValueError("policy_loss: entropy_coef > 0 but the entropy carries no gradient (a detached metric); "
                         "compute it with micro_batch_forward(..., with_entropy=True, entropy_grad=True)")
    if entropy.shape != logp.shape:
        raise ValueError(f"policy_loss: entropy shape {tuple(entropy.shape)} != logp shape {tuple(logp.shape)}")
    on = tok > 0
    values = torch.where(on, entropy.to(logp.dtype), torch.zeros_like(logp))
    bonus = -coef * aggregate(values, tok, "token-mean", totals=totals)
    metrics["loss/entropy_bonus"] = float(bonus.detach())
    return bonus


def token_entropy(logits: torch.Tensor, chunk_positions: int = 1024) -> torch.Tensor:
    """Float[B, R] entropy (nats) of the next-token distributions of ``logits`` Float[B, R, V],
    computed over ``chunk_positions`` positions at a time in float32 so that the float32 copy of
    the logits never exceeds ``chunk_positions x V``. Call it under ``torch.no_grad()`` for
    metrics; with grad enabled autograd keeps every chunk anyway."""
    if logits.dim() != 3:
        raise ValueError(f"token_entropy: logits must be [B, R, V], got shape {tuple(logits.shape)}")
    b, r, v = logits.shape
    flat = logits.reshape(b * r, v)
    out = []
    for start in range(0, b * r, chunk_positions):
        chunk = flat[start : start + chunk_positions].float()
        logz = torch.logsumexp(chunk, dim=-1)
        probs = torch.softmax(chunk, dim=-1)
        out.append(logz - (probs * chunk).sum(-1))
    if not out:
        return logits.new_zeros((b, r), dtype=torch.float32)
    return torch.cat(out).reshape(b, r)


# ============================================================================ f-DPO (offline pairs)
def fdpo_implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, divergence: str, beta: float,
                          alpha: float = 0.5) -> torch.Tensor:
    """Float [B]: ``beta * f'(u)`` with ``log u = policy_logps - ref_logps`` (sequence log-probs,
    nats): the reward the policy implies under the f-divergence constraint, up to a per-prompt
    constant (``rlplat.divergences.links``). The reference is treated as a constant."""
    return beta * links.link(divergence, policy_logps - ref_logps.detach(), alpha=alpha)


def fdpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, divergence: str, beta: float,
              alpha: float = 0.5) -> torch.Tensor:
    """Float [B] per-pair f-DPO losses ``-log sigmoid(beta (f'(u_w) - f'(u_l)))``, ``u = pi / pi_ref``
    of the chosen (w) and rejected (l) responses; inputs Float [B] sequence log-probs (nats).
    ``divergence``: a name in ``links.LINKS`` (``reverse_kl`` is DPO); ``alpha`` reaches the
    ``alpha`` link only. Differentiable in the policy log-probs."""
    margin = (fdpo_implicit_rewards(policy_chosen_logps, ref_chosen_logps, divergence, beta, alpha)
              - fdpo_implicit_rewards(policy_rejected_logps, ref_rejected_logps, divergence, beta, alpha))
    return -torch.nn.functional.logsigmoid(margin)


def fdpo_metrics(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, divergence: str, beta: float,
                 alpha: float = 0.5) -> Dict[str, float]:
    """Means over the pairs: ``rewards/chosen`` and ``rewards/rejected`` (implicit rewards),
    ``rewards/margin``, ``rewards/accuracy`` (share of pairs whose chosen reward is higher) and
    ``rewards/preference_prob`` (the model's P(chosen > rejected), for calibration)."""
    with torch.no_grad():
        chosen = fdpo_implicit_rewards(policy_chosen_logps, ref_chosen_logps, divergence, beta, alpha)
        rejected = fdpo_implicit_rewards(policy_rejected_logps, ref_rejected_logps, divergence, beta, alpha)
        margin = chosen - rejected
        return {"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
                "rewards/margin": float(margin.mean()), "rewards/accuracy": float((margin > 0).float().mean()),
                "rewards/preference_prob": float(torch.sigmoid(margin).mean())}
