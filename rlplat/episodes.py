"""Token-exact multi-turn episodes: environments driven turn by turn over a sampling function.

An episode starts from a prompt (token ids, already rendered) and alternates model turns and
observations until the environment says done or a limit ends it. Its history is kept as token ids
only: each model turn exactly as the engine sampled it (never decoded and re-encoded), each
observation tokenized once (``encode``) and appended. Every live episode of a call advances in the
same ``sample`` call per turn (the engine batches them); the environments' ``step``s of a turn run
concurrently (``executor``), since tools may run subprocesses for seconds.

What an episode yields, after the prompt (T = its tokens after the prompt):

    token_ids   [T]  model turns and observations, in order
    loss_mask   [T]  1 on model tokens, 0 on observation tokens (never trained, in no normaliser)
    logprobs    [T]  the sampler's log-prob (nats) of each model token; 0.0 on observation tokens

The first observation: the model first sees the run's rendered prompt of the row; ``reset(row)``
returns the environment's first observation, which is appended (tokenized once) unless it is the
row's prompt itself (the built-in environments' case: the prompt says everything).

Limits (``EpisodeLimits``): ``max_turns`` model turns; ``max_episode_tokens`` tokens after the
prompt (a turn is sampled with at most what is left, an observation that does not fit ends the
episode, ``finish_reason`` "length"); ``max_observation_tokens`` per observation (longer ones are
cut, counted in ``observation_truncated``). Errors in environment code (``reset`` or ``step``
raising) end that episode with reward 0 and ``env_errors`` 1: counted and reported, not a silent 0.
"""
from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from rlplat.envs.protocol import COUNTERS

# (prompts as token ids, max new tokens of each) -> one (token_ids, logprobs, finish_reason) per
# prompt: the engine's sampler, EOS ending a turn (included in token_ids when sampled).
SampleFn = Callable[[List[List[int]], List[int]], List["TurnSample"]]
EncodeFn = Callable[[str], List[int]]  # observation text -> token ids, no special tokens added
DecodeFn = Callable[[List[int]], str]  # a model turn's token ids -> the text the environment reads

# Per-episode counters: the environments' (``rlplat.envs.protocol.COUNTERS``) and the runtime's own.
EPISODE_COUNTERS = COUNTERS + ("env_errors", "observation_truncated")
FINISH_REASONS = ("done", "max_turns", "length", "error")


@dataclass(frozen=True)
class TurnSample:
    """One model turn: the sampled token ids and their log-probs (nats), and why sampling stopped
    ("stop": EOS, "length": the turn's token limit)."""

    token_ids: List[int]
    logprobs: List[float]
    finish_reason: str


@dataclass(frozen=True)
class EpisodeLimits:
    """max_turns: model turns per episode (>= 1); max_new_tokens: tokens per model turn;
    max_episode_tokens: tokens after the prompt, turns and observations together;
    max_observation_tokens: longest observation, cut beyond (``observation_truncated``)."""

    max_turns: int
    max_new_tokens: int
    max_episode_tokens: int
    max_observation_tokens: int

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_new_tokens", "max_episode_tokens", "max_observation_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EpisodeLimits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Episode:
    """One episode after its prompt; see the module docstring for the three aligned lists.
    ``reward``: the sum of the environment's step rewards; ``turns``: model turns taken;
    ``finish_reason``: one of ``FINISH_REASONS``; ``counters``: ``EPISODE_COUNTERS`` summed over
    the steps; ``error``: the environment's exception text when ``finish_reason`` is "error"."""

    token_ids: List[int] = field(default_factory=list)
    loss_mask: List[int] = field(default_factory=list)
    logprobs: List[float] = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    finish_reason: str = ""
    counters: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(EPISODE_COUNTERS, 0))
    error: Optional[str] = None

    @property
    def observation_tokens(self) -> int:
        return len(self.loss_mask) - sum(self.loss_mask)

    def summary(self) -> Dict[str, Any]:
        """What the batch keeps of the episode (``meta["episode"]``) for the step metrics and logs."""
        return {"turns": self.turns, "finish_reason": self.finish_reason, "reward": self.reward,
                "tokens": len(self.token_ids), "observation_tokens": self.observation_tokens, "error": self.error,
                **self.counters}

    def _append(self, ids: Sequence[int], model: bool, logprobs: Optional[Sequence[float]] = None) -> None:
        self.token_ids.extend(ids)
        self.loss_mask.extend([1 if model else 0] * len(ids))
        self.logprobs.extend(logprobs if model else [0.0] * len(ids))

    def _fail(self, exc: BaseException) -> None:
        self.finish_reason, self.error = "error", f"{type(exc).__name__}: {exc}"
        self.counters["env_errors"] += 1


def _observe(episode: Episode, text: str, encode: EncodeFn, limits: EpisodeLimits, remaining: int) -> bool:
    """Append observation ``text`` (cut to ``max_observation_tokens``); False when it does not fit
    in the ``remaining`` episode tokens beside a next turn of at least one token."""
    ids = list(encode(text)) if text else []
    if len(ids) > limits.max_observation_tokens:
        ids = ids[: limits.max_observation_tokens]
        episode.counters["observation_truncated"] += 1
    if len(ids) + 1 > remaining:
        episode.finish_reason = "length"
        return False
    episode._append(ids, model=False)
    return True


