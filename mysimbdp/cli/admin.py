"""Calls of the running daemon's operator endpoints with the admin token, for the commands."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mysimbdp.client.uploader import read_token
from mysimbdp.config import Settings
from mysimbdp.errors import MysimbdpError

__all__ = ["add_endpoint_arguments", "add_tenant_arguments", "endpoint", "tenant_endpoint", "request", "daemon_url",
           "printable"]


def add_endpoint_arguments(p: argparse.ArgumentParser) -> None:
    """``--url`` and ``--admin-token``."""
    p.add_argument("--url", help="the daemon's HTTP endpoint (default: http://<http_host>:<http_port> of the settings)")
    p.add_argument("--admin-token", help="default: $MYSIMBDP_ADMIN_TOKEN")


def add_tenant_arguments(p: argparse.ArgumentParser) -> None:
    """``--tenant``, ``--token-file``, ``--url`` and ``--json`` of the commands a tenant runs with its token."""
    p.add_argument("--tenant", required=True, help="the tenant id")
    p.add_argument("--token-file", required=True, type=Path, help="file holding the tenant's token, or the admin token")
    p.add_argument("--url", help="the daemon's HTTP endpoint (default: http://<http_host>:<http_port> of the settings)")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")


def daemon_url(settings: Settings) -> str:
    """The daemon's HTTP endpoint as the settings configure it (``http_host``, ``http_port``)."""
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):  # the daemon listens everywhere: reach it here
        host = "127.0.0.1"
    return f"http://{host}:{settings.http_port}"


def tenant_endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The daemon's base URL (``--url``, else the settings') and the token in ``--token-file``."""
    token = read_token(args.token_file)
    return (args.url or daemon_url(args.settings_loader())).rstrip("/"), token


def endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The daemon's base URL and the admin token: from the arguments, the environment, the settings."""
    token = args.admin_token or os.environ.get("MYSIMBDP_ADMIN_TOKEN")
    url = args.url
    if not token or not url:
        settings = args.settings_loader()
        token = token or settings.admin_token
        url = url or daemon_url(settings)
    if not token:
        raise MysimbdpError("no admin token: pass --admin-token or set MYSIMBDP_ADMIN_TOKEN")
    return url.rstrip("/"), token


def request(method: str, url: str, token: str, body: dict[str, Any] | None = None, *, timeout: float = 60.0,
            data: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One call answered with JSON (``body`` sent as JSON, or ``data`` as it is, with ``headers``);
    the daemon's refusal or an unreachable daemon as a :class:`MysimbdpError`."""
    if body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
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


def printable(text: str, keep: str = "") -> str:
    """``text`` with control characters (escape sequences a tenant put in a name or a reason)
    shown as ``?``, but those in ``keep``: safe to print on an operator's terminal."""
    return "".join(c if c.isprintable() or c in keep else "?" for c in text)

