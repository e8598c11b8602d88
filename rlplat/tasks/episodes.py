"""Rows for the built-in multi-turn environments (``rlplat.envs``).

``multiplication`` (for ``builtin:calc_arithmetic``): two-digit products ``"38*45="`` -> ``"1710"``,
which the built-in tiny policy cannot work out in its head but can with the ``calc`` tool.
``guess_number`` (for ``builtin:guess_number``): ``"guess 0-99:"`` with the secret as the answer; the
environment answers each guess "higher" or "lower". Both split train / held-out by hashing the row,
as ``ArithmeticTask`` does, so the held-out rows never appear in training.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import List, Tuple

from rlplat.tasks.arithmetic import SPLITS, ArithmeticTask, Row


@dataclass(frozen=True)
class Multiplication(ArithmeticTask):
    """``ArithmeticTask`` with ``*`` only: the tool task's rows."""

    ops: Tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class GuessNumber:
    """Secrets ``0..high`` (the answer), ``heldout_fraction`` of them held out. The prompt names the range."""

    high: int = 99
    heldout_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.high, int) or self.high < 1:
            raise ValueError(f"GuessNumber.high must be an int >= 1, got {self.high!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"GuessNumber.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")

    @property
    def prompt(self) -> str:
        return f"guess 0-{self.high}:"

    def split_of(self, secret: int) -> str:
        h = int.from_bytes(hashlib.sha256(f"guess/{secret}".encode()).digest()[:8], "big")
        return "heldout" if h / 2.0**64 < self.heldout_fraction else "train"

    def generate(self, split: str, n: int, seed: int, unique: bool = False) -> List[Row]:
        """``n`` rows of ``split``, drawn with replacement (there are only ``high + 1`` secrets), the
        same for the same arguments; ``unique=True`` refuses ``n`` above the split's secrets."""
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
        secrets = [s for s in range(self.high + 1) if self.split_of(s) == split]
        if unique and n > len(secrets):
            raise ValueError(f"GuessNumber: {n} unique '{split}' secrets requested, the split has {len(secrets)}")
        rng = random.Random(f"guess/{split}/{seed}")
        chosen = rng.sample(secrets, n) if unique else [rng.choice(secrets) for _ in range(n)]
        return [{"prompt": self.prompt, "answer": str(s)} for s in chosen]