def run_episodes(envs: Sequence[Any], rows: Sequence[Mapping[str, Any]], prompt_ids: Sequence[Sequence[int]],
                 sample: SampleFn, encode: EncodeFn, decode: DecodeFn, limits: EpisodeLimits,
                 executor: Optional[Executor] = None) -> List[Episode]:
    """Run one episode per ``(envs[i], rows[i], prompt_ids[i])`` to its end; returns them in order.

    ``envs``: fresh environment instances, one per episode (an instance runs one episode at a time);
    ``rows``: the data rows ``{"prompt", "answer", **columns}`` given to ``reset``."""
    if not (len(envs) == len(rows) == len(prompt_ids)):
        raise ValueError(f"run_episodes: {len(envs)} environments, {len(rows)} rows, {len(prompt_ids)} prompts")
    own = executor is None
    executor = executor or ThreadPoolExecutor(max_workers=max(1, min(32, len(envs))))
    try:
        return _run(envs, rows, prompt_ids, sample, encode, decode, limits, executor)
    finally:
        if own:
            executor.shutdown(wait=True)


def _run(envs, rows, prompt_ids, sample, encode, decode, limits, executor) -> List[Episode]:
    episodes = [Episode() for _ in envs]
    live: List[int] = []
    for i, first in enumerate(executor.map(_call_reset, envs, rows)):
        if isinstance(first, BaseException):
            episodes[i]._fail(first)
            continue
        if first and first != str(rows[i].get("prompt", "")):
            if not _observe(episodes[i], first, encode, limits, limits.max_episode_tokens):
                continue
        live.append(i)
    while live:
        budgets = [min(limits.max_new_tokens, limits.max_episode_tokens - len(episodes[i].token_ids)) for i in live]
        turns = sample([list(prompt_ids[i]) + episodes[i].token_ids for i in live], budgets)
        if len(turns) != len(live):
            raise RuntimeError(f"run_episodes: the sampler returned {len(turns)} turns for {len(live)} episodes")
        for i, turn in zip(live, turns):
            if len(turn.token_ids) != len(turn.logprobs):
                raise RuntimeError(f"run_episodes: a turn has {len(turn.token_ids)} tokens, {len(turn.logprobs)} log-probs")
            episodes[i]._append(turn.token_ids, model=True, logprobs=turn.logprobs)
            episodes[i].turns += 1
        texts = [decode(t.token_ids) for t in turns]
        results = list(executor.map(_call_step, [envs[i] for i in live], texts))
        still: List[int] = []
        for i, result in zip(live, results):
            ep = episodes[i]
            if isinstance(result, BaseException):
                ep._fail(result)
                continue
            ep.reward += float(result.reward)
            for name in COUNTERS:
                ep.counters[name] += int(result.info.get(name, 0))
            remaining = limits.max_episode_tokens - len(ep.token_ids)
            if result.done:
                ep.finish_reason = "done"
            elif ep.turns >= limits.max_turns:
                ep.finish_reason = "max_turns"
            elif remaining < 1:
                ep.finish_reason = "length"
            elif _observe(ep, result.observation, encode, limits, remaining):
                still.append(i)
        live = still
    return episodes


def _call_reset(env: Any, row: Mapping[str, Any]) -> Any:
    try:
        return str(env.reset(dict(row)))
    except Exception as exc:  # user code: counted on the episode, never raised into the engine
        return exc


def _call_step(env: Any, text: str) -> Any:
    try:
        return env.step(text)
    except Exception as exc:
        return exc


def episode_metrics(summaries: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """Per-batch figures from ``Episode.summary()``s: ``episode/turns_mean``, ``episode/tool_calls_mean``,
    the summed counters ``episode/tool_errors``, ``episode/tool_timeouts``, ``episode/tool_output_truncated``,
    ``episode/env_errors``, ``episode/observation_truncated``, ``episode/truncated`` (episodes ended
    by a limit, not by the environment) and ``episode/observation_token_share`` (observation tokens
    over all tokens after the prompts)."""
    n = max(1, len(summaries))
    tokens = sum(e["tokens"] for e in summaries)

    def total(key: str) -> float:
        return float(sum(e[key] for e in summaries))

    return {
        "episode/turns_mean": total("turns") / n,
        "episode/tool_calls_mean": total("tool_calls") / n,
        "episode/tool_errors": total("tool_errors"),
        "episode/tool_timeouts": total("tool_timeouts"),
        "episode/tool_output_truncated": total("truncated"),
        "episode/env_errors": total("env_errors"),
        "episode/observation_truncated": total("observation_truncated"),
        "episode/truncated": float(sum(e["finish_reason"] in ("max_turns", "length") for e in summaries)),
        "episode/observation_token_share": total("observation_tokens") / max(1, tokens),
    }
