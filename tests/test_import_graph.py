"""The repo's import graph, read from the source (``ast``, nothing imported): no module imports in a
circle, and dependencies point one way, ``launch -> actors -> rlplat``. Imports inside functions
count: a lazy import still ties the two modules together. ``from pkg import sub`` is an edge to the
submodule ``pkg.sub``; initialising a parent package on the way is not counted (a package's
``__init__`` importing its submodules would otherwise always be a circle)."""
import ast
import os
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("rlplat", "actors", "launch")  # each may import the ones before it, never the ones after


def repo_modules() -> Dict[str, str]:
    """Dotted module name -> file, for every module of the three packages."""
    mods = {}
    for package in LAYERS:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    mods[dotted.removesuffix(".__init__")] = path
    return mods


def imports_of(name: str, path: str, mods: Dict[str, str]) -> Set[str]:
    """The repo modules that module ``name`` (file ``path``) imports, anywhere in its body."""
    targets = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in mods else base)
    found = set()
    for target in targets:
        while target and target not in mods:  # an attribute or a third-party module: its repo owner, if any
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> Dict[str, Set[str]]:
    mods = repo_modules()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def test_the_walk_sees_the_packages_and_their_imports():
    graph = import_graph()
    assert {"rlplat.batch", "actors.rollout.common", "launch.controller", "launch.loops.base"} <= set(graph)
    assert "launch.loops.base" in graph["launch.loops.rl"] and "rlplat.batch" in graph["actors.rollout.common"]
    assert "launch.loops.ctrl" in graph["launch.loops"]  # from launch.loops import ctrl: the submodule
    # the circle finder finds one when there is one
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_in_a_circle():
    assert circles(import_graph()) == []


def test_dependencies_point_launch_to_actors_to_rlplat():
    upward = [(m, d) for m, deps in import_graph().items() for d in deps
              if LAYERS.index(m.split(".")[0]) < LAYERS.index(d.split(".")[0])]
    assert upward == []


def test_loops_import_nothing_from_actors():
    """A loop talks to the ``StepContext`` only; the actors (the Nash-MP judge included) belong to it."""
    loops = {m: deps for m, deps in import_graph().items() if m.startswith("launch.loops")}
    assert len(loops) >= 7 and [(m, d) for m, deps in loops.items() for d in deps if d.startswith("actors")] == []
