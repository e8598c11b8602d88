"""Tiny Llama models built locally (no model hub): a policy and a stronger teacher that share the
character tokenizer of ``rlplat.models.tokenizer``.

A build writes a normal Hugging Face directory (config.json, model.safetensors in float32,
generation_config.json, tokenizer files) plus ``rlplat_build.json`` describing the build, so
``AutoModelForCausalLM.from_pretrained``, ``AutoTokenizer.from_pretrained`` and vLLM load it.

Warm start: a short supervised run on 2-digit addition from the task's train split (prompt
``"12+35="`` -> target ``" 47<eos>"``, loss on the target tokens only). The teacher learns from
correct targets only. The policy's last steps imitate a *careless demonstrator* who drops every
carry in half of the problems (``38+45=`` -> ``" 73"``): the policy can add, but has learned to
forget carries at random, a systematic error that is cheap to find and fix with a verifier (an
RL run raises its held-out pass@1 from about 0.6 to about 0.9 in 30 steps on 2 CPU cores), while
the teacher shows the right behaviour. Plain under-training does not give that: a policy that
simply has not learned addition yet makes errors RL cannot fix within minutes on a CPU.

The run uses one CPU thread: builds then agree bit for bit across machines with different core
counts, and do not thrash when Ray actors share the cores.

``policy-tools`` fine-tunes the policy on multi-turn demonstrations of the built-in tool task
(``rlplat.envs``' ``builtin:calc_arithmetic``), laid out token for token as ``rlplat.episodes``
builds episodes: a demonstrator who calls the ``calc`` tool for only some of the products.

Special paths ``"builtin:tiny-policy"`` / ``"builtin:tiny-teacher"`` resolve, through
``resolve_model_path``, to a build cached once per machine (``ensure_tiny_model``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import transformers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlplat.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer, save_tokenizer, vocab_size
from rlplat.registry import Registry
from rlplat.tasks.arithmetic import ArithmeticBonus, ArithmeticTask, score, sum_without_carries
from rlplat.tasks.styles import DEMONSTRATOR, write_style

# Bump when the architecture, tokenizer or warm-start recipe changes: cached builds are keyed by it.
CACHE_VERSION = "v3"
BUILD_INFO_FILE = "rlplat_build.json"
BUILTIN_PREFIX = "builtin:tiny-"
# The warm-start task; its held-out split is never trained on.
WARM_START_TASK = ArithmeticTask(digits=2, ops=("+",))
EVAL_PROBLEMS = 200


@dataclass(frozen=True)
class TinySpec:
    """Architecture and warm-start recipe of one size. ``head_dim`` stays >= 32 because vLLM's
    CPU attention rejects smaller heads. ``lr`` peaks after ``warmup_steps`` then decays (cosine)
    to 0 at ``warm_start_steps``; ``batch_size`` is problems per step. The last
    ``careless_steps`` steps replace each target, with probability ``careless_rate``, by the sum
    without carries (the careless demonstrator of the module docstring). Curriculum ``tools`` only:
    in the last ``tool_steps`` steps a product's demonstration calls the ``calc`` tool with
    probability ``tool_rate`` (else answers directly); before them, always."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    warm_start_steps: int
    lr: float
    head_dim: int = 32
    max_position_embeddings: int = 256
    batch_size: int = 64
    warmup_steps: int = 50
    careless_steps: int = 0
    careless_rate: float = 0.0
    base: Optional[str] = None  # a size whose default build this one fine-tunes (same architecture); None: random init
    curriculum: str = "addition"  # name in CURRICULA: the rows of each warm-start step
    tool_steps: int = 0  # curriculum tools: the last steps, where products call the tool at tool_rate
    tool_rate: float = 0.0


