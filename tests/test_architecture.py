"""The architecture as rules the code must keep: the import graph of ``mysimbdp/`` has no cycle,
only the CLI imports the daemon, the top level stays small, and no two modules share a name.

The graph is read from the source (every ``import mysimbdp...`` and ``from mysimbdp... import``
of every module, those under ``if TYPE_CHECKING:`` and inside functions included), never by
importing it, so a cycle that Python would tolerate at run time still fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mysimbdp"
MAX_TOP_LEVEL = 16
NOT_NAMES = {"__init__.py", "py.typed", "templates", "__pycache__"}


def module_name(root: Path, path: Path) -> str:
    """``mysimbdp/a/b.py`` -> ``mysimbdp.a.b``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (explicitly: not the parents Python imports
    on the way, which every module of a package shares)."""
    modules = {module_name(root, p): p for p in root.rglob("*.py") if "templates" not in p.parts}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    prefix = root.name
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            graph[name].update(_targets(node, package, prefix, modules))
        graph[name].discard(name)
    return graph


def _targets(node: ast.AST, package: str, prefix: str, modules: Iterable[str]) -> set[str]:
    known = set(modules)
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == prefix or alias.name.startswith(prefix + "."):
                found.add(_existing(alias.name, known))
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the package, up level - 1
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source != prefix and not source.startswith(prefix + "."):
            return found
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            found.add(sub if sub in known else _existing(source, known))
    return found


def _existing(name: str, known: set[str]) -> str:
    """The longest prefix of ``name`` that is a module (``a.b.C`` names module ``a.b``)."""
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read_in_full() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50, "too few modules found"
    assert "mysimbdp.events.catalog" in graph["mysimbdp.monitor.metrics"]
    assert "mysimbdp.daemon" in graph["mysimbdp.cli"] or any(
        "mysimbdp.daemon" in graph[m] for m in graph if m.startswith("mysimbdp.cli"))


def test_no_import_cycles() -> None:
    found = cycles(import_graph(PACKAGE))
    assert not found, "modules that import each other (directly or around a circle): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_only_the_cli_imports_the_daemon() -> None:
    importers = sorted(m for m, targets in import_graph(PACKAGE).items()
                       if "mysimbdp.daemon" in targets and m != "mysimbdp.cli" and not m.startswith("mysimbdp.cli."))
    assert not importers, f"components are handed what they use, never the daemon; these import it: {importers}"


def test_the_top_level_stays_small() -> None:
    names = sorted(p.name for p in PACKAGE.iterdir() if p.name not in NOT_NAMES)
    assert len(names) <= MAX_TOP_LEVEL, f"{len(names)} names at the top of mysimbdp/ (at most {MAX_TOP_LEVEL}): {names}"


# ---- the checks can fail ---------------------------------------------------------------------

def shared_names(root: Path) -> dict[str, list[str]]:
    """Module names (files and packages, not ``__init__``) used more than once under ``root``."""
    seen: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or "templates" in path.parts or path.name == "__init__.py":
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            seen.setdefault(path.stem, []).append(str(path.relative_to(root.parent)))
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_no_two_modules_share_a_name() -> None:
    assert shared_names(PACKAGE) == {}


def test_a_shared_name_is_found(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "batch").mkdir(parents=True)
    (tmp_path / "pkg" / "stats").mkdir()
    for path in ("pkg/__init__.py", "pkg/batch/__init__.py", "pkg/batch/stats.py", "pkg/stats/__init__.py"):
        (tmp_path / path).write_text("")
    assert shared_names(tmp_path / "pkg") == {"stats": ["pkg/batch/stats.py", "pkg/stats"]}


def test_a_cycle_is_found(tmp_path: Path) -> None:
    """Two modules of a package that import each other (one only for type checking) fail."""
    pkg = tmp_path / "mysimbdp"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "daemon.py").write_text("from mysimbdp.sub.part import Part\n")
    (pkg / "sub" / "part.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mysimbdp.daemon import Daemon\n")
    (pkg / "sub" / "other.py").write_text("from . import part\nimport mysimbdp.daemon as d\n")
    graph = import_graph(pkg)
    assert graph["mysimbdp.sub.other"] == {"mysimbdp.sub.part", "mysimbdp.daemon"}
    assert cycles(graph) == [["mysimbdp.daemon", "mysimbdp.sub.part"]]


@pytest.mark.parametrize("graph", [{"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a": {"b"}, "b": {"a"}, "c": set()}])
def test_cycles_around_a_circle_are_found(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) and "c" not in cycles({"a": {"b"}, "b": {"a"}, "c": set()})[0]
