"""Multi-turn episodes inside a rollout engine: ``rlplat.episodes`` driven next to the model.

An engine built with ``rollout.env`` set answers ``generate`` with episodes instead of single
completions: ``EpisodeRollout.run`` makes one environment per sample, advances every live episode
of the call together (one engine sampling call per turn, the engine's own batching), runs the
environments' steps concurrently in a thread pool (their tools run in sandboxed subprocesses), and
returns one ``Sample`` per episode whose ``loss_mask`` marks the model's tokens.

The environment's reward reaches the reward worker as the row column ``env_reward`` (the built-in
reward function ``env`` returns it), so it combines with rule functions through ``reward.fns``;
``meta["episode"]`` carries each episode's turns, counters and finish reason for the step metrics.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence

from actors.rollout.common import Sample
from rlplat.episodes import EpisodeLimits, TurnSample, run_episodes
from rlplat.envs.registry import env_params, make_env

# (prompts, max new tokens each) -> one TurnSample per prompt, from the engine's sampler
TurnSampler = Callable[[List[List[int]], List[int]], List[TurnSample]]


class EpisodeRollout:
    """The episode side of an engine: ``rollout`` is the ``RolloutConfig`` (``env``, ``tools``,
    ``max_turns``, ``max_new_tokens``, ``max_episode_tokens``, ``max_observation_tokens``,
    ``observation_template``, ``env_workers``); ``tokenizer`` the engine's (observations are
    encoded once with it, model turns decoded for the environment)."""

    def __init__(self, rollout: Any, tokenizer: Any) -> None:
        self.rollout, self.tokenizer = rollout, tokenizer
        self.spec, self.params = rollout.env.name, env_params(rollout.env.params, rollout.tools)
        make_env(self.spec, self.params)  # a bad spec fails when the engine starts, not mid-step
        self.limits = EpisodeLimits(max_turns=rollout.max_turns, max_new_tokens=rollout.max_new_tokens,
                                    max_episode_tokens=rollout.max_episode_tokens,
                                    max_observation_tokens=rollout.max_observation_tokens)
        self.template = rollout.observation_template
        self.executor = ThreadPoolExecutor(max_workers=max(1, int(rollout.env_workers)))

    def encode(self, text: str) -> List[int]:
        return list(self.tokenizer.encode(self.template.format(observation=text), add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def run(self, prompt_ids: Sequence[Sequence[int]], group_size: int, meta: Optional[Dict[str, List[Any]]],
            sample: TurnSampler) -> List[List[Sample]]:
        """``group_size`` episodes per prompt, grouped per prompt as the engines' ``generate`` lays
        out samples. ``meta`` holds each prompt's ``prompt``, ``answer`` and ``extra`` (its row)."""
        meta = meta or {}
        rows = []
        for i in range(len(prompt_ids)):
            row = {"prompt": _at(meta, "prompt", i, ""), "answer": _at(meta, "answer", i, None)}
            row.update(_at(meta, "extra", i, None) or {})
            rows.extend([row] * group_size)
        prompts = [list(p) for p in prompt_ids for _ in range(group_size)]
        envs = [make_env(self.spec, self.params) for _ in prompts]
        episodes = run_episodes(envs, rows, prompts, sample, self.encode, self.decode, self.limits, self.executor)
        samples = []
        for ep in episodes:
            samples.append(Sample(token_ids=ep.token_ids, logprobs=ep.logprobs, text=self.decode(ep.token_ids),
                                  finish_reason="stop" if ep.finish_reason == "done" else "length",
                                  loss_mask=ep.loss_mask, episode=ep.summary()))
        return [samples[i * group_size:(i + 1) * group_size] for i in range(len(prompt_ids))]


def _at(meta: Dict[str, List[Any]], key: str, i: int, default: Any) -> Any:
    values = meta.get(key)
    return default if values is None else values[i]
