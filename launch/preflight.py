"""Checks and preparation that need files but no cluster: resolve model paths, load and compare
tokenizers, read and render the data (``preflight``, which ``--check`` runs too), create the run
directory. Everything here fails before Ray or any actor starts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

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


def peek_model_path(path: str) -> str:
    """``resolve_model_path`` without building: a ``builtin:`` name not built yet stays a name
    (``load_tokenizer`` knows its tokenizer), so ``--check`` takes seconds on a fresh machine."""
    if not path.startswith("builtin:"):
        return path
    from rlplat.models.tiny import cached_model_path

    return cached_model_path(path) or path


def prebuild_builtin_models(cfg: RunConfig) -> None:
    """Build every missing ``builtin:tiny-*`` model of the config at once (first run only)."""
    paths = [cfg.model.path, cfg.model.tokenizer, cfg.roles.reference.path, cfg.roles.teacher.path, cfg.roles.preference.path]
    builtin = [p for p in paths if p and p.startswith("builtin:")]
    if len(builtin) > 1:
        from rlplat.models.tiny import BUILTIN_PREFIX, SIZES, ensure_tiny_models

        sizes = [p[len(BUILTIN_PREFIX):] for p in builtin if p.startswith(BUILTIN_PREFIX)]
        ensure_tiny_models([s for s in sizes if s in SIZES])  # unknown names fail below, with their key


def resolve_paths(cfg: RunConfig, plan: AlgorithmPlan, build: bool = True) -> Dict[str, str]:
    """role -> local path or hub id for the policy, its tokenizer and every scorer role in the plan.
    ``build=False`` (``--check``): built-in models not built yet stay ``builtin:`` names."""
    if build:
        prebuild_builtin_models(cfg)
    resolve = resolve_model_path if build else peek_model_path
    policy = resolve(cfg.model.path)
    paths = {"policy": policy, "tokenizer": resolve(cfg.model.tokenizer) if cfg.model.tokenizer else policy,
             "snapshot": policy}
    roles = cfg.roles
    paths["reference"] = resolve(roles.reference.path) if roles.reference.path else policy
    if roles.teacher.path:
        paths["teacher"] = resolve(roles.teacher.path)
    if roles.preference.path:
        paths["preference"] = resolve(roles.preference.path)
    missing = [r for r in plan.scorer_roles if r not in paths]
    if missing:
        raise ConfigError(f"algorithm '{plan.name}' needs model roles {missing}: set roles.<role>.path")
    return paths


def load_tokenizer(path: str, key: str, trust_remote_code: bool = False):
    """The tokenizer at ``path`` (``key`` names the config key in errors). A ``builtin:tiny-*``
    name not built yet gives the built-in character tokenizer, the one its build saves."""
    if path.startswith("builtin:"):
        from rlplat.models.tokenizer import build_tokenizer

        return build_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, ... depending on what is wrong
        hint = ("; set model.trust_remote_code=true (launch.evaluate: --trust-remote-code) if you trust its code"
                if "trust_remote_code" in str(exc) and not trust_remote_code else "")
        raise ConfigError(f"{key}='{path}': cannot load a tokenizer: {exc}{hint}") from None


def check_same_tokenizer(policy_tok, other_path: str, key: str, trust_remote_code: bool = False) -> None:
    """Per-token log-probs of another model are only comparable if it tokenises identically."""
    other = load_tokenizer(other_path, key, trust_remote_code)
    if policy_tok.get_vocab() != other.get_vocab():
        a, b = policy_tok.get_vocab(), other.get_vocab()
        diff = sorted(set(a.items()) ^ set(b.items()))[:5]
        raise ConfigError(
            f"{key}='{other_path}' uses a different tokenizer from the policy (vocab sizes {len(a)} vs {len(b)}; "
            f"first differing entries {diff}); per-token log-probs need the same tokenizer")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(policy_tok, name) != getattr(other, name):
            raise ConfigError(f"{key}='{other_path}': {name} is {getattr(other, name)}, the policy's is {getattr(policy_tok, name)}")


@dataclass
class RunData:
    """What a run reads, loaded and rendered once: ``rows`` (``PromptRow``s; preference pairs, with
    ``extra["chosen"]`` / ``extra["rejected"]``, when ``plan.pairs``) with ``prompt_ids`` (each
    row's rendered prompt token ids, in row order), and the first ``trainer.eval_max_prompts``
    held-out rows with theirs (empty when ``trainer.eval_every`` is 0)."""

    rows: List[Any]
    prompt_ids: List[List[int]]
    eval_rows: List[Any] = field(default_factory=list)
    eval_ids: List[List[int]] = field(default_factory=list)


def tool_schemas(rollout) -> Optional[List[Dict[str, Any]]]:
    """The OpenAI-style schemas of ``rollout.tools`` for the chat template (None without tools)."""
    if not rollout.tools:
        return None
    from rlplat.envs import Toolbox, make_tools

    return Toolbox(make_tools(list(rollout.tools))).schemas()


def read_data(cfg: RunConfig, plan: AlgorithmPlan, tokenizer) -> RunData:
    """Read and render what the run will read: every training row (prompts or preference pairs)
    and, when evaluating, the first ``trainer.eval_max_prompts`` held-out rows, so that a bad
    row, a mistyped key or an over-long prompt is a ``ConfigError`` naming the file, the row and
    the key before Ray starts. The run then uses what was read here."""
    from rlplat.data import PromptSampler, group_of, load_prompts, render_prompts, source_for

    splits = [("train", None)] + ([("eval", cfg.trainer.eval_max_prompts)] if cfg.trainer.eval_every else [])
    read: Dict[str, Tuple[List[Any], List[List[int]]]] = {}
    for split, limit in splits:
        try:
            path, key = source_for(cfg.data, split)
            rows = load_prompts(cfg.data, split, pairs=plan.pairs)[:limit]
        except ValueError as exc:  # these name the file, the row (line) and the key
            raise ConfigError(f"{split} data: {exc}") from None
        try:
            read[split] = rows, render_prompts(rows, tokenizer, cfg.data, tool_schemas(cfg.rollout))
            if split == "train":
                PromptSampler(rows, cfg.data.prompts_per_step)  # every step's batch fits in the data
            elif cfg.trainer.eval_group_by is not None:
                for row in rows:
                    group_of(row, cfg.trainer.eval_group_by)
        except ValueError as exc:  # these name rows only: add the file
            raise ConfigError(f"{split} data, {key}='{path}': {exc}") from None
    return RunData(*read["train"], *read.get("eval", ([], [])))


def preflight(cfg: RunConfig, plan: AlgorithmPlan, build: bool = True) -> Tuple[Dict[str, str], Any, RunData]:
    """Everything that can fail before actors start, except the run directory: resolve the model
    paths (building built-in models unless ``build=False``), load the policy's tokenizer, compare
    the scorer roles' tokenizers with it, load the preference model's, and read and render the
    train and eval data. Returns (paths, tokenizer, data); raises ``ConfigError`` naming the key."""
    trust = cfg.model.trust_remote_code
    paths = resolve_paths(cfg, plan, build)
    unbuilt = sorted({p for p in paths.values() if p.startswith("builtin:")})
    if unbuilt:
        print(f"rlplat: {', '.join(unbuilt)} not built yet: checked with the built-in tokenizer; a run "
              "builds them first (about 6 minutes)", flush=True)
    tokenizer = load_tokenizer(paths["tokenizer"], "model.tokenizer" if cfg.model.tokenizer else "model.path", trust)
    for role in sorted(plan.scorer_roles - {"snapshot"}):
        check_same_tokenizer(tokenizer, paths[role], f"roles.{role}.path", trust)
    if plan.preference and not cfg.algorithm.nash_mp.judge and "preference" in paths:
        load_tokenizer(paths["preference"], "roles.preference.path", trust)  # a text judge: its own tokenizer
    return paths, tokenizer, read_data(cfg, plan, tokenizer)


def prepare_run_dir(cfg: RunConfig) -> str:
    """Create ``trainer.output_dir`` and save the resolved config there (never touching metrics)."""
    run_dir = os.path.abspath(os.path.expanduser(cfg.trainer.output_dir))
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    return run_dir