SIZES: Registry[TinySpec] = Registry("tiny model size")
# ~5.0M parameters. 700 correct steps reach ~95% held-out greedy accuracy; the 200 careless ones
# bring it to ~70% (sampled pass@1 ~0.6, pass@16 ~1.0), most errors being dropped carries.
# 6 min to build on one thread. Four layers: six learn addition about 1.5x slower.
SIZES.register("policy")(
    TinySpec(hidden_size=320, intermediate_size=960, num_layers=4, num_heads=10, num_kv_heads=5,
             warm_start_steps=900, lr=2e-3, careless_steps=200, careless_rate=0.5)
)
# The policy's recipe without the careless demonstrator: ~97% held-out accuracy. docs/algorithms.md#kdrl
# calls the KDRL teacher larger; a wider one (hidden 384, 7.2M) learned far slower with this
# recipe (20% after 800 steps), so the teacher is stronger, not larger. The addition skill
# appears abruptly and late: the same teacher on an 800-step schedule reached only 25%.
SIZES.register("teacher")(
    TinySpec(hidden_size=320, intermediate_size=960, num_layers=4, num_heads=10, num_kv_heads=5,
             warm_start_steps=900, lr=2e-3)
)
# The teacher, shown ``a#b = a+b+100`` besides addition (``rlplat.tasks.ArithmeticBonus``): the
# teacher of the KDRL replication's teacher-only family. 400 steps on half '+' and half '#'
# problems: greedy accuracy 0.77 on held-out "#" problems, 0.95 on additions (102 s on one thread).
SIZES.register("teacher-bonus")(
    TinySpec(hidden_size=320, intermediate_size=960, num_layers=4, num_heads=10, num_kv_heads=5,
             warm_start_steps=400, lr=5e-4, warmup_steps=20, base="teacher", curriculum="bonus")
)
# The policy writing its answers in three styles (rlplat.tasks.styles), for Nash-MP's cyclic judge
# style_rps: the policy's build fine-tuned on the careless demonstrator (its carry errors kept) whose
# answers come in a style drawn independently of the problem, 0.6 / 0.3 / 0.1 plain / tenths / hundredths.
SIZES.register("policy-styled")(
    TinySpec(hidden_size=320, intermediate_size=960, num_layers=4, num_heads=10, num_kv_heads=5,
             warm_start_steps=200, lr=5e-4, warmup_steps=20, careless_steps=200, careless_rate=0.5,
             base="policy", curriculum="styled")
)
# The policy of the built-in tool task (curriculum tools, configs/grpo_tools.yaml, docs/envs.md): the
# policy's build fine-tuned on multi-turn demonstrations, products of builtin:multiplication plus a
# quarter of additions answered directly. For 300 steps every product calls calc (the model learns to
# write the call and copy its output), in the last 100 only 40% do and the rest are answered directly.
# Held out, 200 products run as builtin:calc_arithmetic episodes: sampled (temperature 1, x4) it calls
# the tool in 0.36 of them, accuracy 0.14: 0.40 with the tool, 0.00 without; greedy it calls in 0.12,
# accuracy 0.79 with the tool, 0.00 without. Its addition skill is lost (held-out greedy 0.03, the
# policy's 0.77): a quarter or a half of additions does not keep it at this lr, and lr 5e-4, which
# loses less of it, does not teach the copy in a few hundred steps. 230 s on one thread (2 busy cores).
SIZES.register("policy-tools")(
    TinySpec(hidden_size=320, intermediate_size=960, num_layers=4, num_heads=10, num_kv_heads=5,
             warm_start_steps=400, lr=2e-3, warmup_steps=20, batch_size=32, careless_steps=400, careless_rate=0.5,
             base="policy", curriculum="tools", tool_steps=100, tool_rate=0.4)
)

Rows = List[Dict[str, Any]]


@dataclass(frozen=True)
class Curriculum:
    """Warm-start data. ``rows(spec, step, steps, seed)``: the ``batch_size`` rows ({"prompt",
    "answer"}, answer without the leading space) of warm-start step ``step`` of ``steps``.
    ``heldout(n)``: n held-out rows whose greedy accuracy the build records per value of their
    ``family`` column (``curriculum_accuracy``); None: the addition check alone."""

    rows: Callable[[TinySpec, int, int, int], Rows]
    heldout: Optional[Callable[[int], Rows]] = None
    # measure(model, tokenizer): further figures of the finished build, recorded as ``curriculum_measures``.
    measure: Optional[Callable[[LlamaForCausalLM, PreTrainedTokenizerFast], Dict[str, Any]]] = None
    # collate(tokenizer, rows): the training batch of a step's rows; None: ``_collate`` (prompt + " answer<eos>").
    collate: Optional[Callable[[PreTrainedTokenizerFast, Rows], Dict[str, torch.Tensor]]] = None


