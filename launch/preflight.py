"""Checks and preparation that need files but no cluster: resolve model paths, compare tokenizers,
create the run directory. Everything here fails before Ray or any actor starts."""
from __future__ import annotations

import os
from typing import Dict

from rlplat.algorithms import AlgorithmPlan
from rlplat.config.errors import ConfigError
from rlplat.config.load import save_config
from rlplat.config.schema import RunConfig


def resolve_model_path(path: str) -> str:
    """``builtin:`` names are built on first use (cached); anything else goes to ``from_pretrained``."""
    if not path.startswith("builtin:"):
        return path
    from rlplat.models.tiny import resolve_model_path as resolve_builtin

    return resolve_builtin(path)


def prebuild_builtin_models(cfg: RunConfig) -> None:
    """Build every missing ``builtin:tiny-*`` model of the config at once (first run only)."""
    paths = [cfg.model.path, cfg.model.tokenizer, cfg.roles.reference.path, cfg.roles.teacher.path, cfg.roles.preference.path]
    builtin = [p for p in paths if p and p.startswith("builtin:")]
    if len(builtin) > 1:
        from rlplat.models.tiny import BUILTIN_PREFIX, SIZES, ensure_tiny_models

        sizes = [p[len(BUILTIN_PREFIX):] for p in builtin if p.startswith(BUILTIN_PREFIX)]
        ensure_tiny_models([s for s in sizes if s in SIZES])  # unknown names fail below, with their key


def resolve_paths(cfg: RunConfig, plan: AlgorithmPlan) -> Dict[str, str]:
    """role -> local path or hub id for the policy, its tokenizer and every scorer role in the plan."""
    prebuild_builtin_models(cfg)
    policy = resolve_model_path(cfg.model.path)
    paths = {"policy": policy, "tokenizer": resolve_model_path(cfg.model.tokenizer) if cfg.model.tokenizer else policy,
             "snapshot": policy}
    roles = cfg.roles
    paths["reference"] = resolve_model_path(roles.reference.path) if roles.reference.path else policy
    if roles.teacher.path:
        paths["teacher"] = resolve_model_path(roles.teacher.path)
    if roles.preference.path:
        paths["preference"] = resolve_model_path(roles.preference.path)
    missing = [r for r in plan.scorer_roles if r not in paths]
    if missing:
        raise ConfigError(f"algorithm '{plan.name}' needs model roles {missing}: set roles.<role>.path")
    return paths


def load_tokenizer(path: str, key: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError, ... depending on what is wrong
        raise ConfigError(f"{key}='{path}': cannot load a tokenizer: {exc}") from None


def check_same_tokenizer(policy_tok, other_path: str, key: str) -> None:
    """Per-token log-probs of another model are only comparable if it tokenises identically."""
    other = load_tokenizer(other_path, key)
    if policy_tok.get_vocab() != other.get_vocab():
        a, b = policy_tok.get_vocab(), other.get_vocab()
        diff = sorted(set(a.items()) ^ set(b.items()))[:5]
        raise ConfigError(
            f"{key}='{other_path}' uses a different tokenizer from the policy (vocab sizes {len(a)} vs {len(b)}; "
            f"first differing entries {diff}); per-token log-probs need the same tokenizer")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(policy_tok, name) != getattr(other, name):
            raise ConfigError(f"{key}='{other_path}': {name} is {getattr(other, name)}, the policy's is {getattr(policy_tok, name)}")


def check_data(cfg: RunConfig, plan: AlgorithmPlan, tokenizer) -> None:
    """Read and render the training rows (prompts or preference pairs) and, when evaluating, the
    held-out prompts, so that a bad row, a mistyped key or an over-long prompt is a ``ConfigError``
    naming it before Ray starts."""
    from rlplat.data import load_prompts, render_prompts

    splits = [("train", plan.pairs)] + ([("eval", False)] if cfg.trainer.eval_every else [])
    for split, pairs in splits:
        try:
            render_prompts(load_prompts(cfg.data, split, pairs=pairs), tokenizer, cfg.data)
        except ValueError as exc:
            raise ConfigError(f"{split} data: {exc}") from None


def prepare_run_dir(cfg: RunConfig) -> str:
    """Create ``trainer.output_dir`` and save the resolved config there (never touching metrics)."""
    run_dir = os.path.abspath(os.path.expanduser(cfg.trainer.output_dir))
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    return run_dir
