"""The HTTP endpoint (aiohttp): health and the routes every component contributes.

Components add routes by having a ``routes()`` method returning aiohttp route
definitions. Helpers here give every route the same error shape, ``{"code", "message"}``,
and the same authentication: tenants' bearer tokens and the operators' admin token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from mysimbdp.auth import bearer_token, token_matches
from mysimbdp.logs import get_logger
from mysimbdp.tenants import TenantProfile

if TYPE_CHECKING:
    from mysimbdp.daemon import Daemon

__all__ = ["HttpServer", "json_response", "error_response", "HttpError", "require_admin",
           "require_tenant", "DAEMON_KEY"]

log = get_logger("http")
DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response serialised with orjson (datetimes as ISO-8601)."""
    return web.Response(body=orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS),
                        status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The platform's error shape: ``{"code": ..., "message": ...}``."""
    return json_response({"code": code, "message": message, **extra}, status=status)


class HttpError(Exception):
    """Raise in a handler to answer with :func:`error_response`."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def require_admin(request: web.Request) -> None:
    """Allow only the operators' admin token (``MYSIMBDP_ADMIN_TOKEN``)."""
    import hmac

    expected = request.app[DAEMON_KEY].settings.admin_token
    token = bearer_token(request.headers.get("Authorization"))
    if not expected:
        raise HttpError(403, "admin_disabled",
                        "operator endpoints are disabled: set MYSIMBDP_ADMIN_TOKEN and restart the daemon")
    if token is None:
        raise HttpError(401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise HttpError(403, "forbidden", "the admin token is not valid")


def require_tenant(request: web.Request, tenant_id: str, allow_admin: bool = True) -> TenantProfile:
    """Authenticate the caller as tenant ``tenant_id`` (or as an operator); return its profile.

    401 without a valid token of any tenant, 403 with another tenant's token, 404 for an
    unknown tenant (only once authenticated, so ids cannot be probed).
    """
    daemon = request.app[DAEMON_KEY]
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise HttpError(401, "unauthorized", "send the tenant's token as 'Authorization: Bearer <token>'")
    admin = daemon.settings.admin_token
    is_admin = allow_admin and admin is not None and token_matches(token, _sha(admin))
    profile = daemon.tenants.get(tenant_id)
    if profile is not None and (is_admin or token_matches(token, profile.token_sha256)):
        return profile
    if is_admin:
        raise HttpError(404, "unknown_tenant", f"no tenant {tenant_id!r} is configured")
    other = any(token_matches(token, p.token_sha256) for p in daemon.tenants.all())
    if other:
        raise HttpError(403, "forbidden", f"this token does not belong to tenant {tenant_id!r}")
    raise HttpError(401, "unauthorized", "the token is not valid for any tenant")


def _sha(value: str) -> str:
    from mysimbdp.auth import hash_token

    return hash_token(value)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    daemon = request.app[DAEMON_KEY]
    if daemon.draining and request.path != "/health":
        return error_response(503, "draining", "the daemon is shutting down; retry against the next instance")
    try:
        return await handler(request)
    except HttpError as exc:
        return error_response(exc.status, exc.code, exc.message, **exc.extra)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("http.error", path=request.path, method=request.method, error=str(exc))
        return error_response(500, "internal", f"internal error: {type(exc).__name__}; see the daemon's log")


async def _health(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    report = daemon.health()
    return json_response(report, status=200 if report["status"] == "ok" else 503)


class HttpServer:
    """The aiohttp application and its listening site."""

    name = "http"

    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        self.daemon = daemon
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def build_app(self, extra_routes: Iterable[web.AbstractRouteDef]) -> web.Application:
        """The application with ``/health`` and every component's routes."""
        app = web.Application(middlewares=[_errors], client_max_size=1024**2)
        app[DAEMON_KEY] = self.daemon
        app.router.add_get("/health", _health)
        app.router.add_routes(list(extra_routes))
        return app

    async def start(self) -> None:
        """Listen on the configured host and port (port 0 picks a free one)."""
        routes: list[web.AbstractRouteDef] = []
        for component in self.daemon.components:
            if component is not self and hasattr(component, "routes"):
                routes.extend(component.routes())
        self._runner = web.AppRunner(self.build_app(routes), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("http.started", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def health(self) -> dict[str, object]:
        """Up while listening."""
        return {"up": self._runner is not None, "port": self.port}
