"""The ``calc`` tool: arithmetic on numbers, evaluated from the syntax tree (nothing is ``eval``ed).

Allowed: int and float literals, ``+ - * / // % **``, unary ``+ -``, parentheses. Anything else
(names, calls, attributes, strings, comparisons) is refused. Sizes are bounded so no expression
runs long: at most ``MAX_CHARS`` characters, integers of at most ``MAX_DIGITS`` digits (a power is
refused before it is computed when its result would be longer), finite floats only.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Callable, Dict, Union

from rlplat.envs.registry import TOOLS
from rlplat.envs.tools import Tool

Number = Union[int, float]
MAX_CHARS = 200
MAX_DIGITS = 1000


def _power(base: Number, exponent: Number) -> Number:
    # Estimated before computing: 9**9**9 would otherwise run for minutes.
    if abs(base) > 1 and abs(exponent) * math.log10(abs(base)) > MAX_DIGITS:
        raise ValueError(f"result has more than {MAX_DIGITS} digits")
    return operator.pow(base, exponent)


BINARY: Dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _power,
}
UNARY: Dict[type, Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _checked(value: Number) -> Number:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise ValueError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the result is not a finite number")
    if isinstance(value, int) and abs(value) >= 10**MAX_DIGITS:
        raise ValueError(f"result has more than {MAX_DIGITS} digits")
    return value


def _value(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        return _checked(BINARY[type(node.op)](_value(node.left), _value(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_value(node.operand))
    raise ValueError("only numbers, + - * / // % ** and parentheses are allowed")


def evaluate(expression: str) -> Number:
    """The value of an arithmetic ``expression``; raises ValueError / SyntaxError / ZeroDivisionError."""
    if len(expression) > MAX_CHARS:
        raise ValueError(f"expression longer than {MAX_CHARS} characters")
    return _value(ast.parse(expression.strip(), mode="eval").body)


@TOOLS.register("calc")
class Calc(Tool):
    """``calc(expression="38*45")`` -> ``"1710"``; a float result in its shortest exact form (``"3.5"``)."""

    name = "calc"
    description = "Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses."
    parameters = {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "the expression, e.g. 38*45"}},
        "required": ["expression"],
    }

    def run(self, expression: str) -> str:
        return repr(evaluate(expression))


__all__ = ["Calc", "evaluate"]
