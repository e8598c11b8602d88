"""Built-in verifiable task: integer arithmetic with one exact numeric answer.

A problem is the prompt ``"12+35="`` with the answer ``"47"``. Operands are drawn uniformly
from ``[0, 10**digits - 1]``; the operator from ``ops``. Subtraction orders its operands so the
answer is never negative (the tiny tokenizer and models stay with unsigned numbers).

Train / held-out split: a problem belongs to ``"heldout"`` when a stable hash (sha256) of its
prompt falls below ``heldout_fraction``, else to ``"train"``. The split is a property of the
problem itself, so the two splits are disjoint for every seed and every ``n``.

Pure python: no torch, no transformers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import operator
import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from rlplat.registry import Registry

SPLITS = ("train", "heldout")
EOS_TEXT = "<eos>"

# An operator maps two non-negative operands to (left, right, result); it may reorder them.
OPERATORS: Registry[Callable[[int, int], Tuple[int, int, int]]] = Registry("arithmetic operator")


@OPERATORS.register("+")
def _add(a: int, b: int) -> Tuple[int, int, int]:
    return a, b, a + b


@OPERATORS.register("-")
def _sub(a: int, b: int) -> Tuple[int, int, int]:
    hi, lo = max(a, b), min(a, b)
    return hi, lo, hi - lo


@OPERATORS.register("*")
def _mul(a: int, b: int) -> Tuple[int, int, int]:
    return a, b, operator.mul(a, b)


@OPERATORS.register("#")
def _bonus(a: int, b: int) -> Tuple[int, int, int]:
    """``a#b = a + b + 100``: the skill only the ``tiny-teacher-bonus`` warm start shows
    (``ArithmeticBonus``). Its answers have a hundreds digit the student's additions of two
    2-digit numbers hardly ever write in that place, so the student never hits one by chance."""
    return a, b, a + b + 100


def sum_without_carries(left: int, right: int) -> int:
    """``left + right`` with every carry dropped: each digit is the digit-wise sum mod 10
    (``38 + 45 -> 73``, ``99 + 99 -> 88``). The classic systematic addition error, used to build
    a demonstrator whose mistakes RL can find and fix (``rlplat.models.tiny``)."""
    if left < 0 or right < 0:
        raise ValueError(f"sum_without_carries takes non-negative operands, got {left} and {right}")
    total, place = 0, 1
    while left or right:
        total += (left % 10 + right % 10) % 10 * place
        left, right, place = left // 10, right // 10, place * 10
    return total


Row = Dict[str, str]

# Rejection sampling gives up after this many draws per requested row (plus a floor), so an
# impossible request (more unique problems than the split holds) fails instead of hanging.
_DRAWS_PER_ROW = 200
_MIN_DRAWS = 100_000


@dataclass(frozen=True)
class ArithmeticTask:
    """Problem family: ``digits`` = most digits per operand, ``ops`` = operator symbols
    (registered in ``OPERATORS``), ``heldout_fraction`` = share of all problems held out."""

    digits: int = 2
    ops: Tuple[str, ...] = ("+",)
    heldout_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or self.digits < 1:
            raise ValueError(f"ArithmeticTask.digits must be an int >= 1, got {self.digits!r}")
        # A string "+-" or a list (from YAML) becomes a tuple, keeping the dataclass hashable.
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise ValueError("ArithmeticTask.ops is empty")
        for op in self.ops:
            OPERATORS.get(op)  # raises KeyError naming the unknown operator
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"ArithmeticTask.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")

    def split_of(self, prompt: str) -> str:
        """``"heldout"`` or ``"train"``, decided by the prompt text alone."""
        h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
        return "heldout" if h / 2.0**64 < self.heldout_fraction else "train"

    def sample(self, rng: random.Random) -> Row:
        """One problem (either split) drawn with ``rng``."""
        hi = 10**self.digits - 1
        op = self.ops[rng.randrange(len(self.ops))]
        left, right, result = OPERATORS.get(op)(rng.randint(0, hi), rng.randint(0, hi))
        return {"prompt": f"{left}{op}{right}=", "answer": str(result)}

    def generate(self, split: str, n: int, seed: int, unique: bool = True) -> List[Row]:
        """``n`` rows ``{"prompt", "answer"}`` from ``split``, the same for the same arguments.

        ``unique=True`` never repeats a prompt and raises ``ValueError`` when the split has
        fewer than ``n`` problems; ``unique=False`` samples with replacement (training streams).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"arithmetic/{split}/{seed}")
        rows: List[Row] = []
        seen = set()
        budget = max(_MIN_DRAWS, _DRAWS_PER_ROW * n)
        for _ in range(budget):
            if len(rows) == n:
                return rows
            row = self.sample(rng)
            if self.split_of(row["prompt"]) != split or (unique and row["prompt"] in seen):
                continue
            seen.add(row["prompt"])
            rows.append(row)
        if len(rows) == n:
            return rows
        raise ValueError(
            f"could only find {len(rows)} unique '{split}' problems of {n} requested for {self}; "
            "lower n, raise digits, add ops, or pass unique=False"
        )


