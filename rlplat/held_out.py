"""Held-out evaluation of any policy: sampled pass@k and greedy pass@1 on a prompt set, the
generation and the scoring given as callables, so one function serves the training controller
(Ray engines and reward worker) and the ``python -m launch.evaluate`` CLI (an in-process engine).

Pure: no Ray, no engines. The metrics themselves are ``rlplat.evaluation``'s.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from rlplat.batch import Batch
from rlplat.data import group_of
from rlplat.evaluation import GREEDY_KEY, METRIC_PREFIX, EvalResult, check_ks, diversity, summarize, summarize_groups

# (prompt_ids, group_size, meta, seed) -> Batch of len(prompt_ids) * group_size rows, prompt-major,
# with meta repeated per row and meta["response_text"] / meta["finish_reason"] filled in. ``seed``
# (None: the engine's own stream) is the engines' per-call sampling seed (vLLM: prompt i uses
# ``seed + i * group_size`` onwards; HF: torch is reseeded once per call), so the same seed gives
# the same samples whatever the engine ran before.
GenerateFn = Callable[[List[List[int]], int, Dict[str, List[Any]], Optional[int]], Batch]
# (responses, answers, prompts, columns) -> rlplat.rewards.runner.RewardOutcome (RewardWorker.score's
# signature; columns: each sample's data row's other fields, PromptRow.extra).
ScoreFn = Callable[[List[str], List[Optional[str]], List[str], List[Dict[str, Any]]], Any]


def _json_float(x: float) -> Optional[float]:
    return None if math.isnan(x) else x  # a failed reward is NaN; JSON has no NaN


def _check_order(batch: Batch, rows: Sequence[Any], group_size: int, what: str) -> None:
    expected = [r.index for r in rows for _ in range(group_size)]
    got = batch.meta.get("row_index")
    if got != expected:
        raise RuntimeError(
            f"{what} generation returned {len(batch)} rows not laid out prompt-major as "
            f"{len(rows)} prompts x {group_size} samples (meta['row_index'] disagrees)"
        )


def evaluate(
    generate_fn: GenerateFn,
    rows: Sequence[Any],
    prompt_ids: Sequence[Sequence[int]],
    score: Union[ScoreFn, str],
    n: int,
    ks: Sequence[int],
    greedy_fn: Optional[GenerateFn] = None,
    correct_threshold: float = 1.0,
    reward_timeout_s: float = 10.0,
    keep_samples: bool = False,
    seed: Optional[int] = None,
    group_by: Optional[str] = None,
) -> EvalResult:
    """Sampled pass@k (``n`` samples per prompt from ``generate_fn``) and, when ``greedy_fn`` is
    given, greedy pass@1 (one argmax response per prompt) of ``rows`` (``PromptRow``s) whose
    rendered token ids are ``prompt_ids``.

    ``score``: a ``ScoreFn`` (e.g. ``RewardWorker.score`` or a Ray call to it) or a reward spec
    (``arithmetic``, ``module:function``) run here in a ``RewardRunner``. A sample is correct when
    its reward is valid and ``>= correct_threshold``; a failed reward counts as incorrect and is
    counted in ``eval/reward_invalid``. Greedy and sampled responses are scored in one call.
    ``seed`` goes to the sampled generation: a fixed seed makes evaluations at different training
    steps use the same random numbers (less noise between them) and leaves the engines' own
    sampling streams alone. ``group_by``: a column of the rows (``PromptRow.extra``); pass@k and
    greedy pass@1 are also reported per value, ``eval/<value>/pass@{k}`` (``summarize_groups``).

    Metrics: ``eval/pass@{k}`` per k, ``eval/pass@1_greedy``, ``eval/distinct`` and ``eval/entropy``
    (diversity of the sampled responses, ``rlplat.evaluation.diversity``), ``eval/reward_mean`` (valid sampled
    rewards), ``eval/reward_invalid``, ``eval/response_tokens_mean`` and ``eval/truncated_frac``
    (sampled; truncated = hit max_new_tokens), ``eval/num_prompts``, ``eval/samples_per_prompt``,
    ``eval/seconds_generate``, ``eval/seconds_reward``, ``eval/seconds``.
    """
    t_start = time.perf_counter()
    if n < 1:
        raise ValueError(f"evaluate: n={n} samples per prompt; need at least 1")
    ks = check_ks(ks, n)
    if not rows:
        raise ValueError("evaluate: no prompt rows")
    if len(rows) != len(prompt_ids):
        raise ValueError(f"evaluate: {len(rows)} rows but {len(prompt_ids)} rendered prompts")
    ids = [list(p) for p in prompt_ids]
    groups = None if group_by is None else [str(group_of(r, group_by)) for r in rows]  # a missing column fails before generating
    meta = {"prompt": [r.prompt for r in rows], "answer": [r.answer for r in rows], "row_index": [r.index for r in rows],
            "extra": [r.extra for r in rows]}

    t0 = time.perf_counter()
    greedy = greedy_fn(ids, 1, meta) if greedy_fn is not None else None
    sampled = generate_fn(ids, n, meta, seed)
    seconds_generate = time.perf_counter() - t0
    if greedy is not None:
        _check_order(greedy, rows, 1, "greedy")
    _check_order(sampled, rows, n, "sampled")

    batches = ([greedy] if greedy is not None else []) + [sampled]
    texts = [t for b in batches for t in b.meta["response_text"]]
    answers = [a for b in batches for a in b.meta["answer"]]
    prompts = [p for b in batches for p in b.meta["prompt"]]
    columns = [c for b in batches for c in b.meta["extra"]]
    t0 = time.perf_counter()
    if isinstance(score, str):
        from rlplat.rewards.runner import RewardRunner

        with RewardRunner(score, reward_timeout_s) as runner:
            outcome = runner.score(list(zip(texts, answers, prompts, columns)))
    else:
        outcome = score(texts, answers, prompts, columns)
    seconds_reward = time.perf_counter() - t0
    if outcome.rewards.numel() != len(texts):
        raise RuntimeError(f"evaluate: the reward returned {outcome.rewards.numel()} values for {len(texts)} responses")

    rewards = outcome.rewards.float()
    correct = outcome.valid & (rewards >= correct_threshold)  # NaN >= x is False anyway
    g = len(rows) if greedy is not None else 0
    sampled_rewards, sampled_correct = rewards[g:].view(len(rows), n), correct[g:].view(len(rows), n)
    sampled_valid = outcome.valid[g:]

    metrics = summarize(sampled_correct, ks)
    texts_of = sampled.meta["response_text"]
    metrics.update(diversity([texts_of[i * n:(i + 1) * n] for i in range(len(rows))]))
    if greedy is not None:
        metrics[GREEDY_KEY] = correct[:g].float().mean().item()
    if groups is not None:
        metrics.update(summarize_groups(sampled_correct, correct[:g] if greedy is not None else None, groups, ks))
    lengths = sampled.response_mask.sum(1)
    metrics.update({
        METRIC_PREFIX + "reward_mean": rewards[g:][sampled_valid].mean().item() if bool(sampled_valid.any()) else math.nan,
        METRIC_PREFIX + "reward_invalid": float(outcome.num_invalid),
        METRIC_PREFIX + "response_tokens_mean": lengths.float().mean().item(),
        METRIC_PREFIX + "truncated_frac": sum(f == "length" for f in sampled.meta["finish_reason"]) / len(sampled),
        METRIC_PREFIX + "num_prompts": float(len(rows)),
        METRIC_PREFIX + "samples_per_prompt": float(n),
        METRIC_PREFIX + "seconds_generate": seconds_generate,
        METRIC_PREFIX + "seconds_reward": seconds_reward,
    })

    records = []
    for i, row in enumerate(rows):
        rec: Dict[str, Any] = {
            "index": row.index, "prompt": row.prompt, "answer": row.answer,
            "num_correct": int(sampled_correct[i].sum()),
        }
        if greedy is not None:
            rec.update(greedy_response=greedy.meta["response_text"][i], greedy_correct=bool(correct[i]),
                       greedy_reward=_json_float(rewards[i].item()))
        if keep_samples:
            rec["samples"] = sampled.meta["response_text"][i * n:(i + 1) * n]
            rec["rewards"] = [_json_float(x) for x in sampled_rewards[i].tolist()]
        records.append(rec)
    metrics[METRIC_PREFIX + "seconds"] = time.perf_counter() - t_start
    return EvalResult(metrics=metrics, n=n, ks=ks, records=records)


def format_table(metrics: Dict[str, float]) -> str:
    """Two aligned columns: greedy pass@1, sampled pass@k by ascending k, then the rest by name."""
    def order(name: str):
        if name == GREEDY_KEY:
            return (0, 0, name)
        k = name[len(METRIC_PREFIX + "pass@"):]
        return (1, int(k), name) if name.startswith(METRIC_PREFIX + "pass@") and k.isdigit() else (2, 0, name)

    names = sorted(metrics, key=order)
    width = max(len(n) for n in names)
    return "\n".join(f"{name:<{width}}  {metrics[name]:.4f}" for name in names)
