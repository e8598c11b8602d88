"""The styles task (docs/algorithms.md#a-cyclic-judge-the-styles-task): answer styles, the
cyclic judge ``style_rps``, the style game's exact equilibrium and exploitability, and the tabular
claim the replication measures (Mirror Prox converges in the last iterate, one-step mirror descent
with the same step size does not)."""
import itertools
import json
import math
import random

import pytest
import torch

from rlplat.algorithms import nash_tabular
from rlplat.config import ConfigError
from rlplat.rewards import resolve_judge
from rlplat.rewards.judges import JUDGES, checker_judge, style_judge
from rlplat.tasks.arithmetic import score
from rlplat.tasks.styles import (
    BEATS, DEMONSTRATOR, STYLES, equilibrium, exploitability, preference_matrix, style_counts, style_distribution,
    style_exploitability, style_of, write_style,
)

# The replication's setting (docs/algorithms.md): pi_ref = the demonstrator's style distribution.
BETA, ETA = 0.1, 0.5
REF = [DEMONSTRATOR[s] for s in STYLES]


@pytest.mark.parametrize("text,style", [
    (" 47", "plain"), ("47", "plain"), (" 0", "plain"), (" 007", "plain"), (" 47.0", "tenths"), ("47.0<eos>junk", "tenths"),
    (" 47.00", "hundredths"), (" 198.00\n", "hundredths"), (" 47.5", None), (" 47.000", None), (" +47", None),
    (" -47", None), (" 47 apples", None), ("", None), (" 4 7", None), (" 47.", None),
])
def test_style_of(text, style):
    assert style_of(text) == style


def test_every_style_scores_as_the_number():
    for answer in ("0", "7", "47", "198"):
        for s in STYLES:
            text = " " + write_style(answer, s)
            assert style_of(text) == s and score(text, answer) == 1.0
    with pytest.raises(ValueError):
        write_style("47", "bold")
    with pytest.raises(ValueError):
        write_style("-47", "plain")


RESPONSES = [" 83", " 83.0", " 83.00", " 73", " 73.0", " 83 apples", " 83.5", "", " 74.00"]


def test_style_judge_is_antisymmetric_and_cyclic():
    for a, b in itertools.product(RESPONSES, repeat=2):
        assert style_judge("38+45=", a, b, "83") + style_judge("38+45=", b, a, "83") == 1.0, (a, b)
    j = lambda a, b: style_judge("38+45=", a, b, "83")  # noqa: E731
    assert j(" 83", " 73") == 1.0 and j(" 73.00", " 83.00") == 0.0  # correct beats incorrect, whatever the style
    assert j(" 73", " 74.00") == 0.5  # both wrong: a tie
    assert j(" 83.0", " 83") == 1.0 and j(" 83.00", " 83.0") == 1.0 and j(" 83", " 83.00") == 1.0  # a cycle
    assert j(" 83 apples", " 83") == 0.0 and j(" 83 apples", " 83 apples") == 0.5  # unstyled correct loses to styled
    # The checker ignores style; both are registered, and module:function still resolves.
    assert checker_judge("38+45=", " 83.0", " 83", "83") == 0.5
    assert JUDGES.get("style_rps") is style_judge and resolve_judge("style_rps") is style_judge
    assert resolve_judge("checker") is checker_judge
    assert resolve_judge("rlplat.rewards.judges:style_judge") is style_judge


def test_unknown_judge_name_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as err:
        resolve_judge("style_rsp")
    msg = str(err.value)
    assert msg.startswith("algorithm.nash_mp.judge='style_rsp'") and "checker, style_rps" in msg


def test_preference_matrix_is_rock_paper_scissors():
    p = torch.tensor(preference_matrix(), dtype=torch.float64)
    assert torch.equal(p + p.T, torch.ones(3, 3, dtype=torch.float64))
    assert sorted(BEATS) == sorted(STYLES) and sorted(BEATS.values()) == sorted(STYLES)  # each beats exactly one
    assert all(BEATS[BEATS[BEATS[s]]] == s for s in STYLES)  # a 3-cycle: not transitive


def brute_force_exploitability(pi, ref, beta, step=0.0025):
    """max over a grid of the simplex of P(pi' > pi) - beta KL(pi'||ref), minus the value at pi."""
    pref = preference_matrix()
    w = [sum(pij * q for pij, q in zip(row, pi)) for row in pref]

    def payoff(p):
        return sum(a * x for a, x in zip(p, w)) - beta * sum(a * math.log(a / r) for a, r in zip(p, ref) if a > 0)

    n = round(1 / step)
    best = max(payoff((i * step, j * step, (n - i - j) * step)) for i in range(n + 1) for j in range(n + 1 - i))
    return best - payoff(pi)


def test_exploitability_is_zero_exactly_at_the_equilibrium_and_positive_elsewhere():
    star = equilibrium(REF, BETA)
    assert abs(exploitability(star, REF, BETA)) < 1e-9
    # The equilibrium is mixed and far from pi_ref, whose exploitability is well above 0.
    assert min(star) > 0.2 and 0.5 * sum(abs(a - b) for a, b in zip(star, REF)) > 0.25
    assert exploitability(REF, REF, BETA) > 0.1
    rng = random.Random(0)
    for _ in range(50):
        x = [rng.random() for _ in STYLES]
        pi = [v / sum(x) for v in x]
        assert exploitability(pi, REF, BETA) > 1e-6
    for pi in ([1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1 / 3] * 3, star):
        e = exploitability(pi, REF, BETA)
        brute = brute_force_exploitability(pi, REF, BETA)
        assert brute <= e + 1e-12 and e - brute < 2e-4, (pi, e, brute)  # the grid's max is within its spacing


