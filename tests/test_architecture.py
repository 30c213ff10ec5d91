"""The module graph of ``src/ntkal``: no import cycle, and no import against the layer order
written in ``docs/architecture.md`` (section "Layers").

Imports are read with :mod:`ast` at every level (module top, functions, ``TYPE_CHECKING`` blocks,
relative ``from . import``), since a lazy import is still a dependency: it only runs later.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ntkal"
DOC = ROOT / "docs" / "architecture.md"

#: Cycles another change removes; each must still exist (so the entry is deleted once it is gone).
PENDING_CYCLES: set[frozenset[str]] = set()


# ----------------------------------------------------------------------------- the checker
def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package`` (``__init__`` is the
    package itself)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, is_package: bool, tree: ast.AST, modules: set[str]) -> set[str]:
    """Modules of the ``ntkal`` package that ``tree`` imports. ``from pkg import name`` is an
    import of ``pkg.name`` when that is a module, else of ``pkg``."""
    here = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
    return {m for m in found if m == "ntkal" or m.startswith("ntkal.")} - {module}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the ntkal modules it imports (names of modules that do not exist are kept, so
    that a stale import is visible too)."""
    files = module_files(package)
    names = set(files)
    return {
        m: _imported(
            m, p.name == "__init__.py", ast.parse(p.read_text(encoding="utf-8"), str(p)), names
        )
        for m, p in files.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, each as one cycle through it
    (a readable path ``a -> b -> ... -> a``), smallest first. Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    components.append(comp)
    return sorted((_cycle_through(comp, graph) for comp in components), key=len)


def _cycle_through(comp: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from the component's first module back to itself (breadth-first)."""
    start = min(comp)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & comp):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError("not a cycle")  # pragma: no cover


def read_layers(doc: Path) -> dict[str, int]:
    """Top-level name (``data``, ``kernels``, ..., ``ntkal`` for the package root) -> layer, from
    the ```` ```layers ```` block of ``doc``."""
    match = re.search(r"```layers\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert match, f"{doc} has no ```layers block"
    layers = {}
    for line in match.group(1).splitlines():
        if line.strip():
            level, *names = line.split()
            for name in names:
                layers[name] = int(level)
    return layers


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ntkal"


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """``"a imports b (layer i -> j)"`` for every import into a higher layer or an unknown one."""
    out = []
    for module in sorted(graph):
        mine = layers.get(top_level(module))
        if mine is None:
            out.append(f"{module} has no layer in docs/architecture.md")
            continue
        for target in sorted(graph[module]):
            theirs = layers.get(top_level(target))
            if theirs is None:
                out.append(f"{module} imports {target}, which has no layer")
            elif theirs > mine:
                out.append(f"{module} imports {target} (layer {mine} -> {theirs}, upward)")
    return out


def _cycle_text(cycle: list[str]) -> str:
    return " -> ".join(cycle)


# ----------------------------------------------------------------------------- the checks
def test_no_import_cycle():
    cycles = find_cycles(import_graph(PACKAGE))
    new = [c for c in cycles if frozenset(c) not in PENDING_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(map(_cycle_text, new))


def test_pending_cycles_are_still_there():
    """An entry of PENDING_CYCLES that no longer exists must be deleted, so the list only ever
    shrinks to empty."""
    present = {frozenset(c) for c in find_cycles(import_graph(PACKAGE))}
    gone = [sorted(c) for c in PENDING_CYCLES if c not in present]
    assert not gone, f"these cycles are gone: delete them from PENDING_CYCLES: {gone}"


def test_imports_follow_the_layer_order():
    problems = layer_violations(import_graph(PACKAGE), read_layers(DOC))
    assert not problems, "imports against docs/architecture.md's layer order:\n" + "\n".join(
        problems
    )


def test_every_top_level_module_has_a_layer():
    layers = read_layers(DOC)
    missing = sorted({top_level(m) for m in module_files(PACKAGE)} - set(layers))
    assert not missing, f"give these a layer in docs/architecture.md: {missing}"
    unused = sorted(set(layers) - {top_level(m) for m in module_files(PACKAGE)})
    assert not unused, f"docs/architecture.md lists layers for missing modules: {unused}"


# ----------------------------------------------------------------------------- the checker checked
def test_checker_reads_every_kind_of_import(tmp_path):
    pkg = tmp_path / "ntkal"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("X = 1\n")
    (pkg / "other.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text(
        "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ntkal.other\n"
        "def f():\n    from ..low import X\n    from .b import y\n    return X\n"
    )
    (pkg / "sub" / "b.py").write_text(
        "y = 1\nclass C:\n    def m(self):\n        from ntkal.sub import a\n"
    )
    graph = import_graph(pkg)
    assert graph["ntkal.sub"] == {"ntkal.sub.a"}
    assert graph["ntkal.sub.a"] == {"ntkal.other", "ntkal.low", "ntkal.sub.b"}
    assert graph["ntkal.sub.b"] == {"ntkal.sub.a"}
    assert find_cycles(graph) == [["ntkal.sub.a", "ntkal.sub.b", "ntkal.sub.a"]]


def test_checker_names_a_cycle_and_an_upward_import():
    graph = {
        "ntkal.data.a": {"ntkal.kernels.k"},
        "ntkal.kernels.k": {"ntkal.experiments.r"},
        "ntkal.experiments.r": {"ntkal.data.a"},
        "ntkal.models.m": set(),
    }
    layers = {"data": 1, "models": 1, "kernels": 3, "experiments": 8}
    assert find_cycles(graph) == [
        ["ntkal.data.a", "ntkal.kernels.k", "ntkal.experiments.r", "ntkal.data.a"]
    ]
    assert layer_violations(graph, layers) == [
        "ntkal.data.a imports ntkal.kernels.k (layer 1 -> 3, upward)",
        "ntkal.kernels.k imports ntkal.experiments.r (layer 3 -> 8, upward)",
    ]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    "where, line",
    [
        ("data/pool.py", "def _planted():\n    from ntkal.cli import app\n"),
        ("kernels/blocking.py", "from ntkal.experiments import runner\n"),
    ],
)
def test_planted_upward_import_in_a_copy_fails(tmp_path, where, line):
    copy = tmp_path / "ntkal"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    layers = read_layers(DOC)
    assert layer_violations(import_graph(copy), layers) == []
    with open(copy / where, "a", encoding="utf-8") as fh:
        fh.write("\n" + line)
    problems = layer_violations(import_graph(copy), layers)
    assert len(problems) == 1 and "upward" in problems[0], problems
    assert problems[0].startswith("ntkal." + where[:-3].replace("/", "."))
