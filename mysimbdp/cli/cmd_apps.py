"""``mysimbdp apps``: the installed tenant apps."""

from __future__ import annotations

import argparse
import json

from mysimbdp.apps.plugins import get_plugin_manager, list_apps


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("apps", help="list the installed tenant apps (name, kind, distribution, version)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apps = list_apps(get_plugin_manager())
    if args.json:
        print(json.dumps([a.__dict__ for a in apps], indent=2))
        return 0
    rows = [("NAME", "KIND", "DISTRIBUTION", "VERSION")]
    rows += [(a.name, "+".join(a.kinds) or "-", a.distribution or "-", a.version or "-") for a in apps]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