def test_exploitability_matches_the_tabular_equilibrium_on_random_games():
    g = torch.Generator().manual_seed(0)
    pref = nash_tabular.random_preference(3, g)
    ref = torch.softmax(torch.randn(3, generator=g, dtype=torch.float64), -1)
    star, _ = nash_tabular.equilibrium(ref, pref, 0.2)
    assert abs(exploitability(star.tolist(), ref.tolist(), 0.2, pref.tolist())) < 1e-9
    assert exploitability(ref.tolist(), ref.tolist(), 0.2, pref.tolist()) > 0


def test_mirror_prox_converges_and_mirror_descent_cycles_on_the_style_game():
    """The replication's claim in the exact tabular model: with beta 0.1 and eta 0.5 from pi_ref,
    Mirror Prox's exploitability falls below 1e-4 in 10 iterations and keeps falling; one-step
    mirror descent with the same eta stays above e(pi_ref) / 2 for 30 iterations."""
    pref = torch.tensor(preference_matrix(), dtype=torch.float64)
    ref = torch.tensor(REF, dtype=torch.float64)
    e0 = exploitability(REF, REF, BETA)
    mp = [exploitability(p.tolist(), REF, BETA) for p in nash_tabular.mirror_prox(ref, pref, BETA, ETA, 30)]
    md = [exploitability(p.tolist(), REF, BETA) for p in nash_tabular.mirror_descent(ref, pref, BETA, ETA, 30)]
    assert mp[10] < 1e-4 and mp[20] < 1e-7 and mp[30] < mp[20]
    assert min(md[1:]) > e0 / 2


def record(answer, samples):
    return {"index": 0, "prompt": "?", "answer": answer, "samples": samples, "rewards": [score(s, answer) for s in samples]}


def test_style_exploitability_reads_evaluation_files(tmp_path):
    initial = {"metrics": {}, "records": [record("83", [" 83"] * 6 + [" 83.0"] * 3 + [" 83.00", " 73.0", " 1"]),
                                          record("7", [" 7"] * 6 + [" 7.0"] * 3 + [" 7.00", " 8", " 7.5"])]}
    later = {"metrics": {}, "records": [record("83", [" 83"] * 3 + [" 83.0"] * 5 + [" 83.00"] * 2 + [" 73.00"] * 2),
                                        record("7", [" 7"] * 3 + [" 7.0"] * 4 + [" 7.00"] * 3 + [" 7 apples"])]}
    counts = style_counts(initial["records"])
    assert counts == {"plain": 12, "tenths": 6, "hundredths": 2, None: 0}  # correct answers only
    assert style_counts(initial["records"], correct_only=False)[None] == 1  # " 7.5"
    assert style_distribution(initial["records"]) == {"plain": 0.6, "tenths": 0.3, "hundredths": 0.1}
    later_pi = style_distribution(later["records"])  # " 7 apples" is correct but has no style: left out
    assert later_pi == {"plain": 6 / 20, "tenths": 9 / 20, "hundredths": 5 / 20}
    (tmp_path / "step_-1.json").write_text(json.dumps(initial))
    (tmp_path / "step_9.json").write_text(json.dumps(later))
    e = style_exploitability(tmp_path / "step_9.json", tmp_path / "step_-1.json", BETA)
    assert e == exploitability(later_pi, REF, BETA)
    assert style_exploitability(initial, initial, BETA) == exploitability(REF, REF, BETA)


def test_styled_demonstrator_writes_each_style_independently_of_the_problem():
    """builtin:tiny-policy-styled's warm-start rows: every answer styled, the styles at the
    demonstrator's rates whether or not the careless demonstrator dropped the carries."""
    from rlplat.models.tiny import SIZES, styled_rows

    spec = SIZES.get("policy-styled")
    assert spec.base == "policy" and spec.careless_steps == spec.warm_start_steps and spec.careless_rate == 0.5
    rows = [r for step in range(60) for r in styled_rows(spec, step, spec.warm_start_steps, 0)]
    by_outcome = {True: [], False: []}
    for r in rows:
        left, right = map(int, r["prompt"][:-1].split("+"))
        by_outcome[score(r["answer"], str(left + right)) == 1.0].append(style_of(r["answer"]))
    wrong = len(by_outcome[False]) / len(rows)
    assert 0.25 < wrong < 0.45  # half of the ~70% of problems that carry (0.35 here)
    for outcome, styles in by_outcome.items():
        for s in STYLES:
            assert abs(styles.count(s) / len(styles) - DEMONSTRATOR[s]) < 0.05, (outcome, s)


@pytest.mark.parametrize("r", [0.1, 0.5])
def test_the_full_games_equilibrium_plays_the_style_equilibrium_among_correct_answers(r):
    """The judge's whole game on one prompt (incorrect answers lumped: they tie with each other and
    lose to every correct one), pi_ref = accuracy r with the demonstrator's styles: at the equilibrium,
    correct answers have exactly the style game's equilibrium at beta / a* (a* its accuracy), whose
    exploitability at beta is below 2e-4 (what style_exploitability leaves out)."""
    rps = torch.tensor(preference_matrix(), dtype=torch.float64)
    full = torch.full((4, 4), 0.5, dtype=torch.float64)
    full[:3, :3], full[:3, 3], full[3, :3] = rps, 1.0, 0.0
    ref = torch.tensor([*(r * p for p in REF), 1 - r], dtype=torch.float64)
    star, _ = nash_tabular.equilibrium(ref, full, BETA)
    a = float(star[:3].sum())
    styles = (star[:3] / a).tolist()
    assert a > 0.93
    assert max(abs(x - y) for x, y in zip(styles, equilibrium(REF, BETA / a))) < 1e-9
    assert exploitability(styles, REF, BETA) < 2e-4
