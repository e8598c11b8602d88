"""Value and combination checks run on a loaded config before anything expensive starts."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from rlplat.config.errors import ConfigError
from rlplat.config.schema import ATTN_IMPLEMENTATIONS, LOG_LEVELS, RunConfig
from rlplat.hub_ids import is_hub_dataset, looks_like_hub_dataset, looks_like_hub_id

# Keys the schema holds for capabilities that are not built yet: any non-default value is refused.
REFUSED: Dict[str, str] = {
    "roles.reference.top_k_logits": (
        "only the teacher's scorer sends top-k distributions (full-distribution divergence terms, anchor "
        "'teacher', roles.teacher.top_k_logits); keep it 0 and use a per-token estimator on the reference "
        "(k1, k2, k3, k3_st)"),
    "roles.preference.top_k_logits": (
        "the preference model compares responses, it does not score next-token distributions; keep it 0"),
    "roles.preference.num_actors": (
        "the preference model runs as one worker; a pool of preference workers is not built, keep it 1"),
}
_ROLE_NAMES = ("reference", "teacher", "preference")  # what ``*`` matches in a REFUSED key


def _expand(pattern: str) -> List[str]:
    parts = pattern.split(".")
    if "*" not in parts:
        return [pattern]
    i = parts.index("*")
    return [k for role in _ROLE_NAMES for k in _expand(".".join(parts[:i] + [role] + parts[i + 1:]))]


def _lookup(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def refused_values(cfg: RunConfig) -> List[Tuple[str, Any, str]]:
    """(key, value, reason) for every REFUSED key whose value differs from the schema default."""
    default = RunConfig()
    return [(key, _lookup(cfg, key), reason) for pattern, reason in REFUSED.items() for key in _expand(pattern)
            if _lookup(cfg, key) != _lookup(default, key)]


def _check_refused(cfg: RunConfig) -> None:
    for key, value, reason in refused_values(cfg):
        raise ConfigError(f"{key}={value}: {reason}")


def _one_of(key: str, value: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not allowed; choose one of {allowed}")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")


def check_model_path(key: str, path: Optional[str]) -> None:
    """A local-looking path must be a directory holding config.json; ``builtin:`` names must be known;
    a bare hub id is accepted unless HF_HUB_OFFLINE is set and it is not in the local cache."""
    if path is None:
        return
    if path.startswith("builtin:"):
        from rlplat.models.tiny import BUILTIN_PREFIX, SIZES

        _one_of(key, path, [BUILTIN_PREFIX + n for n in SIZES.names()])
        return
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ConfigError(f"{key}='{path}' is a directory without config.json, not a Hugging Face model")
        return
    if not looks_like_hub_id(path):
        raise ConfigError(f"{key}='{path}' does not exist (expected a model directory or a hub id like 'org/name')")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise ConfigError(f"{key}='{path}' is not a local directory and not in the hub cache (HF_HUB_OFFLINE=1)")


def _check_data_path(key: str, path: Optional[str]) -> None:
    if path is None or path.startswith("builtin:"):
        if path is not None:
            from rlplat.tasks import TASKS

            _one_of(key, path, ["builtin:" + name for name in TASKS.names()])
        return
    if not os.path.exists(os.path.expanduser(path)) and not looks_like_hub_dataset(path):
        raise ConfigError(f"{key}='{path}' does not exist (expected builtin:<task>, a data file or directory, "
                          "or a hub dataset id like 'org/name')")


def _check_data_options(cfg: RunConfig) -> None:
    """Data keys that act only together with another: template variables need the chat template, a
    config name a hub dataset, a held-out split another split than training."""
    d = cfg.data
    if d.chat_template_kwargs and not d.chat_template:
        raise ConfigError(f"data.chat_template_kwargs={dict(d.chat_template_kwargs)} is set but data.chat_template=false "
                          "(prompts are not rendered with the chat template); set data.chat_template=true or drop it")
    if d.config_name is not None and not any(p and is_hub_dataset(p) for p in (d.train_path, d.eval_path)):
        raise ConfigError(f"data.config_name='{d.config_name}' names a hub dataset's config, but neither "
                          f"data.train_path='{d.train_path}' nor data.eval_path='{d.eval_path}' is a hub dataset id; drop it")
    if d.eval_split == d.train_split and (d.eval_path or d.train_path) == d.train_path:
        raise ConfigError(f"data.eval_split='{d.eval_split}' is data.train_split of the same source "
                          f"data.train_path='{d.train_path}': evaluation would score the training prompts; "
                          "choose a held-out split")
    if not d.train_split or d.eval_split == "":
        raise ConfigError("data.train_split / data.eval_split must not be empty (data.eval_split: null picks the "
                          "first of eval, validation, test)")


def _check_output_dir(cfg: RunConfig) -> None:
    out = os.path.expanduser(cfg.trainer.output_dir)
    if cfg.trainer.resume == "none" and os.path.isfile(os.path.join(out, "metrics.jsonl")):
        raise ConfigError(
            f"trainer.output_dir='{cfg.trainer.output_dir}' already holds a run (metrics.jsonl); "
            "set trainer.resume=auto to continue it, or choose another trainer.output_dir")
    if cfg.trainer.resume not in ("none", "auto") and not os.path.isdir(os.path.expanduser(cfg.trainer.resume)):
        raise ConfigError(f"trainer.resume='{cfg.trainer.resume}' is neither 'none', 'auto' nor an existing checkpoint directory")


def _check_seed_streams(cfg: RunConfig) -> None:
    """Every (step, phase) draw must fit its own seed stream (``rlplat.seeds``)."""
    from rlplat import seeds

    t = cfg.trainer
    if t.max_steps > seeds.MAX_STEPS:
        raise ConfigError(f"trainer.max_steps={t.max_steps} exceeds {seeds.MAX_STEPS}, the steps the sampling seed streams cover")
    draws = [(cfg.data.prompts_per_step * cfg.algorithm.group_size, seeds.ROLLOUT, "data.prompts_per_step * algorithm.group_size")]
    if t.eval_every:
        draws.append((t.eval_max_prompts * t.eval_n, seeds.EVAL, "trainer.eval_max_prompts * trainer.eval_n"))
    for samples, phase, keys in draws:
        try:
            seeds.check_draw_size(samples, phase, keys)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _check_rollout_correction(cfg: RunConfig) -> None:
    from rlplat.config.schema import RolloutCorrectionConfig
    from rlplat.rollout_correction import KINDS, LEVELS

    rc, key = cfg.algorithm.rollout_correction, "algorithm.rollout_correction"
    _one_of(f"{key}.kind", rc.kind, KINDS.names())
    _one_of(f"{key}.level", rc.level, LEVELS.names())
    if not rc.threshold > 1:
        raise ConfigError(f"{key}.threshold={rc.threshold} must be > 1 (TIS caps the ratio at C, MIS keeps [1/C, C])")
    default = RolloutCorrectionConfig()
    if rc.kind == "none" and (rc.level, rc.threshold) != (default.level, default.threshold):
        raise ConfigError(f"{key}.level/threshold are set but {key}.kind='none' applies no correction; "
                          "set the kind (tis | mis) or drop them")


# The episode keys: without an environment each must stay at its schema default.
_EPISODE_KEYS = ("rollout.env.params", "rollout.tools", "rollout.max_turns", "rollout.max_episode_tokens",
                 "rollout.max_observation_tokens", "rollout.observation_template", "rollout.env_workers")


def _check_episodes(cfg: RunConfig) -> None:
    """rollout.env and its keys: the environment resolves and takes its params (and tools), the
    limits fit the model length, the reward reads the environment's, and the algorithm runs episodes."""
    r = cfg.rollout
    if not r.env.name:
        default = RunConfig()
        for key in _EPISODE_KEYS:
            if _lookup(cfg, key) != _lookup(default, key):
                raise ConfigError(f"{key}={_lookup(cfg, key)!r} is set but rollout.env is null (single-turn "
                                  "rollouts); set rollout.env.name to run episodes")
        return
    from rlplat import algorithms
    from rlplat.envs.registry import env_params, make_env
    from rlplat.rewards.spec import reward_specs

    for key in ("max_turns", "max_episode_tokens", "max_observation_tokens", "env_workers"):
        _at_least(f"rollout.{key}", getattr(r, key), 1)
    if "{observation}" not in r.observation_template:
        raise ConfigError(f"rollout.observation_template={r.observation_template!r} has no '{{observation}}'")
    make_env(r.env.name, env_params(r.env.params, r.tools), "rollout.env.name")  # name, methods, params
    if r.ignore_eos:
        raise ConfigError("rollout.ignore_eos=true with rollout.env: a model turn ends at EOS, so it would "
                          "never end before rollout.max_new_tokens; keep ignore_eos false for episodes")
    if r.max_episode_tokens < r.max_new_tokens:
        raise ConfigError(f"rollout.max_episode_tokens ({r.max_episode_tokens}) < rollout.max_new_tokens "
                          f"({r.max_new_tokens}): the first turn alone could not be sampled whole")
    if cfg.data.max_prompt_tokens + r.max_episode_tokens > r.max_model_len:
        raise ConfigError(
            f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + rollout.max_episode_tokens "
            f"({r.max_episode_tokens}) exceeds rollout.max_model_len ({r.max_model_len})")
    if not any(spec.fn == "env" for spec in reward_specs(cfg.reward)):
        raise ConfigError("rollout.env is set but no reward function reads the environment's reward: set "
                          "reward.fn=env, or add {fn: env, weight: ...} to reward.fns")
    refusal = algorithms.get(cfg.algorithm.name).episodes_refusal
    if refusal:
        raise ConfigError(f"rollout.env is set, but algorithm '{cfg.algorithm.name}' does not run multi-turn "
                          f"episodes: {refusal}")


