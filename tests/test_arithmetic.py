"""The built-in arithmetic task: determinism, disjoint splits, the exact checker, jsonl I/O."""
import pytest

from rlplat.tasks import TASKS
from rlplat.tasks.arithmetic import (
    ArithmeticBonus, ArithmeticTask, CarryConvention, read_jsonl, score, sum_without_carries, write_jsonl,
)


def test_generate_is_deterministic_and_seed_dependent():
    task = ArithmeticTask(digits=2, ops=("+", "-", "*"))
    a = task.generate("train", 50, seed=3)
    assert a == task.generate("train", 50, seed=3)
    assert a != task.generate("train", 50, seed=4)


def test_rows_have_correct_answers():
    task = ArithmeticTask(digits=3, ops=("+", "-", "*"))
    for row in task.generate("train", 200, seed=0):
        expr = row["prompt"]
        assert expr.endswith("=")
        assert int(row["answer"]) == eval(expr[:-1])  # noqa: S307 - our own digits and one operator
        assert int(row["answer"]) >= 0  # subtraction orders its operands


def test_train_and_heldout_are_disjoint_across_seeds():
    task = ArithmeticTask(digits=2)
    train = {r["prompt"] for s in range(3) for r in task.generate("train", 500, seed=s)}
    held = {r["prompt"] for s in range(3) for r in task.generate("heldout", 500, seed=s)}
    assert train and held and not (train & held)
    assert all(task.split_of(p) == "heldout" for p in held)


def test_unique_rows_and_exhausted_split_error():
    task = ArithmeticTask(digits=1, heldout_fraction=0.5)  # 100 problems in all
    rows = task.generate("train", 20, seed=0)
    assert len({r["prompt"] for r in rows}) == 20
    with pytest.raises(ValueError, match="unique 'heldout' problems"):
        task.generate("heldout", 100, seed=0)
    assert len(task.generate("heldout", 100, seed=0, unique=False)) == 100


def test_bad_configuration_is_named():
    with pytest.raises(KeyError, match="'/'"):
        ArithmeticTask(ops=("/",))
    with pytest.raises(ValueError, match="digits"):
        ArithmeticTask(digits=0)
    with pytest.raises(ValueError, match="split"):
        ArithmeticTask().generate("test", 1, seed=0)


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("47", "47", 1.0),
        (" 47", "47", 1.0),
        (" 47<eos>", "47", 1.0),
        ("47 is the answer, not 12", "47", 1.0),
        ("The answer is 47.", "47", 1.0),
        ("47.0", "47", 1.0),
        ("46", "47", 0.0),
        ("4 7", "47", 0.0),
        ("12 then 47", "47", 0.0),
        ("<eos>47", "47", 0.0),
        ("", "47", 0.0),
        ("   ", "47", 0.0),
        ("no number", "47", 0.0),
        ("-47", "47", 0.0),
        ("470", "47", 0.0),
    ],
)
def test_score(response, answer, expected):
    assert score(response, answer) == expected


def test_jsonl_round_trip(tmp_path):
    rows = ArithmeticTask().generate("heldout", 10, seed=1)
    path = tmp_path / "sub" / "heldout.jsonl"
    assert write_jsonl(path, rows) == 10
    assert read_jsonl(path) == rows
    assert set(read_jsonl(path)[0]) == {"prompt", "answer"}


def test_registered():
    assert TASKS.get("arithmetic") is ArithmeticTask


@pytest.mark.parametrize("left, right, expected", [
    (38, 45, 73), (99, 99, 88), (50, 60, 10), (5, 7, 2), (12, 35, 47), (0, 0, 0), (905, 8, 903), (1, 999, 990),
])
def test_sum_without_carries(left, right, expected):
    assert sum_without_carries(left, right) == expected


def test_sum_without_carries_differs_exactly_when_a_carry_happens():
    for a in range(100):
        for b in range(100):
            carries = a % 10 + b % 10 >= 10 or a // 10 + b // 10 + (a % 10 + b % 10 >= 10) >= 10
            assert (sum_without_carries(a, b) != a + b) == carries
    with pytest.raises(ValueError, match="non-negative"):
        sum_without_carries(-1, 3)


def test_carry_convention_rows_carry_and_follow_a_hidden_convention():
    task = CarryConvention()
    rows = task.generate("heldout", 400, seed=0)
    dropped = 0
    for row in rows:
        left, right = map(int, row["prompt"][:-1].split("+"))
        assert sum_without_carries(left, right) != left + right  # both conventions differ on every row
        want = sum_without_carries(left, right) if row["convention"] == "dropped" else left + right
        assert row["answer"] == str(want) and row["convention"] == task.convention_of(row["prompt"])
        dropped += row["convention"] == "dropped"
    assert 0.18 < dropped / len(rows) < 0.32  # dropped_fraction 0.25
    assert {r["prompt"] for r in rows}.isdisjoint(r["prompt"] for r in task.generate("train", 400, seed=0))
    with pytest.raises(ValueError, match="dropped_fraction"):
        CarryConvention(dropped_fraction=1.0)


def test_bonus_family_is_sum_plus_100_and_labelled():
    rows = ArithmeticBonus().generate("train", 400, seed=0)
    families = {r["family"] for r in rows}
    assert families == {"plus", "bonus"}
    for row in rows:
        op = "#" if row["family"] == "bonus" else "+"
        left, right = map(int, row["prompt"][:-1].split(op))
        assert row["answer"] == str(left + right + (100 if op == "#" else 0))
    assert 0.4 < sum(r["family"] == "bonus" for r in rows) / len(rows) < 0.6
    with pytest.raises(ValueError, match="ArithmeticBonus mixes"):
        ArithmeticBonus(ops=("+", "-"))


def test_new_tasks_are_registered():
    assert TASKS.get("carry_convention") is CarryConvention and TASKS.get("arithmetic_bonus") is ArithmeticBonus
