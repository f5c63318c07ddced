"""``mysimbdp rejects list|show|replay|purge --tenant T``: the tenant's rejects, with its token
(``GET``/``DELETE /tenants/{id}/rejects``, ``POST /tenants/{id}/rejects/replay``; the admin
token works too). ``replay`` goes page after page until every selected reject was replayed."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from mysimbdp.cli.admin import add_tenant_arguments, printable, request, tenant_endpoint
from mysimbdp.errors import MysimbdpError

__all__ = ["register", "run"]

ACTIONS = ("list", "show", "replay", "purge")
_REPLAY_WAIT_S = 900.0  # a page of a replay may take the app up to 300 s per call


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("rejects", help="list, show, replay or purge a tenant's rejects (records and messages not stored)")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("reject_id", nargs="?", help="the reject to show (show only)")
    p.add_argument("--file", help="only the rejects of this file (its ledger id)")
    p.add_argument("--reason", help="only rejects of this kind (parse, wrangle, check, write, malformed, ...)")
    p.add_argument("--source", choices=("file", "stream"), help="only rejects of files, or of messages")
    p.add_argument("--since", help="only rejects at or after this ISO-8601 time")
    p.add_argument("--limit", type=int, default=100, help="rejects per page (list: at most 500; replay: 1000)")
    p.add_argument("--after", help="the page after this reject id (list: the 'next' of the previous page)")
    p.add_argument("--yes", action="store_true", help="purge without asking (purge deletes for good)")
    add_tenant_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url, token = tenant_endpoint(args)
    base = f"{url}/tenants/{urllib.parse.quote(args.tenant, safe='')}/rejects"
    filters = {k: v for k, v in (("file", args.file), ("reason", args.reason), ("source", args.source),
                                 ("since", args.since)) if v is not None}
    if args.action == "show":
        if not args.reject_id:
            raise MysimbdpError("give the reject's id: mysimbdp rejects show <id> --tenant T --token-file F")
        print(json.dumps(request("GET", f"{base}/{urllib.parse.quote(args.reject_id, safe='')}", token),
                         indent=2, default=str))
        return 0
    if args.action == "replay":
        return _replay(base, token, filters, args)
    if args.action == "purge":
        if not args.yes:
            what = ", ".join(f"{k} {v}" for k, v in filters.items()) or "every reject of the tenant"
            raise MysimbdpError(f"purge deletes {what} for good; add --yes to do it")
        answer = request("DELETE", f"{base}?{urllib.parse.urlencode(filters or {'all': 'true'})}", token)
        print(json.dumps(answer) if args.json else f"{answer.get('deleted', 0)} rejects deleted")
        return 0
    params = {**filters, "limit": str(args.limit), **({"after": args.after} if args.after else {})}
    answer = request("GET", f"{base}?{urllib.parse.urlencode(params)}", token)
    print(json.dumps(answer, indent=2, default=str) if args.json else describe(answer))
    return 0


def _replay(base: str, token: str, filters: dict[str, str], args: argparse.Namespace) -> int:
    """Every page of the selected rejects through the tenant's current app; the totals."""
    totals: dict[str, Any] = {}
    after = args.after
    while True:
        params = {**filters, "limit": str(args.limit), **({"after": after} if after else {})}
        answer = request("POST", f"{base}/replay?{urllib.parse.urlencode(params)}", token, timeout=_REPLAY_WAIT_S)
        for key in ("examined", "written", "already_present", "skipped", "still_rejected"):
            totals[key] = totals.get(key, 0) + int(answer.get(key) or 0)
        for reason, n in (answer.get("not_replayable") or {}).items():
            totals.setdefault("not_replayable", {})[reason] = totals.get("not_replayable", {}).get(reason, 0) + n
        after = answer.get("next")
        if not after:
            break
    if args.json:
        print(json.dumps(totals))
    else:
        skipped = totals.get("not_replayable") or {}
        print(f"{totals.get('examined', 0)} rejects replayed: {totals.get('written', 0)} written, "
              f"{totals.get('already_present', 0)} already present, {totals.get('skipped', 0)} skipped by the app, "
              f"{totals.get('still_rejected', 0)} still rejected"
              + (f"; not replayable: {printable(', '.join(f'{k} {v}' for k, v in sorted(skipped.items())))}"
                 if skipped else ""))
    return 0


def describe(answer: dict[str, Any]) -> str:
    """A line per reject (id, kind, where from, reason), then how to get the next page."""
    lines = []
    for r in answer.get("rejects", []):
        where = (f"{r.get('file')} record {r.get('record_number')}" if r.get("source") == "file"
                 else f"message {r.get('message_id')}")
        reason = printable(str(r.get("reason") or ""))
        lines.append(printable(f"{r.get('_id')}  {r.get('kind')}  {where}  ") + reason[:120])
    if not lines:
        lines.append("no rejects")
    if answer.get("next"):
        lines.append(f"more: --after {answer['next']}")
    return "\n".join(lines)
