"""``mysimbdp new-app NAME [--kind batch|stream|both]``: scaffold an installable tenant app
from the templates."""

from __future__ import annotations

import argparse
import re
import string
from importlib import resources
from pathlib import Path

from mysimbdp.errors import MysimbdpError

__all__ = ["register", "run", "scaffold", "KINDS"]

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
KINDS = ("batch", "stream", "both")
#: template file -> path in the new distribution (``{module}`` is replaced), by kind
_COMMON = {"pyproject.toml.tmpl": "pyproject.toml", "README.md.tmpl": "README.md",
           "__init__.py.tmpl": "{module}/__init__.py"}
FILES = {
    "batch": {**_COMMON, "batch.py.tmpl": "{module}/batch.py"},
    "stream": {**_COMMON, "stream.py.tmpl": "{module}/stream.py"},
    "both": {**_COMMON, "batch.py.tmpl": "{module}/batch.py", "stream.py.tmpl": "{module}/stream.py",
             "app.py.tmpl": "{module}/app.py"},
}
#: the module the entry point names, by kind
_ENTRY = {"batch": "batch", "stream": "stream", "both": "app"}
_PROFILE = {
    "batch": '    [batch]\n    app = "{name}"\n',
    "stream": '    [stream]\n    app = "{name}"\n',
}
_USAGE = {
    "batch": "then drop a file into `staging/<tenant>/` (write it under a hidden name such as\n"
             "`.name.part`, then rename it) or upload it with `mysimbdp upload`.\n",
    "stream": "then publish JSON records with the tenant's id as routing key, for example\n"
              "`mysimbdp publish --tenant <tenant> readings.jsonl`.\n",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("new-app", help="create a tenant app distribution (batch, stream or both) to edit and "
                       "pip install")
    p.add_argument("name", help="the app's name (entry-point name, referenced by tenant profiles): [a-z][a-z0-9_]*")
    p.add_argument("--kind", choices=KINDS, default="batch",
                   help="which hooks the app has: batch (files), stream (messages) or both (default: batch)")
    p.add_argument("--dir", default=".", help="where to create the distribution's folder (default: here)")
    p.set_defaults(func=run)


def scaffold(name: str, parent: Path, kind: str = "batch") -> Path:
    """Create ``<parent>/mysimbdp-<name>/`` from the templates; returns the folder."""
    if not NAME_RE.match(name):
        raise MysimbdpError(f"app name {name!r} is not valid: use lowercase letters, digits and '_', "
                            "starting with a letter, at most 32 characters")
    if kind not in KINDS:
        raise MysimbdpError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    dist = f"mysimbdp-{name.replace('_', '-')}"
    module = f"mysimbdp_{name}"
    target = parent / dist
    if target.exists():
        raise MysimbdpError(f"{target} already exists; choose another name or --dir")
    kinds = ("batch", "stream") if kind == "both" else (kind,)
    values = {"name": name, "dist": dist, "module": module, "entry": _ENTRY[kind],
              "kind": "batch and stream" if kind == "both" else kind,
              "profile": "\n".join(_PROFILE[k].format(name=name) for k in kinds),
              "usage": "\n".join(_USAGE[k] for k in kinds)}
    templates = resources.files("mysimbdp").joinpath("templates", "app")
    for template, relative in FILES[kind].items():
        text = string.Template(templates.joinpath(template).read_text(encoding="utf-8")).substitute(values)
        path = target / relative.format(module=module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def run(args: argparse.Namespace) -> int:
    target = scaffold(args.name, Path(args.dir), args.kind)
    module = f"mysimbdp_{args.name}"
    edit = {"batch": "batch.py", "stream": "stream.py", "both": "batch.py and stream.py"}[args.kind]
    sections = {"batch": "[batch]", "stream": "[stream]", "both": "[batch] and [stream]"}[args.kind]
    print(f"created {target}")
    print(f"next: edit {edit} in {target}/{module}/, then `pip install -e {target}`;")
    print(f'a tenant uses it with app = "{args.name}" in its profile\'s {sections} section (see docs/plugins.md)')
    return 0
