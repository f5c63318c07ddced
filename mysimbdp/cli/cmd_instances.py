"""``mysimbdp instances``: the daemons sharing the store, as one of them sees them (admin token)."""

from __future__ import annotations

import argparse
import json

from mysimbdp.cli.admin import add_endpoint_arguments, endpoint, request

COLUMNS = ("id", "host", "version", "state", "started_at", "last_heartbeat", "loading", "consumers")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("instances", help="list the daemons sharing the store: heartbeat, files loading, consumers",
                       description="Asks one running daemon (GET /instances, admin token). An instance whose "
                       "heartbeat is older than the lease is shown as gone.")
    add_endpoint_arguments(p)
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url, token = endpoint(args)
    answer = request("GET", f"{url}/instances", token)
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
        return 0
    rows = [[_cell(inst, c) for c in COLUMNS] for inst in answer.get("instances", [])]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cell(inst: dict[str, object], column: str) -> str:
    value = inst.get(column)
    if column == "id" and inst.get("this"):
        return f"{value}*"
    if column == "loading":
        return str(len(value)) if isinstance(value, list) else "0"
    if column == "consumers":
        return ",".join(f"{t}={n}" for t, n in sorted(value.items())) if isinstance(value, dict) and value else "-"
    return "-" if value is None else str(value)
