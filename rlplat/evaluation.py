"""Held-out evaluation metrics: the unbiased pass@k estimator and its summary over prompts.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): draw
``n >= k`` samples of a prompt, count the ``c`` correct ones; the probability that at least one
of ``k`` samples drawn without replacement from those ``n`` is correct is

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

The product form (the paper's numpy reference) needs no binomial coefficients, whose size grows
like 2^n, and each factor lies in [0, 1], so the float product cannot overflow. Averaged over prompts it is an unbiased estimate of the
model's pass@k; ``1 - (1 - c/n)^k`` is not (biased low).

Pure: torch only (no Ray, no engines). ``rlplat.held_out.evaluate`` computes them from a generate and a
score callable; the ``python -m launch.evaluate`` CLI runs it on an in-process engine.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import torch

METRIC_PREFIX = "eval/"
GREEDY_KEY = METRIC_PREFIX + "pass@1_greedy"


def pass_at_k_key(k: int) -> str:
    """Metric name of sampled pass@k: ``eval/pass@{k}``."""
    return f"{METRIC_PREFIX}pass@{k}"


def _check_int(name: str, value: Any) -> int:
    # bool is an Integral, but pass_at_k(True, ...) is a caller bug, not n=1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"pass_at_k: {name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt from ``n`` samples with ``c`` correct: 1 - C(n-c, k) / C(n, k).

    Requires ``n >= 1``, ``0 <= c <= n`` and ``1 <= k <= n`` (``ValueError`` otherwise): with
    fewer than ``k`` samples the estimator is undefined, not 1.
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"pass_at_k: n={n} samples; need at least 1")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} correct samples must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}] (pass@k needs at least k samples per prompt)")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def check_ks(ks: Sequence[int], n: int) -> List[int]:
    """``ks`` sorted and de-duplicated; ``ValueError`` naming a k outside ``[1, n]``."""
    if not ks:
        raise ValueError("ks is empty: give at least one k for pass@k")
    out = sorted({_check_int("k", k) for k in ks})
    bad = [k for k in out if not 1 <= k <= n]
    if bad:
        raise ValueError(f"ks {bad} are outside [1, n={n}]: pass@k needs n >= k samples per prompt (raise n)")
    return out


def summarize(correct: Any, ks: Sequence[int]) -> Dict[str, float]:
    """Mean over prompts of pass@k for every k in ``ks``.

    correct  Bool/Float [num_prompts, n]  1 where sample j of prompt i is correct (a float is
             counted correct when > 0.5, so pass 0/1 values, not raw rewards)
    returns  {"eval/pass@{k}": float in [0, 1]} for each k
    """
    t = torch.as_tensor(correct)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"summarize: correct must be [num_prompts >= 1, n >= 1], got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise ValueError("summarize: correct has NaN entries (score failures must be decided before)")
        t = t > 0.5
    n = int(t.shape[1])
    counts = t.sum(dim=1).tolist()
    return {pass_at_k_key(k): sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in check_ks(ks, n)}


def summarize_groups(correct: Any, greedy_correct: Any, groups: Sequence[str], ks: Sequence[int]) -> Dict[str, float]:
    """``summarize`` (and greedy pass@1) per group of prompts: ``eval/<group>/pass@{k}``,
    ``eval/<group>/pass@1_greedy`` and ``eval/<group>/num_prompts`` for every value in ``groups``.

    correct         Bool [num_prompts, n]  as in ``summarize``
    greedy_correct  Bool [num_prompts] or None (no greedy decoding)
    groups          one label per prompt (e.g. a data column: a problem family or difficulty)
    """
    t = torch.as_tensor(correct)
    if len(groups) != t.shape[0]:
        raise ValueError(f"summarize_groups: {len(groups)} group labels for {t.shape[0]} prompts")
    out: Dict[str, float] = {}
    for label in sorted(set(groups)):
        rows = torch.tensor([g == label for g in groups])
        prefix = f"{METRIC_PREFIX}{label}/"
        out.update({prefix + k[len(METRIC_PREFIX):]: v for k, v in summarize(t[rows], ks).items()})
        if greedy_correct is not None:
            out[prefix + GREEDY_KEY[len(METRIC_PREFIX):]] = torch.as_tensor(greedy_correct)[rows].float().mean().item()
        out[prefix + "num_prompts"] = float(rows.sum())
    return out


def diversity(samples: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Diversity of sampled responses, averaged over prompts (``samples``: one list of response
    texts per prompt, compared after stripping whitespace): ``eval/distinct`` (distinct responses
    per prompt) and ``eval/entropy`` (nats: entropy of a prompt's empirical response distribution,
    0 when every sample is the same, log n when all n differ)."""
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError("diversity: need at least one prompt and one sample per prompt")
    distinct, entropy = 0.0, 0.0
    for texts in samples:
        counts: Dict[str, int] = {}
        for text in texts:
            counts[text.strip()] = counts.get(text.strip(), 0) + 1
        distinct += len(counts)
        entropy -= sum(c / len(texts) * math.log(c / len(texts)) for c in counts.values())
    return {METRIC_PREFIX + "distinct": distinct / len(samples), METRIC_PREFIX + "entropy": entropy / len(samples)}


@dataclass
class EvalResult:
    """One evaluation of a model on a prompt set.

    metrics  name -> float: ``eval/pass@{k}`` (sampled, unbiased), ``eval/pass@1_greedy`` (when
             greedy decoding ran), and bookkeeping such as ``eval/num_prompts``
    n        samples per prompt behind pass@k;  ks: the k values, ascending
    records  one dict per prompt (index, prompt, answer, num_correct, greedy response and
             correctness, sampled responses when kept), in prompt order
    """

    metrics: Dict[str, float]
    n: int
    ks: List[int]
    records: List[Dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """JSON-ready dict; a NaN metric (e.g. no valid reward at all) becomes ``None``."""
        metrics = {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()}
        return {"metrics": metrics, "n": self.n, "ks": list(self.ks), "records": list(self.records)}


__all__ = ["EvalResult", "GREEDY_KEY", "METRIC_PREFIX", "check_ks", "diversity", "pass_at_k", "pass_at_k_key", "summarize",
           "summarize_groups"]
