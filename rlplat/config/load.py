"""Load ``configs/<name>.yaml`` plus ``key=value`` overrides into a validated ``RunConfig``.

Every failure raises ``ConfigError`` with the offending key (dotted) or path and what is allowed,
within seconds and before anything expensive (Ray, model loading) starts.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from rlplat.config.errors import ConfigError
from rlplat.config.schema import RunConfig


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).split("\n")[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.structured(RunConfig)
        allowed = None
        try:
            sub = OmegaConf.select(node, parent) if parent else node
            allowed = sorted(sub.keys()) if sub is not None and hasattr(sub, "keys") else None
        except OmegaConfBaseException:
            pass
        hint = f"; allowed keys under '{parent or '<root>'}': {', '.join(allowed)}" if allowed else ""
        return ConfigError(f"{source}: unknown config key '{key}'{hint}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: bad value for '{key}': {msg}")
    return ConfigError(f"{source}: invalid config at '{key}': {msg}")


def _is_free_form(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` names a free-form mapping (a ``Dict[...]`` field such as a divergence's
    ``params`` or ``trainer.deepspeed``). An override gives such a key its whole value
    (``params={}`` empties it; ``params.alpha=0.2`` sets one entry), while a mapping given to a
    schema section merges into it (``coef={kind: linear}`` keeps the other ``coef`` fields)."""
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
    except OmegaConfBaseException:
        return False  # update() names the bad key
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (), validate: bool = True) -> RunConfig:
    """Merge schema defaults <- YAML file <- ``key=value`` overrides; return the typed config.

    ``validate=True`` also runs the value and combination checks of ``rlplat.config.validate``
    (paths exist, names are registered, algorithm requirements hold).
    """
    base = OmegaConf.structured(RunConfig)
    layers = []
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            layers.append((path, OmegaConf.load(path)))
        except Exception as exc:  # yaml syntax errors come in several types
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    merged = base
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            raise _explain(exc, source) from None
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command-line override '{item}' is not of the form key=value")
        try:
            value = OmegaConf.from_dotlist([f"v={text}"]).v  # YAML typing: 3 -> int, null -> None
            # update() walks list indices too: algorithm.divergences.0.coef.value=0.01
            OmegaConf.update(merged, key, value, merge=not _is_free_form(merged, key), force_add=False)
        except OmegaConfBaseException as exc:
            raise _explain(exc, "command line") from None
    try:
        cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise _explain(exc, path or "config") from None
    if validate:
        from rlplat.config.validate import validate_config

        validate_config(cfg)
    return cfg


def save_config(cfg: RunConfig, path: str) -> None:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    os.replace(tmp, path)
