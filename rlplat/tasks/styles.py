"""Answer styles and the cyclic style game: Nash-MP's non-transitive toy task.

The same number can be written three ways that ``rlplat.tasks.arithmetic.score`` reads as equal:
``plain`` (``47``), ``tenths`` (``47.0``) and ``hundredths`` (``47.00``). The style is a suffix, chosen
after the digits: a prefix (``+47``, ``047``) shifts every digit one position, and the built-in policy
fine-tuned on prefixed answers got them right far less often than plain ones (0.13 and 0.09 vs 0.39,
sampled, after 200 steps), tying style to correctness. The styled policy
``builtin:tiny-policy-styled`` is the built-in policy fine-tuned on a demonstrator who writes each
answer (its careless carry errors kept) in a style drawn independently of the problem with
probabilities ``DEMONSTRATOR``. The judge ``style_rps`` (``rlplat.rewards.judges.style_judge``)
prefers a correct answer to an incorrect one and, between two correct answers, plays
rock-paper-scissors over their styles (``BEATS``): the preference is not transitive, so the
regularised game's equilibrium ``pi*(s) ~ pi_ref(s) exp(P(s > pi*) / beta)`` is mixed.

``exploitability(pi, pi_ref, beta)`` measures how far a style distribution is from it
(docs/algorithms.md#a-cyclic-judge-the-styles-task):

    e(pi) = max_pi' [P(pi' > pi) - beta KL(pi'||pi_ref)] - [P(pi > pi) - beta KL(pi||pi_ref)]
          = beta log sum_s pi_ref(s) exp(P(s > pi) / beta)  -  1/2  +  beta KL(pi||pi_ref)

>= 0, and 0 exactly at the equilibrium; the symmetric game's duality gap is 2 e. For a neural policy,
``style_exploitability`` takes ``pi`` as the style distribution of the *correct* sampled answers
of a held-out evaluation (``eval/step_<s>.json``) and ``pi_ref`` as that of the initial policy's
(``eval/step_-1.json``).

Pure python: no torch at import (``equilibrium`` and ``exploitability`` import it).
"""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from rlplat.tasks.arithmetic import EOS_TEXT, score

STYLES = ("plain", "tenths", "hundredths")
SUFFIX = {"plain": "", "tenths": ".0", "hundredths": ".00"}
# The styled policy's demonstrator: P(style), independent of the problem (rlplat.models.tiny, size
# policy-styled). Unequal, so that pi_ref is far from the mixed equilibrium (docs/algorithms.md).
DEMONSTRATOR = {"plain": 0.6, "tenths": 0.3, "hundredths": 0.1}
# Rock-paper-scissors between correct answers: key beats value. The most common style (plain) is
# beaten by the next (tenths), which the rarest (hundredths) beats, which plain beats.
BEATS = {"tenths": "plain", "hundredths": "tenths", "plain": "hundredths"}

_FORMS = (("plain", re.compile(r"\d+")), ("tenths", re.compile(r"\d+\.0")), ("hundredths", re.compile(r"\d+\.00")))


def write_style(answer: str, style: str) -> str:
    """``answer`` (digits, no sign: ``"47"``) written in ``style``: ``47``, ``47.0`` or ``47.00``."""
    if style not in SUFFIX:
        raise ValueError(f"unknown style '{style}'; expected one of {STYLES}")
    if not answer.isdigit():
        raise ValueError(f"write_style takes an unsigned integer's digits, got {answer!r}")
    return answer + SUFFIX[style]


def style_of(text: str) -> Optional[str]:
    """The style of a response: its text before the first ``<eos>``, stripped, must be exactly one
    number in one of the three forms (``47`` plain, ``47.0`` tenths, ``47.00`` hundredths);
    anything else (``47.5``, ``47.000``, ``-47``, ``47 apples``, empty) has no style: None."""
    body = text.split(EOS_TEXT, 1)[0].strip()
    for style, form in _FORMS:
        if form.fullmatch(body):
            return style
    return None


# ----------------------------------------------------------------------------- the style game
def preference_matrix(beats: Mapping[str, str] = BEATS) -> List[List[float]]:
    """``P[i][j] = P(STYLES[i] > STYLES[j])`` between two correct answers: 1 (i beats j), 0, or 1/2
    (the same style)."""
    return [[0.5 if a == b else (1.0 if beats[a] == b else 0.0) for b in STYLES] for a in STYLES]


