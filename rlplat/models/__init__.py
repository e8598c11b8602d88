"""Locally built tiny models and their character tokenizer (no model hub needed)."""
from rlplat.models.tiny import (
    SIZES,
    TinySpec,
    build_tiny_model,
    default_cache_root,
    ensure_tiny_model,
    ensure_tiny_models,
    heldout_accuracy,
    resolve_model_path,
    tiny_config,
)
from rlplat.models.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    build_tokenizer,
    save_tokenizer,
)

__all__ = [
    "SIZES", "TinySpec", "build_tiny_model", "default_cache_root", "ensure_tiny_model", "ensure_tiny_models",
    "heldout_accuracy", "resolve_model_path", "tiny_config",
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "build_tokenizer", "save_tokenizer",
]
