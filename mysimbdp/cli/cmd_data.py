"""``mysimbdp data --tenant T``: the tenant's collections in the store, for the tenant
(``GET /tenants/{id}/data`` with its token; the admin token works too)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from mysimbdp.cli.admin import add_tenant_arguments, printable, request, tenant_endpoint

__all__ = ["register", "run", "describe"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("data", help="the tenant's collections: estimated counts, indexes, last file committed")
    add_tenant_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url, token = tenant_endpoint(args)
    answer = request("GET", f"{url}/tenants/{urllib.parse.quote(args.tenant, safe='')}/data", token)
    print(json.dumps(answer, indent=2, default=str) if args.json else describe(answer))
    return 0


def describe(answer: dict[str, Any]) -> str:
    """The collections as a table, then the last file and the stream's last ingest."""
    rows = [("COLLECTION", "DOCUMENTS", "INDEXES")]
    for c in answer.get("collections", []):
        indexes = ", ".join(str(i.get("name")) for i in c.get("indexes", []))
        rows.append((str(c.get("name")), f"{c.get('estimated_count', 0):,}", indexes))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"database {answer.get('database')}"]
    lines += [f"{r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2]}".rstrip() for r in rows]
    if answer.get("more_collections"):
        lines.append(f"... and {answer['more_collections']} more collections")
    last = answer.get("last_file")
    lines.append("last file committed: " + (f"{last.get('name')} at {last.get('committed_at')} "
                                            f"({last.get('records_written')} records written)" if last else "none yet"))
    if answer.get("last_stream_ingest"):
        lines.append(f"stream last wrote documents at {answer['last_stream_ingest']}")
    return printable("\n".join(lines), keep="\n")
