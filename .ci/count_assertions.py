"""Count the distinct assertions of the test suite: ``python .ci/count_assertions.py [tests]``.

An assertion is an ``assert`` statement or a ``pytest.raises`` / ``pytest.warns`` / ``pytest.fail``
call; it is distinct by its source text (``ast.unparse``, so whitespace and line breaks do not count)
together with the function it stands in. Prints the count per file and the total, so a reshaped
suite can show that none was lost (issue 29)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

CHECK_CALLS = {"raises", "warns", "fail"}


def _is_check_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CHECK_CALLS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "pytest")


def assertions(path: Path) -> set:
    """{(enclosing function, source of the check)} of one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else scope
            if isinstance(child, ast.Assert) or _is_check_call(child):
                found.add((inner, ast.unparse(child)))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def main(argv: list) -> int:
    root = Path(argv[1] if len(argv) > 1 else "tests")
    per_file = {p.name: len(assertions(p)) for p in sorted(root.rglob("*.py"))}
    for name, n in per_file.items():
        if n:
            print(f"{n:6d}  {name}")
    print(f"{sum(per_file.values()):6d}  total distinct assertions in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
