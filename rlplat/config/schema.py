"""The one config schema of rlplat: dataclasses that omegaconf turns into a typed, closed config.

Every YAML file under ``configs/`` and every ``key=value`` override is merged onto ``RunConfig``;
omegaconf rejects unknown keys and wrong types, ``rlplat.config.validate`` checks values and
combinations. Units: lengths in tokens, times in seconds, memory in GiB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


LOG_LEVELS = ("debug", "info", "warning")  # trainer.log_level (actors.quiet acts on it)
# transformers' attention implementations that need no extra package name (model.attn_implementation)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class ModelConfig:
    """The policy. ``path`` is a local directory, a hub id, or ``builtin:tiny-policy``."""

    path: str = "builtin:tiny-policy"
    tokenizer: Optional[str] = None  # defaults to ``path``
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # Attention of the HF models that compute log-probs (trainer ranks, scorers): None = transformers'
    # default (sdpa). On CPU in bfloat16, eager trains ~2x faster than sdpa, whose flash-attention
    # backward is slow there (docs/vs_trl.md). Rollout engines pick their own (vLLM: its backend).
    attn_implementation: Optional[str] = None  # None | one of ATTN_IMPLEMENTATIONS
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False


@dataclass
class RoleModelConfig:
    """A forward-only model served by scorer actors (reference, teacher, preference, snapshot)."""

    path: Optional[str] = None  # reference: defaults to model.path; teacher/preference: required when used
    num_actors: int = 1
    micro_batch_tokens: int = 4096  # token budget of one forward pass
    top_k_logits: int = 0  # teacher only: >0 also sends its top-k next-token distribution (full-distribution terms)


@dataclass
class RolesConfig:
    reference: RoleModelConfig = field(default_factory=RoleModelConfig)
    teacher: RoleModelConfig = field(default_factory=RoleModelConfig)
    preference: RoleModelConfig = field(default_factory=RoleModelConfig)


@dataclass
class EnvConfig:
    """A multi-turn environment (``rlplat.envs``): ``builtin:<name>`` or ``module:Class``, built as
    ``Class(**params)`` once per episode. ``name`` null: single-turn rollouts (one completion)."""

    name: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutConfig:
    backend: str = "vllm"  # vllm | hf (HF generate, the fallback)
    num_engines: int = 1
    tensor_parallel_size: int = 1
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    # Training rollouts never stop at EOS: every response has exactly max_new_tokens tokens (EOS is
    # masked out while sampling, as vLLM's min_tokens and HF's min_new_tokens do). For throughput
    # benchmarks with a fixed response length. Evaluation (pass@k, greedy) always stops at EOS.
    ignore_eos: bool = False
    max_model_len: int = 256
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.5
    cpu_kv_cache_gb: float = 0.1  # KV cache of a CPU vLLM engine (GiB)
    enforce_eager: bool = True
    # Trainer -> engine weights: "collective" broadcasts from the trainer's rank 0 to every engine
    # worker over a torch.distributed group (gloo on CPU, NCCL on GPU), never through the driver;
    # "object_store" packs the state dict in the driver and hands it over through Ray's object store.
    weight_sync: str = "collective"  # collective | object_store
    weight_sync_bucket_mb: float = 128.0  # size of one broadcast buffer (MiB); a larger parameter goes alone
    # Multi-turn episodes (rlplat.episodes, actors.rollout.episodes): every sample is an episode of
    # model turns (max_new_tokens each) and the environment's observations, driven next to the
    # engines. The keys below act only with an env; set without one, validation refuses them.
    env: EnvConfig = field(default_factory=EnvConfig)
    # Tools given to the environment's ``tools`` param (builtin:tools, or any environment taking
    # one): names (builtin:calc, module:Class) or {name, params}; with data.chat_template their
    # schemas also go into the chat template (apply_chat_template(..., tools=...)).
    tools: List[Any] = field(default_factory=list)
    max_turns: int = 4  # model turns per episode
    max_episode_tokens: int = 64  # tokens after the prompt: model turns and observations together
    max_observation_tokens: int = 32  # longer observations are cut (episode/observation_truncated)
    # How an observation is shown to the model: "{observation}" filled in, tokenized once. A chat
    # model wants its template's turn markers around it, e.g. Qwen's
    # "<|im_start|>user\n{observation}<|im_end|>\n<|im_start|>assistant\n" (its turns end at <|im_end|>).
    observation_template: str = "{observation}"
    env_workers: int = 8  # threads running the environments' steps (and their tools) of a turn at once


@dataclass
class DataConfig:
    """Prompts (or preference pairs): ``builtin:<task>``, a .jsonl / .parquet file, a ``save_to_disk``
    dataset dir, or a hub dataset id (``datasets.load_dataset``; rlplat.data_splits)."""

    train_path: str = "builtin:arithmetic"
    eval_path: Optional[str] = None  # default: train_path's held-out split when it has splits
    # Splits of a saved DatasetDict or a hub dataset. eval_split None: the first of eval /
    # validation / test. A source without splits (jsonl, parquet, a saved Dataset, builtin:)
    # refuses a value other than these defaults.
    train_split: str = "train"
    eval_split: Optional[str] = None
    config_name: Optional[str] = None  # a hub dataset's config name (load_dataset(path, name)), e.g. gsm8k's "main"
    format: str = "auto"  # auto | jsonl | parquet | hf_disk
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    chosen_key: str = "chosen"  # preference pairs (f-DPO): the preferred response
    rejected_key: str = "rejected"  # and the dispreferred one
    chat_template: bool = False
    # Extra variables for the chat template: tokenizer.apply_chat_template(..., **kwargs), e.g.
    # Qwen3's {enable_thinking: false}. Needs chat_template: true.
    chat_template_kwargs: Dict[str, Any] = field(default_factory=dict)
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 128
    prompts_per_step: int = 4
    shuffle: bool = True
    builtin_train_size: int = 2000
    builtin_eval_size: int = 200


@dataclass
class RewardFnConfig:
    """One term of a weighted reward: ``weight * fn(response, answer, prompt, **columns)``."""

    fn: str = ""  # a registered reward name, or ``module:function``
    weight: float = 1.0  # any finite number; 0 logs the function without training on it
    name: Optional[str] = None  # metric label (reward/fn/<name>/*); default: the function's name


@dataclass
class RewardConfig:
    # One function (``fn``) or several weighted ones (``fns``), never both: ``fn`` is the shorthand
    # of ``fns: [{fn: <fn>, weight: 1}]`` and must be null when ``fns`` is set (rlplat.rewards.spec).
    fn: Optional[str] = "arithmetic"  # a registered reward name, or ``module:function``
    fns: List[RewardFnConfig] = field(default_factory=list)
    timeout_s: float = 10.0
    num_workers: int = 1
    memory_limit_mb: int = 2048  # address space a reward call may add (0: unlimited)
    correct_threshold: float = 1.0  # reward >= this counts as correct (pass rates, KDRL masks)


@dataclass
class CoefConfig:
    """Coefficient schedule: constant ``value``, or linear ``max(start - slope * step, floor)``."""

    kind: str = "constant"  # constant | linear
    value: float = 0.0
    start: float = 0.0
    slope: float = 0.0
    floor: float = 0.0


@dataclass
class DivergenceTermConfig:
    """One divergence term of the objective: coef(step) * D(pi, anchor) on the rows of ``mask``."""

    name: str = "kl_ref"  # metric label: logged as div/<name>
    divergence: str = "k3"  # a name in rlplat.divergences
    params: Dict[str, float] = field(default_factory=dict)
    anchor: str = "reference"  # reference | teacher | snapshot | initial
    coef: CoefConfig = field(default_factory=CoefConfig)
    mask: str = "all"  # a name in rlplat.masks
    mask_params: Dict[str, float] = field(default_factory=dict)


@dataclass
class DPHRLConfig:
    samples_per_prompt: int = 8  # k, the split's samples of pi_0 per training prompt
    rehearsal_per_step: int = 4  # stored rehearsal samples mixed into every step
    store_path: Optional[str] = None  # default: <output_dir>/dph_rehearsal.pt


@dataclass
class NashMPConfig:
    beta: float = 0.1  # regularisation towards pi_ref
    eta: float = 1.0  # mirror-prox step size
    inner_steps: int = 1  # gradient steps per proximal (half or full) step
    judge: Optional[str] = None  # rule-based judge: a registered name (checker, style_rps) or ``module:function``; else roles.preference


@dataclass
class FDPOConfig:
    """f-DPO: ``-log sigmoid(beta (f'(u_w) - f'(u_l)))`` on preference pairs (rlplat.divergences.links)."""

    divergence: str = "reverse_kl"  # reverse_kl (DPO) | forward_kl | js | alpha
    beta: float = 0.1
    alpha: float = 0.5  # the alpha link's parameter, in (0, 1)
    store_path: Optional[str] = None  # reference log-probs of every pair; default <output_dir>/fdpo_reference.pt


@dataclass
class CTRLConfig:
    """InfAlign-CTRL's reward stage: calibrate against reference samples, then transform
    (rlplat.rewards.calibration, rlplat.rewards.transforms; docs/algorithms.md#infalign-ctrl)."""

    reference_samples: int = 16  # m, samples of pi_ref per training prompt, drawn once before training
    transform: str = "bon"  # a name in rlplat.rewards.transforms: identity | bon | won
    t: Optional[float] = None  # the bon / won transformation's parameter (> 0); unset for identity
    store_path: Optional[str] = None  # the reference rewards; default <output_dir>/ctrl_reference.pt


@dataclass
class RolloutCorrectionConfig:
    """Importance weights between the rollout engine's log-probs (mu) and the trainer's "old" ones
    (pi_prox) on exploration rows (rlplat.rollout_correction, docs/algorithms.md#off-policy-data-rollout-correction-and-bounded-staleness)."""

    kind: str = "none"  # none | tis (truncated: min(ratio, C)) | mis (masked: drop ratio outside [1/C, C])
    level: str = "token"  # token | sequence (the ratio is the product over the response's tokens)
    threshold: float = 2.0  # C > 1


@dataclass
class AlgorithmConfig:
    name: str = "grpo"  # a name in rlplat.algorithms
    group_size: int = 8
    advantage: str = "grpo"  # a name in rlplat.advantages
    advantage_params: Dict[str, float] = field(default_factory=dict)
    # reinforce_pp's batch statistic (rlplat.advantages.REINFORCE_PP_NORMS): token (OpenRLHF's and verl's:
    # whiten over the batch's response tokens, re-centred) | sequence (population std over the batch's rows)
    reinforce_pp_norm: str = "token"
    # The surrogate (rlplat.losses.LOSS_TYPES): ppo (clipped token ratio) | gspo (sequence ratio, length-
    # normalised) | cispo (REINFORCE weighted by the clipped, detached token ratio)
    loss_type: str = "ppo"
    eps_low: Optional[float] = None  # null: the loss type's (ppo 0.2, gspo 3e-4, cispo 1 = no lower bound)
    eps_high: Optional[float] = None  # null: the loss type's (ppo 0.2, gspo 4e-4, cispo 0.2)
    dual_clip: Optional[float] = None
    entropy_coef: float = 0.0  # >= 0: the loss subtracts entropy_coef * token-mean entropy of the surrogate's tokens
    loss_agg: Optional[str] = None  # None: the loss type's (gspo, cispo), else the algorithm's (seq-mean-token-mean; nash_mp: seq-mean-token-sum)
    norm_len: Optional[int] = None  # seq-mean-token-sum-norm constant; default rollout.max_new_tokens
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer updates per PPO epoch
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, draw more prompts
    max_sampling_rounds: int = 4  # dynamic_sampling: generation rounds per step at most (then train on what there is)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    divergences: List[DivergenceTermConfig] = field(default_factory=list)
    dph_rl: DPHRLConfig = field(default_factory=DPHRLConfig)
    nash_mp: NashMPConfig = field(default_factory=NashMPConfig)
    fdpo: FDPOConfig = field(default_factory=FDPOConfig)
    ctrl: CTRLConfig = field(default_factory=CTRLConfig)


@dataclass
class WandbConfig:
    """Weights & Biases mirror of every step's metrics, sample rows and the resolved config
    (launch.wandb_logger); on when ``trainer.loggers`` lists ``wandb``."""

    mode: str = "offline"  # offline (files under <output_dir>/wandb, `wandb sync` later) | online
    project: str = "rlplat"
    name: Optional[str] = None  # default: the basename of trainer.output_dir


@dataclass
class TrainerConfig:
    max_steps: int = 20
    output_dir: str = "runs/default"
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    resume: str = "none"  # none | auto | <checkpoint dir>
    num_ranks: int = 2  # data-parallel DeepSpeed ranks
    zero_stage: int = 2
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    # Learning rate over the run's optimizer updates (rlplat.lr_schedules; Algorithm.total_updates).
    lr_scheduler: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0  # optimizer updates of linear warmup from lr/warmup_steps to lr; or warmup_ratio, not both
    warmup_ratio: float = 0.0  # warmup as a fraction of the run's optimizer updates, in [0, 1)
    min_lr_ratio: float = 0.0  # linear / cosine decay ends at lr * min_lr_ratio
    # Merged into the DeepSpeed config (nested dicts merge): offload, overlap_comm, bucket sizes, ...
    # Keys rlplat sets from other options are refused (rlplat.config.deepspeed_keys.OWNED).
    deepspeed: Dict[str, Any] = field(default_factory=dict)
    grad_clip: float = 1.0
    micro_batch_tokens: int = 4096  # token budget of one training forward/backward
    sync_check_every: int = 10  # probe check of the engines' weights every N syncs (and on the first, and after a recovery)
    max_staleness: int = 0  # 0: synchronous; K >= 1: generation runs up to K weight versions ahead of training
    eval_every: int = 0  # 0: never; else held-out evaluation every N steps and at the end
    eval_before_train: bool = True  # with eval_every > 0: also evaluate the initial policy (logged as step -1)
    eval_n: int = 8  # samples per held-out prompt for pass@k
    eval_ks: List[int] = field(default_factory=lambda: [1, 4, 8])
    # Best-of-N / worst-of-N win rates of each evaluation against the initial policy's (step -1),
    # one per N (each <= eval_n; needs eval_before_train): eval/bon@{N}_win_rate, eval/won@{N}_win_rate.
    eval_win_ns: List[int] = field(default_factory=list)
    eval_max_prompts: int = 64
    # A column of the held-out rows (e.g. builtin:arithmetic_bonus' "family"): pass@k and greedy
    # pass@1 are also logged per value of it, eval/<value>/pass@{k}. None: overall only.
    eval_group_by: Optional[str] = None
    # Seed of the evaluations' sampling. None: derived from trainer.seed. Fix it to compare runs
    # of different trainer seeds on the very same evaluation draws (benchmarks/replicate.py does).
    eval_seed: Optional[int] = None
    # Rollouts written to <output_dir>/rollouts.jsonl per step (prompt, response, reward, answer, step,
    # weight version), drawn at random from the trained batch. 0: off, as verl's rollout dump and
    # log_val_generations are by default (a full dump is large; ask for the few you will read).
    log_samples: int = 0
    # Where each step's metrics go: console (the progress and evaluation lines), jsonl
    # (metrics.jsonl: required, resume and the benchmarks read it), tensorboard, wandb (trainer.wandb).
    loggers: List[str] = field(default_factory=lambda: ["console", "jsonl", "tensorboard"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # Third-party output in the driver log (actors.quiet): warning = real warnings only, no progress
    # bars; info | debug bring vLLM's, DeepSpeed's and Ray's own log lines back.
    log_level: str = "warning"  # one of LOG_LEVELS


@dataclass
class ResourcesConfig:
    """Per-actor Ray resources. Fractional CPUs let the whole pipeline share 2 cores."""

    trainer_cpus: float = 0.25
    trainer_gpus: float = 0.0
    rollout_cpus: float = 0.5
    rollout_gpus: float = 0.0
    scorer_cpus: float = 0.25
    scorer_gpus: float = 0.0
    reward_cpus: float = 0.1
    colocate: bool = False  # pack trainer ranks and scorers into one placement group
    max_actor_restarts: int = 3  # rollout / scorer / reward actors Ray restarts after a crash


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: RAY_ADDRESS if set, else an embedded local cluster
    host: str = "127.0.0.1"  # where the embedded cluster and its dashboard bind
    num_cpus: Optional[int] = None
    # On by default: the Jobs and Actors views need no Prometheus; it binds to `host` (loopback) and
    # adds ~0.5 s (median) to ray.init on 2 cores (README "Watching a run"). Ignored when joining.
    include_dashboard: bool = True
    namespace: str = "rlplat"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    roles: RolesConfig = field(default_factory=RolesConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def to_container(cfg: Any) -> Dict[str, Any]:
    """Plain dict of a structured config (for JSON/YAML dumps and Ray transport)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