def _as_list(pi: Union[Mapping[str, float], Sequence[float]]) -> List[float]:
    vals = [float(pi[s]) for s in STYLES] if isinstance(pi, Mapping) else [float(x) for x in pi]
    if len(vals) != len(STYLES) or any(v < 0 or math.isnan(v) for v in vals) or abs(sum(vals) - 1) > 1e-9:
        raise ValueError(f"a style distribution is {len(STYLES)} non-negative numbers summing to 1 (order {STYLES}), got {pi}")
    return vals


def exploitability(pi: Union[Mapping[str, float], Sequence[float]], pi_ref: Union[Mapping[str, float], Sequence[float]],
                   beta: float, pref: Optional[Sequence[Sequence[float]]] = None) -> float:
    """e(pi) of the regularised game with preference matrix ``pref`` (default the style game's)
    (``rlplat.algorithms.nash_tabular.exploitability``). Distributions: a mapping style ->
    probability or a sequence in ``STYLES`` order."""
    import torch

    from rlplat.algorithms.nash_tabular import exploitability as tabular

    pref = preference_matrix() if pref is None else pref
    as_tensor = functools.partial(torch.tensor, dtype=torch.float64)
    return tabular(as_tensor(_as_list(pi)), as_tensor(_as_list(pi_ref)), as_tensor(pref), beta)


def equilibrium(pi_ref: Union[Mapping[str, float], Sequence[float]], beta: float,
                pref: Optional[Sequence[Sequence[float]]] = None) -> List[float]:
    """pi* of the regularised style game (``rlplat.algorithms.nash_tabular.equilibrium``, Newton)."""
    import torch

    from rlplat.algorithms.nash_tabular import equilibrium as solve

    pref = preference_matrix() if pref is None else pref
    pi, _ = solve(torch.tensor(_as_list(pi_ref), dtype=torch.float64), torch.tensor(pref, dtype=torch.float64), beta)
    return pi.tolist()


# ----------------------------------------------------------------------------- a policy's styles
def style_counts(records: Sequence[Mapping[str, Any]], correct_only: bool = True) -> Dict[str, int]:
    """Counts of each style (and ``None``: no style) among the sampled responses of evaluation
    records (``{"answer", "samples", ...}``, ``rlplat.held_out.evaluate(keep_samples=True)``);
    ``correct_only``: only those that ``score`` 1 against the record's answer."""
    counts: Dict[Any, int] = {s: 0 for s in (*STYLES, None)}
    for rec in records:
        if "samples" not in rec:
            raise ValueError("evaluation records without 'samples': evaluate with keep_samples=True")
        for text in rec["samples"]:
            if correct_only and score(text, rec["answer"]) != 1.0:
                continue
            counts[style_of(text)] += 1
    return counts


def style_distribution(records: Sequence[Mapping[str, Any]], correct_only: bool = True) -> Dict[str, float]:
    """Shares of the three styles among the (correct) styled sampled responses, pooled over all
    prompts (responses without a style are left out; ``style_counts`` counts them)."""
    counts = style_counts(records, correct_only)
    n = sum(counts[s] for s in STYLES)
    if n == 0:
        raise ValueError("no sampled response with a style" + (" is correct" if correct_only else ""))
    return {s: counts[s] / n for s in STYLES}


def _records(eval_json: Union[str, Path, Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    if isinstance(eval_json, Mapping):
        return eval_json["records"]
    with open(eval_json) as f:
        return json.load(f)["records"]


def style_exploitability(eval_json: Union[str, Path, Mapping[str, Any]],
                         initial_eval_json: Union[str, Path, Mapping[str, Any]], beta: float) -> float:
    """e(pi) of a policy's held-out evaluation (``<run>/eval/step_<s>.json``, or its loaded dict)
    in the style game at ``beta``, against pi_ref = the initial policy's (``eval/step_-1.json``).
    pi and pi_ref are the style distributions of the correct sampled answers, pooled over prompts
    (``style_distribution``); the correct-vs-incorrect part of the judge does not enter (see
    docs/algorithms.md for why this is the game's style part and what it leaves out)."""
    return exploitability(style_distribution(_records(eval_json)), style_distribution(_records(initial_eval_json)), beta)


__all__ = ["BEATS", "DEMONSTRATOR", "STYLES", "SUFFIX", "equilibrium", "exploitability", "preference_matrix",
           "style_counts", "style_distribution", "style_exploitability", "style_of", "write_style"]