def _check_optimizer(cfg: RunConfig) -> None:
    """AdamW's epsilon, the learning-rate schedule (over the algorithm's S updates) and the
    DeepSpeed passthrough."""
    from rlplat import algorithms, lr_schedules
    from rlplat.config.deepspeed_keys import check_overrides

    t = cfg.trainer
    if t.adam_eps <= 0:
        raise ConfigError(f"trainer.adam_eps={t.adam_eps} must be > 0")
    _one_of("trainer.lr_scheduler", t.lr_scheduler, lr_schedules.names())
    _at_least("trainer.warmup_steps", t.warmup_steps, 0)
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"trainer.warmup_ratio={t.warmup_ratio} must be in [0, 1)")
    if t.warmup_steps and t.warmup_ratio:
        raise ConfigError(f"trainer.warmup_steps={t.warmup_steps} and trainer.warmup_ratio={t.warmup_ratio} are both "
                          "set; set one of them (the other 0)")
    total = algorithms.get(cfg.algorithm.name).total_updates(cfg)
    if t.warmup_steps >= total:
        raise ConfigError(f"trainer.warmup_steps={t.warmup_steps} must be < the run's {total} optimizer updates "
                          "(trainer.max_steps x updates per step); lower it or use trainer.warmup_ratio")
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"trainer.min_lr_ratio={t.min_lr_ratio} must be in [0, 1] (a fraction of trainer.lr)")
    if t.lr_scheduler == "constant" and t.min_lr_ratio:
        raise ConfigError(f"trainer.min_lr_ratio={t.min_lr_ratio} acts only with a decaying trainer.lr_scheduler "
                          "(linear | cosine), and it is 'constant'; drop it or choose a decay")
    try:
        check_overrides(t.deepspeed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_run_logging(cfg: RunConfig) -> None:
    """``trainer.log_samples``, ``trainer.loggers`` and ``trainer.wandb``: wandb is optional, so a
    run that asks for it without the package fails here, before Ray starts, naming the key."""
    import importlib.util

    from rlplat.config.schema import WandbConfig

    t = cfg.trainer
    _at_least("trainer.log_samples", t.log_samples, 0)
    known = ["console", "jsonl", "tensorboard", "wandb"]
    unknown = [x for x in t.loggers if x not in known]
    if unknown or len(set(t.loggers)) != len(t.loggers):
        raise ConfigError(f"trainer.loggers={list(t.loggers)}: each of {known} at most once (unknown: {unknown})")
    if "jsonl" not in t.loggers:
        raise ConfigError(f"trainer.loggers={list(t.loggers)} must keep 'jsonl': metrics.jsonl is the run's record "
                          "(resume truncates it, benchmarks and the dashboard exporter's tests read it)")
    _one_of("trainer.wandb.mode", t.wandb.mode, ["offline", "online"])
    if "wandb" not in t.loggers:
        if t.wandb != WandbConfig():
            raise ConfigError("trainer.wandb is set, but trainer.loggers does not list 'wandb'; add it "
                              f"(trainer.loggers={list(t.loggers) + ['wandb']}) or drop trainer.wandb")
        return
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("trainer.loggers lists 'wandb', which needs the wandb package, not installed here: "
                          "pip install wandb (or rlplat[wandb]), or remove 'wandb' from trainer.loggers")
    if not t.wandb.project:
        raise ConfigError("trainer.wandb.project must not be empty")


def validate_config(cfg: RunConfig) -> None:
    """Raise ConfigError for the first problem found; the message names the key and what is allowed."""
    from rlplat import algorithms
    from rlplat.losses import AGGREGATIONS

    _check_refused(cfg)

    t, r, a, d = cfg.trainer, cfg.rollout, cfg.algorithm, cfg.data
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"trainer.zero_stage={t.zero_stage} is outside 0-3 (DeepSpeed ZeRO stages 0, 1, 2, 3)")
    _at_least("trainer.max_steps", t.max_steps, 1)
    _check_seed_streams(cfg)
    _at_least("trainer.num_ranks", t.num_ranks, 1)
    _at_least("trainer.micro_batch_tokens", t.micro_batch_tokens, 1)
    _at_least("trainer.save_every", t.save_every, 0)
    _at_least("trainer.keep_last", t.keep_last, 1)
    _at_least("trainer.sync_check_every", t.sync_check_every, 1)
    if t.lr <= 0:
        raise ConfigError(f"trainer.lr={t.lr} must be > 0")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        raise ConfigError(f"trainer.adam_betas={list(t.adam_betas)} must be two numbers in [0, 1)")
    for key, value in (("eval_group_by", t.eval_group_by), ("eval_seed", t.eval_seed)):
        if value is not None and not t.eval_every:
            raise ConfigError(f"trainer.{key}={value!r} is set but trainer.eval_every=0 (no evaluation)")
    if t.eval_seed is not None:
        _at_least("trainer.eval_seed", t.eval_seed, 0)
    if t.eval_win_ns and not t.eval_every:
        raise ConfigError("trainer.eval_win_ns is set but trainer.eval_every=0 (no evaluation): set both or neither")
    if t.eval_every:
        _at_least("trainer.eval_n", t.eval_n, 1)
        if not t.eval_ks or any(not 1 <= k <= t.eval_n for k in t.eval_ks):
            raise ConfigError(f"trainer.eval_ks={list(t.eval_ks)} must be non-empty with every k in 1..trainer.eval_n ({t.eval_n})")
        if any(not 1 <= n <= t.eval_n for n in t.eval_win_ns):
            raise ConfigError(f"trainer.eval_win_ns={list(t.eval_win_ns)}: every N must be in 1..trainer.eval_n ({t.eval_n})")
        if t.eval_win_ns and not t.eval_before_train:
            raise ConfigError("trainer.eval_win_ns compares each evaluation with the initial policy's: it needs "
                              "trainer.eval_before_train=true")
    _one_of("model.dtype", cfg.model.dtype, ["float32", "bfloat16", "float16"])
    if cfg.model.attn_implementation is not None:
        _one_of("model.attn_implementation", cfg.model.attn_implementation, list(ATTN_IMPLEMENTATIONS))
    _one_of("rollout.backend", r.backend, ["vllm", "hf"])
    _at_least("rollout.num_engines", r.num_engines, 1)
    _at_least("rollout.tensor_parallel_size", r.tensor_parallel_size, 1)
    _at_least("rollout.max_new_tokens", r.max_new_tokens, 1)
    _one_of("rollout.weight_sync", r.weight_sync, ["collective", "object_store"])
    if r.weight_sync_bucket_mb <= 0:
        raise ConfigError(f"rollout.weight_sync_bucket_mb={r.weight_sync_bucket_mb} must be > 0")
    if r.temperature <= 0:
        raise ConfigError(f"rollout.temperature={r.temperature} must be > 0 (sampling; greedy is for evaluation)")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"rollout.top_p={r.top_p} must be in (0, 1]")
    if d.max_prompt_tokens + r.max_new_tokens > r.max_model_len:
        raise ConfigError(
            f"data.max_prompt_tokens ({d.max_prompt_tokens}) + rollout.max_new_tokens ({r.max_new_tokens}) "
            f"exceeds rollout.max_model_len ({r.max_model_len})")
    _one_of("data.format", d.format, ["auto", "jsonl", "parquet", "hf_disk"])
    _at_least("data.prompts_per_step", d.prompts_per_step, 1)
    _at_least("reward.timeout_s", cfg.reward.timeout_s, 0.001)
    if a.loss_agg is not None:
        _one_of("algorithm.loss_agg", a.loss_agg, AGGREGATIONS)
    if a.dual_clip is not None and a.dual_clip <= 1:
        raise ConfigError(f"algorithm.dual_clip={a.dual_clip} must be > 1 (or null to disable)")
    _check_rollout_correction(cfg)
    _check_episodes(cfg)
    _at_least("algorithm.ppo_epochs", a.ppo_epochs, 1)
    _at_least("algorithm.mini_batches", a.mini_batches, 1)
    _at_least("algorithm.max_sampling_rounds", a.max_sampling_rounds, 1)
    if a.name not in algorithms.names():
        raise ConfigError(f"algorithm.name='{a.name}' is not registered; choose one of {algorithms.names()}")
    algorithms.get(a.name).check(cfg)
    _check_optimizer(cfg)  # S, the schedule's length, is the algorithm's
    _one_of("trainer.log_level", cfg.trainer.log_level, LOG_LEVELS)

    check_model_path("model.path", cfg.model.path)
    check_model_path("model.tokenizer", cfg.model.tokenizer)
    for role in ("reference", "teacher", "preference"):
        check_model_path(f"roles.{role}.path", getattr(cfg.roles, role).path)
        _at_least(f"roles.{role}.num_actors", getattr(cfg.roles, role).num_actors, 1)
        _at_least(f"roles.{role}.micro_batch_tokens", getattr(cfg.roles, role).micro_batch_tokens, 1)
    _check_data_path("data.train_path", d.train_path)
    _check_data_path("data.eval_path", d.eval_path)
    _check_data_options(cfg)
    if t.eval_every:
        from rlplat.data import source_for

        try:
            source_for(d, "eval")  # the rule of which source evaluation reads lives there
        except ValueError as exc:
            raise ConfigError(f"trainer.eval_every={t.eval_every}: {exc}") from None
    _check_output_dir(cfg)

    from rlplat.rewards import resolve_judge, resolve_reward
    from rlplat.rewards.spec import reward_specs

    for spec in reward_specs(cfg.reward):  # both / neither of reward.fn, reward.fns; weights; names
        resolve_reward(spec.fn, spec.key)  # raises ConfigError naming reward.fn or reward.fns[i].fn
    _check_run_logging(cfg)
    if a.nash_mp.judge:
        resolve_judge(a.nash_mp.judge)
