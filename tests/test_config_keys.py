"""Guard against accepted-and-ignored config keys: every leaf key of the schema is read by the
runtime (``rlplat/``, ``actors/``, ``launch/``; validation code does not count as a reader) or refused
by validation (``validate.REFUSED``).

How a read is found, statically (no run needed): every attribute chain in the runtime's source is
resolved through simple local and ``self.`` aliases (``r = cfg.rollout``; ``t, a = cfg.trainer,
cfg.algorithm``; ``self.rollout = rollout``; ``for term in alg.divergences``; ``getattr(cfg.roles,
role)`` is ``roles.*``; a parameter annotated with a schema class, ``cfg: DivergenceTermConfig``, is
that class's key path) into a dotted path. Key ``a.b.c`` is read when some path ends in ``b.c`` (its parent field and itself;
``_cfg``/``_config`` suffixes of names are dropped, so ``data_cfg.prompt_key`` reads
``data.prompt_key``); a field name that exists once in the whole schema is read by any ``.name``.
"""
import ast
import dataclasses
import fnmatch
import os
import typing

import pytest

from rlplat.config import schema
from rlplat.config.validate import REFUSED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME = ("rlplat", "actors", "launch")
# Validation reads keys to check them, which is not acting on them: its code does not count.
NOT_READERS = os.path.join("rlplat", "config") + os.sep


def _is_check(fn) -> bool:
    return fn.name in ("check", "validate") or fn.name.startswith(("check_", "_check", "validate_"))


def schema_keys(cls=schema.RunConfig, prefix=""):
    """Dotted leaf keys; list-of-dataclass fields contribute ``field[].sub``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from schema_keys(tp, key + ".")
        elif typing.get_origin(tp) in (list, typing.List) and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from schema_keys(typing.get_args(tp)[0], key + "[].")
        else:
            yield key


def class_paths(cls=schema.RunConfig, prefix=()):
    """Schema class name -> its key path, e.g. ``DivergenceTermConfig`` -> (algorithm, divergences)."""
    out = {cls.__name__: list(prefix)}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (list, typing.List):
            tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(tp):
            sub = class_paths(tp, prefix + (f.name,))
            for name, path in sub.items():  # a class used at several paths (RoleModelConfig): a wildcard
                out[name] = path if name not in out or out[name] == path else out[name][:-1] + ["*"]
    return out


CLASS_PATHS = class_paths()


def _norm(name: str) -> str:
    for suffix in ("_cfg", "_config"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


class _Reads(ast.NodeVisitor):
    """Collects resolved dotted paths of attribute reads, one alias scope per function."""

    def __init__(self, self_aliases):
        self.paths = set()
        self.aliases = {}
        self.self_aliases = self_aliases

    def chain(self, node):
        if isinstance(node, ast.Attribute):
            base = self.chain(node.value)
            return None if base is None else base + [node.attr]
        if isinstance(node, ast.Name):
            return list(self.aliases.get(node.id, [node.id]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2:
            base = self.chain(node.args[0])
            attr = node.args[1]
            if base is None:
                return None
            return base + [attr.value if isinstance(attr, ast.Constant) and isinstance(attr.value, str) else "*"]
        return None

    def resolve(self, parts):
        if parts and parts[0] == "self" and len(parts) > 1 and parts[1] in self.self_aliases:
            parts = self.self_aliases[parts[1]] + parts[2:]
        return parts

    def visit_Assign(self, node):
        self.generic_visit(node)
        targets, values = node.targets[0], node.value
        pairs = []
        if isinstance(targets, ast.Tuple) and isinstance(values, ast.Tuple) and len(targets.elts) == len(values.elts):
            pairs = list(zip(targets.elts, values.elts))
        else:
            pairs = [(targets, values)]
        for target, value in pairs:
            parts = self.chain(value)
            if parts is None:
                continue
            parts = self.resolve(parts)
            if isinstance(target, ast.Name):
                self.aliases[target.id] = parts
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                self.self_aliases.setdefault(target.attr, parts)

    def visit_FunctionDef(self, node):
        """A parameter annotated with a schema class (``rollout: RolloutConfig``) stands for its key path."""
        for arg in node.args.args + node.args.kwonlyargs:
            ann = arg.annotation
            name = ann.value if isinstance(ann, ast.Constant) else getattr(ann, "id", getattr(ann, "attr", None))
            if isinstance(name, str) and name in CLASS_PATHS:
                self.aliases[arg.arg] = list(CLASS_PATHS[name])
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_For(self, node):
        """``for x in cfg.algorithm.divergences`` (or ``enumerate(...)``): ``x`` stands for an element."""
        it, target = node.iter, node.target
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate" and it.args \
                and isinstance(target, ast.Tuple) and len(target.elts) == 2:
            it, target = it.args[0], target.elts[1]
        parts = self.chain(it)
        if parts is not None and isinstance(target, ast.Name):
            self.aliases[target.id] = self.resolve(parts)
        self.generic_visit(node)

    def visit_Attribute(self, node):
        parts = self.chain(node)
        if parts is not None:
            self.paths.add(tuple(_norm(p) for p in self.resolve(parts)))
        self.generic_visit(node)

    def visit_Call(self, node):
        parts = self.chain(node)  # getattr(x, "name")
        if parts is not None:
            self.paths.add(tuple(_norm(p) for p in self.resolve(parts)))
        self.generic_visit(node)


def runtime_reads():
    paths = set()
    for top in RUNTIME:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                if not name.endswith(".py") or rel.startswith(NOT_READERS):
                    continue
                tree = ast.parse(open(os.path.join(ROOT, rel)).read(), rel)
                for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)] + [tree]:
                    self_aliases = {}
                    funcs = [n for n in (cls.body if isinstance(cls, ast.ClassDef) else ast.walk(cls))
                             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                    # __init__ first: it sets the self.x aliases the other methods use.
                    for fn in sorted((f for f in funcs if not _is_check(f)), key=lambda f: f.name != "__init__"):
                        visitor = _Reads(self_aliases)
                        visitor.visit(fn)
                        paths |= visitor.paths
    return paths


def is_read(key, paths, unique_leaves):
    parts = [p.replace("[]", "") for p in key.split(".")]
    leaf, parent = parts[-1], parts[-2]
    for path in paths:
        if not path or path[-1] != leaf:
            continue
        if leaf in unique_leaves:
            return True
        if len(path) >= 2 and path[-2] in (parent, "*"):
            return True
    return False


def is_refused(key):
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in REFUSED)


def test_every_schema_key_is_read_or_refused():
    keys = list(schema_keys())
    leaves = [k.split(".")[-1] for k in keys]
    unique = {leaf for leaf in leaves if leaves.count(leaf) == 1}
    paths = runtime_reads()
    silent = [k for k in keys if not is_read(k, paths, unique) and not is_refused(k)]
    assert not silent, ("schema keys with neither a reader in rlplat/, actors/, launch/ nor an entry in "
                        f"rlplat.config.validate.REFUSED: {silent}")


def test_the_guard_sees_a_silent_key(tmp_path):
    """The detector itself: a key nobody reads is reported, a read one is not."""
    keys = ["rollout.top_k", "rollout.not_a_real_knob"]
    paths = runtime_reads()
    assert is_read("rollout.top_k", paths, set())
    assert not is_read("rollout.not_a_real_knob", paths, set())
    assert not is_read("trainer.temperature", paths, set())  # 'temperature' is read, but never under trainer
    assert keys


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refused_keys_exist_in_the_schema(key):
    assert any(fnmatch.fnmatchcase(k, key) for k in schema_keys()), f"REFUSED names '{key}', which is not a schema key"