CURRICULA: Registry[Curriculum] = Registry("tiny warm-start curriculum")


def addition_rows(spec: TinySpec, step: int, steps: int, seed: int) -> Rows:
    """Additions of the warm-start task's train split; in the last ``careless_steps`` steps each
    answer is, with probability ``careless_rate``, the careless demonstrator's."""
    rows = WARM_START_TASK.generate("train", spec.batch_size, seed=seed * 1_000_003 + step, unique=False)
    if step >= steps - spec.careless_steps:
        rows = _careless(rows, spec.careless_rate, random.Random(f"careless/{seed}/{step}"))
    return rows


def bonus_rows(spec: TinySpec, step: int, steps: int, seed: int) -> Rows:
    """``a+b=`` and ``a#b=`` problems, half each in expectation (``ArithmeticBonus``' train split)."""
    return ArithmeticBonus().generate("train", spec.batch_size, seed=seed * 1_000_003 + step, unique=False)


def styled_rows(spec: TinySpec, step: int, steps: int, seed: int) -> Rows:
    """``addition_rows`` (the careless demonstrator included) with each answer written in a style
    drawn independently of the problem from ``rlplat.tasks.styles.DEMONSTRATOR`` (``47``, ``47.0``, ``47.00``)."""
    rng = random.Random(f"styles/{seed}/{step}")
    names, weights = zip(*DEMONSTRATOR.items())
    return [dict(row, answer=write_style(row["answer"], rng.choices(names, weights)[0]))
            for row in addition_rows(spec, step, steps, seed)]


