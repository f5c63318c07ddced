"""``mysimbdp stream start|stop|scale|status <tenant>``: the stream manager over HTTP, with the
admin token or (``--token-file``) the tenant's own, within its profile's bounds.

Among several daemons, ``scale`` sets the tenant's cluster-wide consumer count and
``start``/``stop`` its state on every instance (the daemon asked carries out its share at once,
the others at their next evaluation); ``status`` shows the decision and each instance's share.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mysimbdp.cli.admin import add_endpoint_arguments, endpoint, request, tenant_endpoint
from mysimbdp.errors import MysimbdpError

ACTIONS = ("start", "stop", "scale", "status")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("stream", help="start, stop, scale a tenant's stream consumers or show their status",
                       description="Talks to the running daemon's stream endpoints with the admin token, or with "
                       "the tenant's own (--token-file) within its profile's bounds. "
                       "Among several daemons, scale sets the cluster-wide total and start/stop act on every "
                       "instance.")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("tenant")
    p.add_argument("count", nargs="?", type=int, help="consumers to run across all instances (scale only)")
    add_endpoint_arguments(p)
    p.add_argument("--token-file", type=Path, help="act as the tenant with its token (from `mysimbdp tenants "
                   "token`), within its profile's bounds, instead of with the admin token")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.token_file is not None:
        url, token = tenant_endpoint(args)
    else:
        url, token = endpoint(args)
    if (args.action == "scale") != (args.count is not None):
        raise MysimbdpError("give a consumer count with 'scale' (and only with it): mysimbdp stream scale <tenant> <n>")
    base = f"{url}/tenants/{args.tenant}/stream"
    if args.action == "status":
        answer = request("GET", base, token)
    elif args.action == "scale":
        answer = request("PUT", base + "/consumers", token, {"count": args.count})
    else:
        answer = request("POST", f"{base}/{args.action}", token)
    if args.json or args.action == "status":
        print(json.dumps(answer, indent=2, default=str))
    else:
        print(describe(args.tenant, answer))
    return 0


def describe(tenant: str, answer: dict[str, Any]) -> str:
    """One line for a start, stop or scale answer: this instance's change and, among several
    instances, the cluster-wide total and this instance's share of it."""
    line = f"{tenant}: consumers {answer.get('from')} -> {answer.get('to')}"
    if "share" in answer:
        line += (f" on this instance (cluster total {answer['total']}, this instance's share {answer.get('share')}; "
                 "the others follow at their next evaluation)")
    elif "total" in answer:  # a tenant is shown the total only
        line += f" (all instances together: {answer['total']})"
    return line
