"""The character-level tokenizer shared by the built-in tiny policy and teacher.

One token per character, so ``decode(encode(s)) == s`` for any string over ``CHARACTERS``
(digits, ASCII letters, ASCII punctuation, space, newline, tab). Characters outside the
vocabulary become ``<unk>`` (and vanish when decoding with ``skip_special_tokens=True``).

Special tokens and their fixed ids (the model config copies them):
``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3.

Choice on special tokens: ``encode``/``__call__`` prepend ``<bos>`` and never append ``<eos>``
(``add_bos_token=True, add_eos_token=False``, Llama-style), both through the post-processor
stored in ``tokenizer.json`` (so any loader that honours tokenizer.json, vLLM included, agrees)
and through the flags in ``tokenizer_config.json``. The chat template starts with ``<bos>``
itself, because chat prompts are tokenized with ``add_special_tokens=False``.

The saved directory loads with ``transformers.AutoTokenizer.from_pretrained(dir)`` as a
``PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5).
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Union

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))

# Order is part of the format: changing it changes every token id (bump the model cache version).
CHARACTERS = string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation + " \n\t"

# Renders "<bos>user: ...\nassistant: ...\n" and, for generation, ends with "assistant:".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

# Fits the tiny models' max_position_embeddings; longer inputs are the caller's bug.
MODEL_MAX_LENGTH = 256


def _vocab() -> dict[str, int]:
    tokens = list(SPECIAL_TOKENS) + list(CHARACTERS)
    if len(set(tokens)) != len(tokens):
        raise ValueError("tokenizer vocabulary has a duplicate entry")
    return {tok: i for i, tok in enumerate(tokens)}


def _backend() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=_vocab(), unk_token=UNK_TOKEN))
    # "[\s\S]" (not ".") so newlines are split off too: every character is its own pre-token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins tokens with no separator; the default decoder would insert spaces.
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The in-memory tokenizer (vocab size ``len(SPECIAL_TOKENS) + len(CHARACTERS)``)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        # The default cleanup turns " ," into ",", which would break the exact round trip.
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )
    ids = (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)
    if ids != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
        raise RuntimeError(f"special token ids came out as {ids}, expected {(PAD_ID, BOS_ID, EOS_ID, UNK_ID)}")
    return tok


def save_tokenizer(out_dir: Union[str, Path]) -> PreTrainedTokenizerFast:
    """Write tokenizer.json, tokenizer_config.json and the chat template into ``out_dir``."""
    tok = build_tokenizer()
    tok.save_pretrained(str(out_dir))
    # transformers 5 drops these keys on save and ignores them on load (tokenizer.json's
    # post-processor rules); transformers 4 readers want the explicit flags and class name.
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(add_bos_token=True, add_eos_token=False, tokenizer_class="PreTrainedTokenizerFast")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return tok


def vocab_size() -> int:
    return len(SPECIAL_TOKENS) + len(CHARACTERS)
