"""``mysimbdp stream start|stop|scale|status <tenant>``: the stream manager over HTTP (admin token).

Among several daemons, ``scale`` sets the tenant's cluster-wide consumer count and
``start``/``stop`` its state on every instance (the daemon asked carries out its share at once,
the others at their next evaluation); ``status`` shows the decision and each instance's share.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any

from mysimbdp.errors import MysimbdpError

ACTIONS = ("start", "stop", "scale", "status")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("stream", help="start, stop, scale a tenant's stream consumers or show their status",
                       description="Talks to the running daemon's operator endpoints with the admin token. "
                       "Among several daemons, scale sets the cluster-wide total and start/stop act on every "
                       "instance.")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("tenant")
    p.add_argument("count", nargs="?", type=int, help="consumers to run across all instances (scale only)")
    p.add_argument("--url", help="the daemon's HTTP endpoint (default: http://<http_host>:<http_port> of the settings)")
    p.add_argument("--admin-token", help="default: $MYSIMBDP_ADMIN_TOKEN")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    p.set_defaults(func=run)


def _request(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer: dict[str, Any] = json.loads(resp.read() or b"{}")
            return answer
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read() or b"{}")
        except ValueError:
            err = {}
        raise MysimbdpError(f"{err.get('message', exc.reason)} (HTTP {exc.code} {err.get('code', '')})".rstrip()) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MysimbdpError(f"cannot reach the daemon at {url}: {reason}; is mysimbdpd running? (--url)") from None


def run(args: argparse.Namespace) -> int:
    token = args.admin_token or os.environ.get("MYSIMBDP_ADMIN_TOKEN")
    url = args.url
    if not token or not url:
        settings = args.settings_loader()
        token = token or settings.admin_token
        url = url or f"http://{settings.http_host}:{settings.http_port}"
    if not token:
        raise MysimbdpError("no admin token: pass --admin-token or set MYSIMBDP_ADMIN_TOKEN")
    if (args.action == "scale") != (args.count is not None):
        raise MysimbdpError("give a consumer count with 'scale' (and only with it): mysimbdp stream scale <tenant> <n>")
    base = f"{url.rstrip('/')}/tenants/{args.tenant}/stream"
    if args.action == "status":
        answer = _request("GET", base, token)
    elif args.action == "scale":
        answer = _request("PUT", base + "/consumers", token, {"count": args.count})
    else:
        answer = _request("POST", f"{base}/{args.action}", token)
    if args.json or args.action == "status":
        print(json.dumps(answer, indent=2, default=str))
    else:
        print(describe(args.tenant, answer))
    return 0


def describe(tenant: str, answer: dict[str, Any]) -> str:
    """One line for a start, stop or scale answer: this instance's change and, among several
    instances, the cluster-wide total and this instance's share of it."""
    line = f"{tenant}: consumers {answer.get('from')} -> {answer.get('to')}"
    if "total" in answer:
        line += (f" on this instance (cluster total {answer['total']}, this instance's share {answer.get('share')}; "
                 "the others follow at their next evaluation)")
    return line
