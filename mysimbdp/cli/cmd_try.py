"""``mysimbdp try --tenant T FILE [--limit N]``: a dry-run of a file with the tenant's token
(``POST /tenants/{id}/try``): admission, reader, app and contract as in a load; nothing is written."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from pathlib import Path
from typing import Any

from mysimbdp.cli.admin import add_tenant_arguments, printable, request, tenant_endpoint
from mysimbdp.errors import MysimbdpError

__all__ = ["register", "run", "describe"]

_SHOWN_REJECTS = 20
_WAIT_S = 3600.0  # a dry-run is bounded by the daemon (try_timeout_s)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("try", help="dry-run a file through the tenant's checks and app; nothing is written")
    p.add_argument("file", type=Path, help="the file (its name decides its format and route, as in staging)")
    p.add_argument("--name", help="the name to judge the file by (default: the file's own name)")
    p.add_argument("--limit", type=int, default=5, help="documents to show as they would be stored (at most 1000)")
    add_tenant_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url, token = tenant_endpoint(args)
    name = args.name or args.file.name
    query = urllib.parse.urlencode({"name": name, "limit": str(args.limit)})
    target = f"{url}/tenants/{urllib.parse.quote(args.tenant, safe='')}/try?{query}"
    try:
        size = args.file.stat().st_size
        with args.file.open("rb") as body:
            answer = request("POST", target, token, data=body, timeout=_WAIT_S, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
    except OSError as exc:
        raise MysimbdpError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    print(json.dumps(answer, indent=2, default=str) if args.json else describe(answer))
    return 0 if answer.get("admitted") and answer.get("verdict") == "commit" else 1


def describe(answer: dict[str, Any]) -> str:
    """The verdict, the counts, the fields, the first documents and rejects, the estimate."""
    name = printable(str(answer.get("name")))
    if not answer.get("admitted"):
        return f"{name}: not admitted ({answer.get('code')}): {printable(str(answer.get('reason')))}"
    counts = answer.get("counts", {})
    lines = [printable(f"{name}: {answer.get('format')} -> app {answer.get('app')}, "
                       f"collection {answer.get('collection')}")]
    verdict = answer.get("verdict")
    lines.append("verdict: would commit" if verdict == "commit" else
                 f"verdict: would be rejected ({answer.get('code')}): {printable(str(answer.get('reason')))}")
    lines.append(f"records {counts.get('records_in', 0):,}, documents {counts.get('documents', 0):,}, "
                 f"rejected {counts.get('rejected', 0):,}, skipped {counts.get('skipped', 0):,}")
    if answer.get("fields"):
        lines.append("fields:")
        for key, f in answer["fields"].items():
            types = ", ".join(f"{t} {n}" for t, n in f.get("types", {}).items())
            bounds = "" if f.get("min") is None else f"  min {f['min']}  max {f['max']}"
            lines.append(printable(f"  {key}: {types}; missing {f.get('missing')}, nulls {f.get('nulls')}{bounds}"))
    for doc in answer.get("documents", []):
        lines.append(printable("  " + json.dumps(doc, default=str)[:300]))
    rejects = answer.get("rejects", [])
    if rejects:
        lines.append(printable(f"rejects ({answer.get('rejects_by_kind')}):"))
        for r in rejects[:_SHOWN_REJECTS]:
            lines.append(printable(f"  record {r.get('record_number')} {r.get('kind')}: {r.get('reason')}")[:300])
        if len(rejects) > _SHOWN_REJECTS:
            lines.append(f"  ... {counts.get('rejected', 0) - _SHOWN_REJECTS:,} more (--json shows {len(rejects)})")
    est = answer.get("estimate", {})
    if est.get("load_s") is not None:
        recent = est.get("based_on") == "recent_loads"
        rate = est.get("recent_loads_records_per_s") if recent else est.get("dry_run_records_per_s")
        basis = "the tenant's recent loads" if recent else "this dry-run"
        lines.append(f"estimated load: {est['load_s']:,} s at {rate:,} records/s ({basis})")
    return "\n".join(lines)