@dataclass(frozen=True)
class ArithmeticPairs(ArithmeticTask):
    """Preference pairs on additions: ``chosen`` is the sum, ``rejected`` a wrong carry. A problem
    that carries is rejected with the carry-dropping sum (``sum_without_carries``), the very error
    the built-in policy makes in about half of such problems (``rlplat.models.tiny``); one that does
    not carry is rejected with a spurious carry into the tens (sum + 10), so that "always carry"
    satisfies no more pairs than "never carry" does. Rows are ``{"prompt", "answer", "chosen",
    "rejected"}``; responses carry the leading space the models emit (``" 83"``). Addition only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ops != ("+",):
            raise ValueError(f"ArithmeticPairs builds wrong carries of additions only, got ops {self.ops}")

    def sample(self, rng: random.Random) -> Row:
        """One problem (either split) with its pair, drawn with ``rng``."""
        row = super().sample(rng)
        left, right = map(int, row["prompt"][:-1].split("+"))
        wrong = sum_without_carries(left, right)
        if wrong == left + right:
            wrong = left + right + 10
        return {**row, "chosen": f" {left + right}", "rejected": f" {wrong}"}


def _hash_share(salt: str, prompt: str) -> float:
    """A stable pseudo-random number in [0, 1) of ``prompt`` (sha256 of ``salt/prompt``)."""
    h = int.from_bytes(hashlib.sha256(f"{salt}/{prompt}".encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64


@dataclass(frozen=True)
class CarryConvention(ArithmeticTask):
    """Diversity collapse (DPH-RL's setting): additions that carry, where a hidden rule decides the
    gold answer. For a ``dropped_fraction`` share of the problems (a hash of the prompt, which no
    model can learn) the gold answer is the sum without carries; for the rest it is the sum.

    The built-in policy writes both: the sum, or, in about half of the problems that carry, the sum
    without carries (its careless demonstrator, ``rlplat.models.tiny``). So every problem is solved
    by one of its two modes and its pass@k is high; but since no rule tells the problems apart, the
    best pass@1 comes from always carrying (pass@1 -> 1 - dropped_fraction), which loses the
    dropped-carry problems at every k. Rows carry a ``convention`` column, ``"carry"`` or
    ``"dropped"``, for per-group evaluation (``trainer.eval_group_by``). Addition only."""

    dropped_fraction: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ops != ("+",):
            raise ValueError(f"CarryConvention holds additions only, got ops {self.ops}")
        if not 0.0 < self.dropped_fraction < 1.0:
            raise ValueError(f"CarryConvention.dropped_fraction must be in (0, 1), got {self.dropped_fraction}")

    def convention_of(self, prompt: str) -> str:
        """``"dropped"`` or ``"carry"``, decided by the prompt text alone."""
        return "dropped" if _hash_share("convention", prompt) < self.dropped_fraction else "carry"

    def sample(self, rng: random.Random) -> Row:
        """One problem that carries (either split), with its convention's answer."""
        while True:
            row = super().sample(rng)
            left, right = map(int, row["prompt"][:-1].split("+"))
            dropped = sum_without_carries(left, right)
            if dropped != left + right:
                convention = self.convention_of(row["prompt"])
                answer = dropped if convention == "dropped" else left + right
                return {"prompt": row["prompt"], "answer": str(answer), "convention": convention}


# Family names of ArithmeticBonus rows, by operator.
FAMILIES = {"+": "plus", "#": "bonus"}


@dataclass(frozen=True)
class ArithmeticBonus(ArithmeticTask):
    """Exploration the student cannot do alone (KDRL's setting): additions ``a+b=`` mixed with
    ``a#b=`` problems (``a + b + 100``, operator ``#``), each operator drawn with probability 1/2.
    The teacher ``builtin:tiny-teacher-bonus`` was shown ``#``; the student ``builtin:tiny-policy``
    never was, answers ``#`` problems with sums and solves none of them, so its rewards there are
    all 0 and only a teacher term can teach it. Rows carry a ``family`` column, ``"plus"`` or
    ``"bonus"``, for per-family evaluation (``trainer.eval_group_by``)."""

    ops: Tuple[str, ...] = ("+", "#")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [op for op in self.ops if op not in FAMILIES]
        if unknown:
            raise ValueError(f"ArithmeticBonus mixes the operators {sorted(FAMILIES)}, got {unknown}")

    def sample(self, rng: random.Random) -> Row:
        row = super().sample(rng)
        op = next(op for op in self.ops if op in row["prompt"])
        return {**row, "family": FAMILIES[op]}


# First number in the text: optional sign, digits, optional decimal part.
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _first_number(response_text: str) -> Optional[Decimal]:
    """The first number in ``response_text`` (text from the first ``<eos>`` on ignored), or None."""
    text = response_text.split(EOS_TEXT, 1)[0].strip()
    match = _NUMBER.search(text)
    return None if match is None else Decimal(match.group())


def _gold(answer: str) -> Decimal:
    try:
        return Decimal(answer.strip())
    except InvalidOperation:
        raise ValueError(f"answer {answer!r} is not a number") from None


def score(response_text: str, answer: str) -> float:
    """1.0 when the first number in ``response_text`` equals ``answer``, else 0.0.

    Text from the first ``<eos>`` on is ignored (decoders that keep special tokens), then the
    rest is stripped. Numbers compare by value, so ``"47.0"`` and ``"047"`` match ``"47"``;
    a response with no number (empty included) scores 0.0.
    """
    pred = _first_number(response_text)
    if pred is None:
        return 0.0
    return 1.0 if pred == _gold(answer) else 0.0


# A wrong answer earns at most this much, so every wrong answer stays below the exact one (1.0).
GRADED_WRONG_MAX = 0.9


def _digits(value: Decimal) -> Optional[str]:
    """The decimal digits of a non-negative integer value, else None."""
    if value < 0 or value != value.to_integral_value():
        return None
    return str(int(value))


def graded_score(response_text: str, answer: str) -> float:
    """A continuous reward in [0, 1] with spread among wrong answers (for reward calibration,
    which is degenerate with 0/1 rewards). Deterministic; the number read is ``score``'s.

    - exact value: 1.0; no number: 0.0;
    - otherwise ``0.9 * (0.5 * digits + 0.5 * closeness)``, in [0, 0.9], where
      ``digits`` = share of digit positions, aligned from the units, where the two non-negative
      integers agree, over the longer one's length (0 when either is not a non-negative integer), and
      ``closeness`` = ``max(0, 1 - |pred - gold| / max(|gold|, 1))``.

    ``38+45=``: `` 83`` 1.0, `` 73`` (carry dropped) 0.9 (0.25 + 0.5 * 73/83) = 0.6208, `` 84`` 0.6696,
    `` 0`` and `` 200`` 0.0.
    """
    gold = _gold(answer)
    pred = _first_number(response_text)
    if pred is None:
        return 0.0
    if pred == gold:
        return 1.0
    p, g = _digits(pred), _digits(gold)
    digits = 0.0
    if p is not None and g is not None:
        digits = sum(a == b for a, b in zip(reversed(p), reversed(g))) / max(len(p), len(g))
    closeness = max(0.0, 1.0 - float(abs(pred - gold)) / max(float(abs(gold)), 1.0))
    return GRADED_WRONG_MAX * (0.5 * digits + 0.5 * closeness)


def write_jsonl(path: Union[str, Path], rows: Iterable[Row]) -> int:
    """Write one JSON object per line (parent dirs created); returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Union[str, Path]) -> List[Row]:
    """Rows of a jsonl file (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write arithmetic prompts/answers as jsonl.")
    parser.add_argument("--out", required=True, help="output .jsonl path")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--ops", default="+", help="operator symbols, e.g. '+-*'")
    parser.add_argument("--heldout-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    task = ArithmeticTask(digits=args.digits, ops=tuple(args.ops), heldout_fraction=args.heldout_fraction)
    count = write_jsonl(args.out, task.generate(args.split, args.n, args.seed))
    print(f"wrote {count} {args.split} rows to {args.out}")


if __name__ == "__main__":
    main()
