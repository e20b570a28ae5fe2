"""The package's layers import only downward, and no module imports itself back through others.

Order (lowest first): leaves (config, errors, paths) → physics → datasets → models → training → retrieval →
measured → analysis / published / robustness → book → cli. Every ``import`` and ``from ... import`` of an ``eacnn`` module is
read from the source (AST), module-level and function-local alike: a function-local import may only defer a heavy
dependency, never reach upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eacnn"
LAYERS = ["leaves", "physics", "datasets", "models", "training", "retrieval", "measured", "analysis", "book", "cli"]
TOP_LEVEL = {"config": "leaves", "errors": "leaves", "paths": "leaves", "integrity": "leaves", "__init__": "leaves",
             "analysis": "analysis", "published": "analysis", "robustness": "analysis", "cli": "cli",
             "__main__": "cli"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer of a dotted ``eacnn.…`` module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "leaves"
    head = parts[1]
    if head in TOP_LEVEL:
        return TOP_LEVEL[head]
    if head in LAYERS:
        return head
    raise AssertionError(f"{module} is in no layer: add it to LAYERS or TOP_LEVEL in {__file__}")


def imports_of(path: Path, package: Path = PACKAGE) -> list[tuple[str, int, bool]]:
    """(imported eacnn module, line, module level?) for every import in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, package)
    here = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    top_level = {id(node) for node in tree.body}
    known = {module_name(p, package) for p in package.rglob("*.py")}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from eacnn.models import clip`` imports a module; ``from eacnn.models import EACNN`` a name
            names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for name in names:
            if name == "eacnn" or name.startswith("eacnn."):
                out.append((name, node.lineno, id(node) in top_level))
    return out


def violations(package: Path = PACKAGE) -> tuple[list[str], list[list[str]]]:
    """(upward imports as "file:line: a (layer) imports b (layer)", module-level import cycles)."""
    upward, graph = [], {}
    for path in sorted(package.rglob("*.py")):
        me = module_name(path, package)
        graph.setdefault(me, set())
        for target, line, module_level in imports_of(path, package):
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(me)):
                upward.append(f"{path.relative_to(package.parent)}:{line}: {me} ({layer_of(me)}) imports "
                              f"{target} ({layer_of(target)})")
            if module_level and target != me and not me.startswith(target + "."):
                graph[me].add(target)
    return upward, _cycles(graph)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_layers_import_only_downward():
    upward, _ = violations()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    _, cycles = violations()
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


@pytest.mark.parametrize("planted, expect", [
    ("from eacnn.retrieval.identify import identify\n", "imports eacnn.retrieval.identify (retrieval)"),
    ("def f():\n    from eacnn.book import plots\n", "imports eacnn.book.plots (book)"),
    ("from ..training import loop\n", "imports eacnn.training.loop (training)"),
])
def test_the_check_catches_a_planted_upward_import(tmp_path, planted, expect):
    """A copy of the package with one upward import planted in the physics layer fails the check."""
    import shutil

    copy = tmp_path / "eacnn"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    target = copy / "physics" / "xrd.py"
    target.write_text(target.read_text() + "\n" + planted)
    upward, _ = violations(copy)
    assert any(expect in line and "physics/xrd.py" in line for line in upward), upward


def test_the_check_catches_a_planted_cycle(tmp_path):
    import shutil

    copy = tmp_path / "eacnn"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (copy / "physics" / "a.py").write_text("from eacnn.physics import b\n")
    (copy / "physics" / "b.py").write_text("from eacnn.physics import a\n")
    _, cycles = violations(copy)
    assert ["eacnn.physics.a", "eacnn.physics.b"] in cycles
