"""``mysimbdp new-app NAME``: scaffold an installable tenant batch app from the templates."""

from __future__ import annotations

import argparse
import re
import string
from importlib import resources
from pathlib import Path

from mysimbdp.errors import MysimbdpError

__all__ = ["register", "run", "scaffold"]

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: template file -> path in the new distribution (``{module}`` is replaced)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "__init__.py.tmpl": "{module}/__init__.py",
    "batch.py.tmpl": "{module}/batch.py",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("new-app", help="create a tenant batch app distribution to edit and pip install")
    p.add_argument("name", help="the app's name (entry-point name, referenced by tenant profiles): [a-z][a-z0-9_]*")
    p.add_argument("--dir", default=".", help="where to create the distribution's folder (default: here)")
    p.set_defaults(func=run)


def scaffold(name: str, parent: Path) -> Path:
    """Create ``<parent>/mysimbdp-<name>/`` from the templates; returns the folder."""
    if not NAME_RE.match(name):
        raise MysimbdpError(f"app name {name!r} is not valid: use lowercase letters, digits and '_', "
                            "starting with a letter, at most 32 characters")
    dist = f"mysimbdp-{name.replace('_', '-')}"
    module = f"mysimbdp_{name}"
    target = parent / dist
    if target.exists():
        raise MysimbdpError(f"{target} already exists; choose another name or --dir")
    values = {"name": name, "dist": dist, "module": module}
    templates = resources.files("mysimbdp").joinpath("templates", "batch_app")
    for template, relative in FILES.items():
        text = string.Template(templates.joinpath(template).read_text(encoding="utf-8")).substitute(values)
        path = target / relative.format(module=module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def run(args: argparse.Namespace) -> int:
    target = scaffold(args.name, Path(args.dir))
    print(f"created {target}")
    print(f"next: edit {target}/mysimbdp_{args.name}/batch.py, then `pip install -e {target}`;")
    print(f'a tenant uses it with [batch] app = "{args.name}" in its profile (see docs/plugins.md)')
    return 0
