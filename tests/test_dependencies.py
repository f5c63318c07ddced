"""Every third-party module the platform and the example apps import is a declared dependency.

A module that is only present in the development environment (installed for another
package's sake) would make ``pip install mysimbdp`` fail at import time on a user's machine.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = [ROOT, *sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))]


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _declared(project: Path) -> set[str]:
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {_name(r) for r in meta.get("dependencies", [])}


def _imports(package: Path) -> dict[str, str]:
    """Top-level module names imported by the package's files (absolute imports), with one place each."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                found.setdefault(name.split(".")[0], f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name if p != ROOT else "mysimbdp")
def test_imports_are_declared_dependencies(project: Path) -> None:
    own = _declared(ROOT)  # the example apps build on the platform's API (pyarrow tables, ...)
    allowed = own | _declared(project) | {"mysimbdp"}
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    packages = meta["tool"]["setuptools"]["packages"]["find"]["include"]
    modules = {p.rstrip("*") for p in packages}
    distributions = packages_distributions()
    undeclared = []
    for package in modules:
        for name, where in _imports(project / package).items():
            if name in sys.stdlib_module_names or name in modules or name == "mysimbdp":
                continue
            dists = {_name(d) for d in distributions.get(name, [name])}
            if not dists & allowed:
                undeclared.append(f"{name} ({where}; distribution {', '.join(sorted(dists))})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)