@torch.no_grad()
def sampled_styles(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, problems: int = EVAL_PROBLEMS,
                   samples: int = 8, seed: int = 0) -> Dict[str, Any]:
    """Style shares of ``samples`` sampled answers (temperature 1) to each of ``problems`` held-out
    additions: over all answers (``style_shares``, ``None``: no style), over the correct ones
    (``style_shares_correct``), the sampled accuracy and the accuracy of each style's answers."""
    from rlplat.tasks.styles import STYLES, style_of

    rows = WARM_START_TASK.generate("heldout", problems, seed=0)
    model.eval()
    enc = tokenizer([r["prompt"] for r in rows], padding=True, padding_side="left", return_tensors="pt")
    torch.manual_seed(seed)
    out = model.generate(**enc, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         num_return_sequences=samples, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    keys = [*STYLES, "none"]
    n = {k: 0 for k in keys}
    right = {k: 0 for k in keys}
    for i, text in enumerate(texts):
        k = style_of(text) or "none"
        n[k] += 1
        right[k] += int(score(text, rows[i // samples]["answer"]))
    total, correct = len(texts), sum(right.values())
    return {
        "samples": total,
        "sampled_accuracy": correct / total,
        "style_shares": {k: n[k] / total for k in keys},
        "style_shares_correct": {k: right[k] / max(correct, 1) for k in keys},
        "style_accuracy": {k: (right[k] / n[k] if n[k] else None) for k in keys},
    }


CURRICULA.register("addition")(Curriculum(addition_rows))
CURRICULA.register("bonus")(Curriculum(bonus_rows, lambda n: ArithmeticBonus().generate("heldout", n, seed=0)))
# Nash-MP's cyclic judge (style_rps) needs a policy that writes its answers in several styles.
CURRICULA.register("styled")(Curriculum(styled_rows, measure=sampled_styles))


def tiny_config(size: str) -> LlamaConfig:
    """The LlamaConfig of ``size`` (a name in ``SIZES``), special ids matching the tokenizer."""
    spec = SIZES.get(size)
    if spec.hidden_size != spec.num_heads * spec.head_dim:
        raise ValueError(f"tiny '{size}': hidden_size {spec.hidden_size} != num_heads * head_dim")
    if spec.head_dim < 32:
        raise ValueError(f"tiny '{size}': head_dim {spec.head_dim} < 32 is rejected by vLLM's CPU attention")
    return LlamaConfig(
        vocab_size=vocab_size(),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype="float32",
    )


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _collate(tokenizer: PreTrainedTokenizerFast, rows: List[Dict[str, str]]) -> Dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` Long [B, T] and ``labels`` Long [B, T]
    (-100 on the prompt and padding, so only `` answer<eos>`` is learned)."""
    prompts = tokenizer([r["prompt"] for r in rows])["input_ids"]
    targets = tokenizer([" " + r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    seqs = [p + t + [EOS_ID] for p, t in zip(prompts, targets)]
    labels = [[-100] * len(p) + t + [EOS_ID] for p, t in zip(prompts, targets)]
    return _padded(seqs, labels)


def _padded(seqs: List[List[int]], labels: List[List[int]]) -> Dict[str, torch.Tensor]:
    """``seqs`` and their ``labels`` right-padded into ``input_ids`` / ``attention_mask`` / ``labels``
    Long [B, T] (padding: ``PAD_ID``, attention 0, label -100)."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [PAD_ID] * (width - len(s)) for s in seqs])
    return {
        "input_ids": ids,
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


# ------------------------------------------------------------------ the tool task (policy-tools)
# Demonstrations of the built-in tool task (rlplat.envs' builtin:calc_arithmetic on
# rlplat.tasks' builtin:multiplication rows), laid out token for token as rlplat.episodes builds an
# episode: the prompt, a model turn ending at EOS, the observation (tokenized once, through the
# run's rollout.observation_template), the next model turn. A row of the ``tools`` curriculum is
# {"prompt", "answer", "turns": the model turns' texts (EOS not written), "observations": the
# environment's observation after each turn but the last}. configs/grpo_tools.yaml runs this task.
TOOL_ENV = "builtin:calc_arithmetic"
# The observation as the model sees it (configs/grpo_tools.yaml's rollout.observation_template): the
# tool's output, then "=" after which the tiny models write their answers, "<out>1710</out>=".
TOOL_OBSERVATION_TEMPLATE = "{observation}="
TOOL_CALL = "<calc>{expression}</calc>"  # the tiny parser's format (rlplat.envs.parsers.Tiny)
# Share of the tools curriculum's rows that are additions, answered directly (the policy's careless
# demonstrator), so that the build answers additions without the tool. They do not keep its addition
# accuracy at the lr that teaches the tool (the policy-tools comment above).
TOOL_ADDITION_SHARE = 0.25
# configs/grpo_tools.yaml's episode limits: a call "<calc>99*99</calc>" is 18 tokens and its EOS, an
# observation "<out>9801</out>=" 16, an error's about 68 (its text cut to CalcArithmetic's 32
# characters plus the note "...[22 more characters]"); three turns and two observations fit.
TOOL_LIMITS = {"max_turns": 3, "max_new_tokens": 20, "max_episode_tokens": 200, "max_observation_tokens": 72}


def direct_demonstration(row: Dict[str, str]) -> Dict[str, Any]:
    """``row`` answered in one model turn, `` answer``, with no tool call."""
    return dict(row, turns=[" " + row["answer"]], observations=[])


def tool_demonstration(row: Dict[str, str]) -> Dict[str, Any]:
    """``row`` (``"a*b="``) answered with the tool: the call ``<calc>a*b</calc>``, the environment's
    observation ``<out>answer</out>`` (the tiny parser's ``format_results``), then `` answer``."""
    from rlplat.envs import make_parser

    observation = make_parser("builtin:tiny").format_results([row["answer"]])
    return dict(row, turns=[TOOL_CALL.format(expression=row["prompt"].rstrip("=")), " " + row["answer"]],
                observations=[observation])


def tool_call_rate(spec: TinySpec, step: int, steps: int) -> float:
    """The probability that the demonstration of a product calls the tool at warm-start ``step`` of
    ``steps``: 1 (learning the call and reading its output), then ``tool_rate`` in the last ``tool_steps``."""
    return spec.tool_rate if step >= steps - spec.tool_steps else 1.0


def tool_rows(spec: TinySpec, step: int, steps: int, seed: int) -> Rows:
    """``batch_size`` demonstrations: with probability ``TOOL_ADDITION_SHARE`` an addition answered
    directly (``addition_rows``, the careless demonstrator included), else a product of the train split
    of ``builtin:multiplication`` that the demonstrator works out with the tool with probability
    ``tool_call_rate`` and otherwise answers directly (the right product, which a tiny model cannot
    compute in its head: its direct answers are mostly wrong, what RL can fix by calling the tool)."""
    from rlplat.tasks.episodes import Multiplication

    rng = random.Random(f"tools/{seed}/{step}")
    # A negative seed: a stream apart from the additions' (the same seed would draw the same operands).
    products = Multiplication().generate("train", spec.batch_size, seed=-(seed * 1_000_003 + step) - 1, unique=False)
    additions = addition_rows(spec, step, steps, seed)
    rate = tool_call_rate(spec, step, steps)
    rows = []
    for product, addition in zip(products, additions):
        if rng.random() < TOOL_ADDITION_SHARE:
            rows.append(direct_demonstration(addition))
        else:
            rows.append(tool_demonstration(product) if rng.random() < rate else direct_demonstration(product))
    return rows


def episode_layout(tokenizer: PreTrainedTokenizerFast, row: Dict[str, Any],
                   template: str = TOOL_OBSERVATION_TEMPLATE) -> Tuple[List[int], List[int]]:
    """The token ids of a demonstration ``row`` as the runtime lays out its episode, and the labels:
    the prompt ids (``tokenizer(prompt)``, as ``rlplat.data`` renders a prompt without a chat
    template; labels -100), each model turn's ids and EOS (labels: the ids), each observation's
    ``tokenizer.encode(template.format(observation=...), add_special_tokens=False)`` (labels -100)."""
    ids = list(tokenizer(row["prompt"])["input_ids"])
    labels = [-100] * len(ids)
    observations = list(row["observations"])
    for i, turn in enumerate(row["turns"]):
        turn_ids = list(tokenizer(turn, add_special_tokens=False)["input_ids"]) + [EOS_ID]
        ids += turn_ids
        labels += turn_ids
        if i < len(observations):
            seen = list(tokenizer.encode(template.format(observation=observations[i]), add_special_tokens=False))
            ids += seen
            labels += [-100] * len(seen)
    return ids, labels


def _collate_episodes(tokenizer: PreTrainedTokenizerFast, rows: Rows) -> Dict[str, torch.Tensor]:
    """``_collate`` for multi-turn demonstrations (``episode_layout``): loss on the model turns only."""
    laid = [episode_layout(tokenizer, row) for row in rows]
    return _padded([ids for ids, _ in laid], [labels for _, labels in laid])


def _turn_sampler(model: LlamaForCausalLM, greedy: bool) -> Callable[[List[List[int]], List[int]], List[Any]]:
    """An ``rlplat.episodes`` sampling function over ``model.generate`` (left-padded batches; a turn is
    cut after its first EOS and at its budget; log-probs are not needed here and are 0)."""
    from rlplat.episodes import TurnSample

    def sample(prompts: List[List[int]], budgets: List[int]) -> List[TurnSample]:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(budgets), do_sample=not greedy,
                             temperature=None if greedy else 1.0, top_k=None if greedy else 0,
                             top_p=None if greedy else 1.0, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                             bos_token_id=BOS_ID)
        turns = []
        for row, budget in zip(out[:, width:].tolist(), budgets):
            row = row[:budget]
            stop = EOS_ID in row
            row = row[:row.index(EOS_ID) + 1] if stop else row
            turns.append(TurnSample(row, [0.0] * len(row), "stop" if stop else "length"))
        return turns

    return sample


@torch.no_grad()
def tool_use(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, problems: int = EVAL_PROBLEMS,
             samples: int = 4, seed: int = 0) -> Dict[str, Any]:
    """Episodes of ``builtin:calc_arithmetic`` on ``problems`` held-out products, run by
    ``rlplat.episodes.run_episodes`` with ``TOOL_OBSERVATION_TEMPLATE`` and ``TOOL_LIMITS``: greedy
    (one per problem) and sampled (``samples`` per problem, temperature 1). Per mode: the share of
    episodes that call the tool (``tool_call_rate``), the accuracy (the environment's reward) of all
    of them, of those that call it (``accuracy_with_tool``) and of those that answer directly
    (``accuracy_without_tool``; None when there are none)."""
    from rlplat.envs import make_env
    from rlplat.episodes import EpisodeLimits, run_episodes
    from rlplat.tasks.episodes import Multiplication

    model.eval()
    heldout = Multiplication().generate("heldout", problems, seed=0)

    def encode(text: str) -> List[int]:
        return list(tokenizer.encode(TOOL_OBSERVATION_TEMPLATE.format(observation=text), add_special_tokens=False))

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    def run(greedy: bool, per_problem: int) -> Dict[str, Any]:
        rows = [row for row in heldout for _ in range(per_problem)]
        prompts = [list(tokenizer(row["prompt"])["input_ids"]) for row in rows]
        episodes = run_episodes([make_env(TOOL_ENV) for _ in rows], rows, prompts, _turn_sampler(model, greedy),
                                encode, decode, EpisodeLimits(**TOOL_LIMITS))
        called = [ep.reward for ep in episodes if ep.counters["tool_calls"]]
        direct = [ep.reward for ep in episodes if not ep.counters["tool_calls"]]
        return {"episodes": len(episodes), "tool_call_rate": len(called) / len(episodes),
                "accuracy": sum(ep.reward for ep in episodes) / len(episodes),
                "accuracy_with_tool": sum(called) / len(called) if called else None,
                "accuracy_without_tool": sum(direct) / len(direct) if direct else None}

    torch.manual_seed(seed)
    return {"greedy": run(True, 1), "sampled": run(False, samples)}


# The built-in tool task's policy (builtin:tiny-policy-tools, configs/grpo_tools.yaml).
CURRICULA.register("tools")(Curriculum(tool_rows, measure=tool_use, collate=_collate_episodes))


class _Progress:
    """A line on stdout at most every ``every_s`` seconds while a build trains (a first run's
    only long silent stretch): step, share done and the time left at the rate so far."""

    def __init__(self, label: str, total: int, every_s: float = 30.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.start = self.last = time.perf_counter()

    def tick(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s or done >= self.total:
            return
        self.last = now
        left = (now - self.start) / done * (self.total - done)
        print(f"rlplat: building {self.label}: warm-start step {done}/{self.total} ({100 * done // self.total}%), "
              f"about {left / 60:.1f} min left", flush=True)


def warm_start(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: TinySpec,
               steps: int, seed: int, label: Optional[str] = None) -> float:
    """Supervised training in place for ``steps`` AdamW steps on one CPU thread; returns the
    last batch's mean cross-entropy (nats per target token), NaN when ``steps == 0``. With a
    ``label`` (the model's name), progress is printed every 30 s."""
    if steps <= 0:
        return float("nan")
    with _single_thread():
        return _train(model, tokenizer, spec, steps, seed, _Progress(label, steps) if label else None)


def _train(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: TinySpec,
           steps: int, seed: int, progress: Optional[_Progress] = None) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = min(spec.warmup_steps, steps)

    def lr_scale(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_scale)
    model.train()
    loss = torch.tensor(float("nan"))
    curriculum = CURRICULA.get(spec.curriculum)
    collate = curriculum.collate or _collate
    for step in range(steps):
        rows = curriculum.rows(spec, step, steps, seed)
        loss = model(**collate(tokenizer, rows)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress is not None:
            progress.tick(step + 1)
    model.eval()
    return float(loss.item())


def _carry_free_answer(row: Dict[str, str]) -> str:
    """The sum without carries of an addition problem ``{"prompt": "a+b=", ...}``, as text."""
    left, right = (int(x) for x in row["prompt"].rstrip("=").split("+"))
    return str(sum_without_carries(left, right))


def _careless(rows: List[Dict[str, str]], rate: float, rng: random.Random) -> List[Dict[str, str]]:
    """``rows`` (addition problems ``"a+b="``) with each answer, with probability ``rate``,
    replaced by the sum without carries."""
    return [dict(row, answer=_carry_free_answer(row)) if rng.random() < rate else row for row in rows]


@torch.no_grad()
def greedy_answers(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast,
                   rows: List[Dict[str, str]], max_new_tokens: int = 8) -> List[str]:
    """The greedy completion text of each row's prompt (special tokens dropped)."""
    if not rows:
        raise ValueError("greedy_answers needs at least one row")
    model.eval()
    enc = tokenizer([r["prompt"] for r in rows], padding=True, padding_side="left", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def answer_accuracy(texts: Sequence[str], rows: List[Dict[str, str]]) -> float:
    """Share of ``rows`` whose answer in ``texts`` ``score``s 1.0 (a fraction in [0, 1])."""
    return sum(score(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)


def heldout_accuracy(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast,
                     rows: List[Dict[str, str]], max_new_tokens: int = 8) -> float:
    """Share of ``rows`` whose greedy completion ``score``s 1.0 (a fraction in [0, 1])."""
    return answer_accuracy(greedy_answers(model, tokenizer, rows, max_new_tokens), rows)


def carry_free_rate(texts: Sequence[str], rows: List[Dict[str, str]]) -> float:
    """Share of ``rows`` (addition problems) whose answer in ``texts`` is wrong and equals the sum
    without carries: the careless demonstrator's error (a fraction in [0, 1])."""
    wrong_the_careless_way = 0
    for text, row in zip(texts, rows):
        careless = _carry_free_answer(row)
        wrong_the_careless_way += careless != row["answer"] and score(text, careless) == 1.0
    return wrong_the_careless_way / len(rows)


def _initial_model(size: str, seed: int, cache_dir: Union[str, Path, None]) -> LlamaForCausalLM:
    """The seeded random initialisation of ``size``, or the default build of its ``base``."""
    spec = SIZES.get(size)
    if spec.base is None:
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_config(size)).to(torch.float32)
    if tiny_config(spec.base).to_dict() != tiny_config(size).to_dict():
        raise ValueError(f"tiny '{size}' fine-tunes '{spec.base}' but their architectures differ")
    torch.manual_seed(seed)
    return LlamaForCausalLM.from_pretrained(ensure_tiny_model(spec.base, cache_dir), dtype=torch.float32,
                                            trust_remote_code=False)  # our own build: no remote code


def _family_accuracy(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, rows: Rows) -> Dict[str, float]:
    """Greedy accuracy per value of the rows' ``family`` column ("all" when they have none)."""
    by_family: Dict[str, List[float]] = {}
    for text, row in zip(greedy_answers(model, tokenizer, rows), rows):
        by_family.setdefault(row.get("family", "all"), []).append(score(text, row["answer"]))
    return {f: sum(v) / len(v) for f, v in sorted(by_family.items())}


def build_tiny_model(out_dir: Union[str, Path], size: str = "policy", seed: int = 0,
                     warm_start_steps: Optional[int] = None, cache_dir: Union[str, Path, None] = None) -> Dict[str, Any]:
    """Initialise (seeded) or load the base build (``TinySpec.base``, from ``cache_dir``), optionally
    warm-start, evaluate and save a tiny model in ``out_dir``.

    ``warm_start_steps=None`` uses the size's default; 0 saves the initial weights.
    Returns the build info also written to ``out_dir/rlplat_build.json``: parameter count,
    warm-start seconds (wall) and final loss, held-out greedy accuracy on 200 addition problems and
    the share of them answered with the sum without carries, and, for a curriculum with held-out
    rows, the greedy accuracy per family of 200 of them (``curriculum_accuracy``), and for one
    with a ``measure``, its figures (``curriculum_measures``).
    """
    spec = SIZES.get(size)
    curriculum = CURRICULA.get(spec.curriculum)
    steps = spec.warm_start_steps if warm_start_steps is None else int(warm_start_steps)
    if steps < 0:
        raise ValueError(f"warm_start_steps must be >= 0, got {steps}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    with _single_thread():
        model = _initial_model(size, seed, cache_dir)
        start = time.time()
        final_loss = warm_start(model, tokenizer, spec, steps, seed, label=f"{BUILTIN_PREFIX}{size}")
        seconds = time.time() - start
        heldout = WARM_START_TASK.generate("heldout", EVAL_PROBLEMS, seed=0)
        answers = greedy_answers(model, tokenizer, heldout)
        accuracy = answer_accuracy(answers, heldout)
        per_family = _family_accuracy(model, tokenizer, curriculum.heldout(EVAL_PROBLEMS)) if curriculum.heldout else None
        measures = curriculum.measure(model, tokenizer) if curriculum.measure else None
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(str(out))
    save_tokenizer(out)
    info = {
        "size": size,
        "seed": seed,
        "warm_start_steps": steps,
        "cache_version": CACHE_VERSION,
        "spec": asdict(spec),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "warm_start_seconds": round(seconds, 2),
        "final_loss": None if math.isnan(final_loss) else final_loss,
        "heldout_accuracy": accuracy,
        "heldout_carry_free_rate": carry_free_rate(answers, heldout),
        "curriculum_accuracy": per_family,
        "curriculum_measures": measures,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def default_cache_root() -> Path:
    """``$RLPLAT_CACHE/models`` when RLPLAT_CACHE is set, else ``~/.cache/rlplat/models``."""
    env = os.environ.get("RLPLAT_CACHE")
    return Path(env) / "models" if env else Path.home() / ".cache" / "rlplat" / "models"


def _cache_name(size: str, seed: int = 0, steps: Optional[int] = None) -> str:
    """Directory name of a cached build: ``<size>-<CACHE_VERSION>`` for the default recipe."""
    default = SIZES.get(size).warm_start_steps
    if (seed, default if steps is None else steps) == (0, default):
        return f"{size}-{CACHE_VERSION}"
    return f"{size}-{CACHE_VERSION}-seed{seed}-steps{steps}"


def ensure_tiny_model(size: str, cache_dir: Union[str, Path, None] = None, seed: int = 0,
                      warm_start_steps: Optional[int] = None) -> str:
    """Path of a cached build of ``size``, building it on first use.

    The build lands in ``<cache_dir or default_cache_root()>/<size>-<CACHE_VERSION>`` for the default
    recipe (seed 0, default steps), or ``<size>-<CACHE_VERSION>-seed<S>-steps<N>`` otherwise. It is built in a
    temporary sibling directory and renamed into place, so no reader ever sees a half-written
    model; an exclusive file lock makes concurrent callers wait for one build instead of racing.
    """
    spec = SIZES.get(size)
    steps = spec.warm_start_steps if warm_start_steps is None else int(warm_start_steps)
    name = _cache_name(size, seed, steps)
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    final = root / name
    if (final / BUILD_INFO_FILE).is_file():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / BUILD_INFO_FILE).is_file():  # another process built it while we waited
            return str(final)
        if final.exists():
            raise RuntimeError(f"{final} exists but is not a complete rlplat build ({BUILD_INFO_FILE} "
                               "missing); delete it to rebuild")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        print(f"rlplat: building {BUILTIN_PREFIX}{size} into {final} (first run only: a {steps}-step warm start on "
              "one CPU thread, minutes; progress every 30 s)", flush=True)
        try:
            build_tiny_model(tmp, size=size, seed=seed, warm_start_steps=steps, cache_dir=root)
            tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache should read like any directory
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(final)


def ensure_tiny_models(sizes: Sequence[str], cache_dir: Union[str, Path, None] = None) -> Dict[str, str]:
    """``ensure_tiny_model`` for several sizes (default recipe), the missing builds running at the
    same time, one single-threaded process each: a first KDRL run waits for its slowest build, not
    for the sum. A failed background build is retried here, so its error surfaces in this process."""
    sizes = list(dict.fromkeys(sizes))
    for size in sizes:
        SIZES.get(size)  # an unknown size fails before anything starts
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    missing = [s for s in sizes if not (root / _cache_name(s) / BUILD_INFO_FILE).is_file()]
    background = [
        subprocess.Popen([sys.executable, "-c",
                          f"from rlplat.models.tiny import ensure_tiny_model; ensure_tiny_model({s!r}, {str(root)!r})"])
        for s in missing[1:]
    ]
    try:
        return {s: ensure_tiny_model(s, root) for s in sizes}  # builds missing[0] here, then waits on the locks
    finally:
        for proc in background:
            proc.wait()


def _builtin_size(path: str) -> str:
    size = path[len(BUILTIN_PREFIX):] if path.startswith(BUILTIN_PREFIX) else None
    if size not in SIZES:
        valid = ", ".join(BUILTIN_PREFIX + s for s in SIZES.names())
        raise ValueError(f"unknown built-in model '{path}'; valid: {valid}")
    return size


def resolve_model_path(path: str) -> str:
    """``"builtin:tiny-<size>"`` -> local directory of that cached build; any other string
    (a local path or a hub id) is returned unchanged."""
    if not path.startswith("builtin:"):
        return path
    return ensure_tiny_model(_builtin_size(path))


def cached_model_path(path: str) -> Optional[str]:
    """The cached build of ``"builtin:tiny-<size>"`` when it is complete, else None (nothing is built)."""
    final = default_cache_root() / _cache_name(_builtin_size(path))
    return str(final) if (final / BUILD_INFO_FILE).is_file() else None
