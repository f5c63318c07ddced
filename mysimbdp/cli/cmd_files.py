"""``mysimbdp files list|show|undo --tenant T``: the tenant's files with its token
(``GET /tenants/{id}/files``, ``GET``/``DELETE /tenants/{id}/files/{file_id}``; the admin
token works too). ``undo`` removes what a committed file wrote and waits until it is done."""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from typing import Any

from mysimbdp.cli.admin import add_tenant_arguments, printable, request, tenant_endpoint
from mysimbdp.errors import MysimbdpError

__all__ = ["register", "run"]

ACTIONS = ("list", "show", "undo")
_POLL_S = 0.5


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("files", help="list or show a tenant's files, or undo a committed one")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("file_id", nargs="?", help="the file's id (show, undo)")
    p.add_argument("--state", help="only files in this state (list)")
    p.add_argument("--limit", type=int, default=20, help="files to list, newest first")
    p.add_argument("--no-wait", action="store_true", help="undo: return once the undo began")
    p.add_argument("--wait-s", type=float, default=3600.0, help="undo: longest wait for the undo to finish")
    add_tenant_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url, token = tenant_endpoint(args)
    base = f"{url}/tenants/{urllib.parse.quote(args.tenant, safe='')}/files"
    if args.action == "list":
        params = {"limit": str(args.limit), **({"state": args.state} if args.state else {})}
        answer = request("GET", f"{base}?{urllib.parse.urlencode(params)}", token)
        print(json.dumps(answer, indent=2, default=str) if args.json else describe(answer.get("files", [])))
        return 0
    if not args.file_id:
        raise MysimbdpError(f"give the file's id: mysimbdp files {args.action} <id> --tenant T --token-file F "
                            "(mysimbdp files list shows the ids)")
    one = f"{base}/{urllib.parse.quote(args.file_id, safe='')}"
    if args.action == "show":
        print(json.dumps(request("GET", one, token), indent=2, default=str))
        return 0
    answer = request("DELETE", one, token)
    deadline = time.monotonic() + args.wait_s
    while answer.get("state") != "undone" and not args.no_wait and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        answer = request("GET", one, token)
    if args.json:
        print(json.dumps(answer, default=str))
    elif answer.get("state") == "undone":
        print(f"undone: {printable(str(answer.get('name')))}: {answer.get('documents_removed', 0):,} documents and "
              f"{answer.get('rejects_removed', 0):,} rejects removed; the same content may be loaded again")
    else:
        print(f"undoing {printable(str(answer.get('name')))} ({answer.get('undo_documents') or 0:,} documents); "
              f"see: mysimbdp files show {args.file_id} --tenant {args.tenant} --token-file {args.token_file}")
    return 0 if answer.get("state") == "undone" or args.no_wait else 1


def describe(files: list[dict[str, Any]]) -> str:
    """A line per file: id, state, records written, name."""
    lines = [printable(f"{f.get('id')}  {f.get('state'):<9}  {f.get('records_written') or 0:>10,}  {f.get('name')}")
             for f in files]
    return "\n".join(lines) if lines else "no files"
