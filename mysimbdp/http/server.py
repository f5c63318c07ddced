"""The HTTP endpoint (aiohttp): ``/health`` and the route table of :mod:`mysimbdp.http.routes`.

The server is handed its routes (built in one place from the handlers the components
expose), the tenants and the admin token (:class:`Auth`), the daemon's health and its stop
event. Helpers here give every route the same error shape, ``{"code", "message"}``, and the
same authentication: tenants' bearer tokens and the operators' admin token.

``/health`` answers its status to anyone, and its details (components, tenants, files being
loaded) only with the admin token. A :class:`ConnectionGuard` closes connections that are
slow to send their headers or their body, and caps how many are open at once
(``MYSIMBDP_HTTP__*``, see ``README.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from mysimbdp.config import HttpSettings
from mysimbdp.events import Emitter, EventBus
from mysimbdp.events.catalog import HttpConnectionClosed, HttpStarted
from mysimbdp.events.catalog import HttpError as HttpErrorEvent
from mysimbdp.http.signin import CALLER_KEY, Caller
from mysimbdp.http.tokens import bearer_token, hash_token, token_matches
from mysimbdp.tenants import TenantDirectory, TenantProfile

__all__ = ["HttpServer", "json_response", "error_response", "HttpError", "require_admin", "int_param",
           "require_tenant", "is_admin", "ConnectionGuard", "Auth", "AUTH_KEY"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Auth:
    """Who may call: the tenants (by their tokens) and the operators (the admin token, if set)."""

    tenants: TenantDirectory
    admin_token: str | None


AUTH_KEY: web.AppKey[Auth] = web.AppKey("auth", Auth)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response serialised with orjson (datetimes as ISO-8601)."""
    return web.Response(body=orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS),
                        status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> web.Response:
    """The platform's error shape: ``{"code": ..., "message": ...}``."""
    response = json_response({"code": code, "message": message, **extra}, status=status)
    response.headers.update(headers or {})
    return response


class HttpError(Exception):
    """Raise in a handler to answer with :func:`error_response` (``headers``, e.g. ``Retry-After``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers = headers


def int_param(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    """The query parameter ``key`` as an integer in ``[low, high]`` (``default`` when absent); a 400
    ``bad_<key>`` otherwise."""
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"bad_{key}", f"{key} must be an integer") from None
    if not low <= value <= high:
        raise HttpError(400, f"bad_{key}", f"{key} must be between {low} and {high}")
    return value


def _session(request: web.Request) -> Caller | None:
    """The caller of the request's console session, if any (:mod:`mysimbdp.http.signin`)."""
    caller = request.get(CALLER_KEY)
    return caller if isinstance(caller, Caller) else None


def is_admin(request: web.Request) -> bool:
    """Whether the request carries the operators' admin token (False when none is configured)."""
    session = _session(request)
    if session is not None:
        return session.kind == "admin"
    expected = request.app[AUTH_KEY].admin_token
    token = bearer_token(request.headers.get("Authorization"))
    if not expected or token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.encode())


def require_admin(request: web.Request) -> None:
    """Allow only the operators' admin token (``MYSIMBDP_ADMIN_TOKEN``)."""
    session = _session(request)
    if session is not None:
        if session.kind != "admin":
            raise HttpError(403, "forbidden", "operators only")
        return
    expected = request.app[AUTH_KEY].admin_token
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
    auth = request.app[AUTH_KEY]
    session = _session(request)
    if session is not None:
        profile = auth.tenants.get(tenant_id)
        if session.kind == "admin" and allow_admin:
            if profile is None:
                raise HttpError(404, "unknown_tenant", f"no tenant {tenant_id!r} is configured")
            return profile
        if session.kind == "tenant" and session.tenant == tenant_id and profile is not None:
            return profile
        raise HttpError(403, "forbidden", f"this session does not belong to tenant {tenant_id!r}")
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise HttpError(401, "unauthorized", "send the tenant's token as 'Authorization: Bearer <token>'")
    admin = auth.admin_token
    is_admin = allow_admin and admin is not None and token_matches(token, hash_token(admin))
    profile = auth.tenants.get(tenant_id)
    if profile is not None and (is_admin or token_matches(token, profile.token_sha256)):
        return profile
    if is_admin:
        raise HttpError(404, "unknown_tenant", f"no tenant {tenant_id!r} is configured")
    other = any(token_matches(token, p.token_sha256) for p in auth.tenants.all())
    if other:
        raise HttpError(403, "forbidden", f"this token does not belong to tenant {tenant_id!r}")
    raise HttpError(401, "unauthorized", "the token is not valid for any tenant")


CLOSE_REASONS = ("header_timeout", "body_timeout", "evicted", "refused")


class _Conn:
    """What the guard knows of one connection."""

    __slots__ = ("transport", "idle_since", "last_data", "request")

    def __init__(self, transport: asyncio.Transport, now: float) -> None:
        self.transport = transport
        self.idle_since = now  # since when it waits for a request's headers
        self.last_data = now  # when the client last sent a byte
        self.request: web.BaseRequest | None = None  # the request being handled

    def idle(self) -> bool:
        """Waiting for the client's next request, with nothing left to send it."""
        return self.request is None and self.transport.get_write_buffer_size() == 0


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen by the guard (bytes in, open, lost)."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard, self._inner = guard, inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        self._guard.opened(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._guard.received(self._transport_of())
        self._inner.data_received(data)

    def _transport_of(self) -> Any:
        return getattr(self._inner, "transport", None)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.lost(self._transport_of())
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """Closes slow and surplus connections, which aiohttp alone would keep open.

    * ``header_timeout_s``: a connection must send a request's line and headers within this
      time of opening, or of its previous answer (keep-alive idleness counts the same);
    * ``body_timeout_s``: while a handler waits for the request body, the client must send a
      byte at least this often (a handler that is slow to read is not the client's fault:
      aiohttp then stops reading the socket, and the guard waits);
    * ``max_connections``: a connection beyond it closes the connection idle the longest,
      or is itself closed at once when none is idle.
    """

    def __init__(self, header_timeout_s: float, body_timeout_s: float, max_connections: int,
                 events: Emitter | None = None) -> None:
        self.events = events
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.max_connections = max_connections
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        self._conns: dict[Any, _Conn] = {}  # by transport
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` wrapping aiohttp's."""
        self._loop = asyncio.get_running_loop()
        return lambda: _GuardedProtocol(self, inner())

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def opened(self, transport: asyncio.Transport) -> None:
        if len(self._conns) >= self.max_connections:
            idle = [c for c in self._conns.values() if c.idle()]
            if not idle:
                self._close(transport, "refused")
                return
            self._close(min(idle, key=lambda c: c.idle_since).transport, "evicted")
        self._conns[transport] = _Conn(transport, self._now())

    def received(self, transport: Any) -> None:
        conn = self._conns.get(transport)
        if conn is not None:
            conn.last_data = self._now()

    def lost(self, transport: Any) -> None:
        self._conns.pop(transport, None)

    def _close(self, transport: Any, reason: str) -> None:
        self._conns.pop(transport, None)
        self.closed[reason] += 1
        if self.events is not None:
            with contextlib.suppress(Exception):
                peer = transport.get_extra_info("peername")
                self.events.emit(HttpConnectionClosed(reason=reason, peer=str(peer[0]) if peer else None))
        transport.abort()  # no lingering: a slow client gets no more of our time

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Mark the connection busy while its request is handled."""
        conn = self._conns.get(request.transport)
        if conn is None:
            return await handler(request)
        conn.request, conn.last_data = request, self._now()
        try:
            return await handler(request)
        finally:
            conn.request, conn.idle_since = None, self._now()

    def sweep(self) -> None:
        """Close the connections past a deadline (called every fraction of the shortest timeout)."""
        now = self._now()
        for conn in list(self._conns.values()):
            request = conn.request
            if request is None:
                if conn.idle() and now - conn.idle_since > self.header_timeout_s:
                    self._close(conn.transport, "header_timeout")
            elif (not request.content.is_eof() and conn.transport.is_reading()
                  and now - conn.last_data > self.body_timeout_s):
                self._close(conn.transport, "body_timeout")

    async def run(self) -> None:
        """Sweep until cancelled."""
        period = min(1.0, max(0.05, min(self.header_timeout_s, self.body_timeout_s) / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep()


class HttpServer:
    """The aiohttp application and its listening socket."""

    name = "http"

    def __init__(self, *, host: str, port: int, limits: HttpSettings, auth: Auth,
                 routes: Iterable[web.AbstractRouteDef], health: Callable[[], dict[str, Any]],
                 stopping: asyncio.Event, bus: EventBus,
                 middlewares: Iterable[Callable[..., Awaitable[web.StreamResponse]]] = ()) -> None:
        """``routes``: the route table (:func:`mysimbdp.http.routes.route_table`); ``health()``:
        the daemon's health report; ``stopping``: once set, every route but ``/health`` answers 503."""
        self.host = host
        self.port = port
        self.auth = auth
        self.routes = list(routes)
        self.middlewares = list(middlewares)  # inside the guard and the error handler, before the routes
        self._health = health
        self._stopping = stopping
        self.events = bus.emitter("http")
        self.guard = ConnectionGuard(limits.header_timeout_s, limits.body_timeout_s, limits.max_connections,
                                     self.events)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def build_app(self) -> web.Application:
        """The application with ``/health`` and the route table."""
        app = web.Application(middlewares=[self.guard.middleware, self._errors, *self.middlewares],
                              client_max_size=1024**2)
        app[AUTH_KEY] = self.auth
        app.router.add_get("/health", self._get_health)
        app.router.add_routes(self.routes)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._stopping.is_set() and request.path != "/health":
            return error_response(503, "draining", "the daemon is shutting down; retry against the next instance")
        try:
            return await handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)
        except (web.HTTPException, ConnectionError):  # a client gone (or closed by the guard) is not our error
            raise
        except Exception as exc:
            self.events.emit(HttpErrorEvent(path=request.path, method=request.method, error=str(exc)), exc_info=True)
            return error_response(500, "internal", f"internal error: {type(exc).__name__}; see the daemon's log")

    async def _get_health(self, request: web.Request) -> web.Response:
        """The status to anyone; the components' details (tenant ids, file names) to operators only."""
        report = self._health()
        status = 200 if report["status"] == "ok" else 503
        if not is_admin(request):
            report = {"status": report["status"]}
        return json_response(report, status=status)

    async def start(self) -> None:
        """Listen on the configured host and port (port 0 picks a free one)."""
        # aiohttp's own keep-alive timer closes idle connections too; the guard does the rest
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=2.0,
                                     keepalive_timeout=self.guard.header_timeout_s)
        await self._runner.setup()
        assert self._runner.server is not None
        loop = asyncio.get_running_loop()
        # our own listening socket instead of a TCPSite, so every connection passes the guard
        self._server = await loop.create_server(self.guard.protocol_factory(self._runner.server),
                                                self.host, self.port, reuse_address=True)
        if self.port == 0 and self._server.sockets:
            self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self.guard.run(), name="http.guard")
        self.events.emit(HttpStarted(host=self.host, port=self.port))
    async def stop(self) -> None:
        """Stop listening, then close the connections (in-flight requests get ``shutdown_timeout``)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def health(self) -> dict[str, object]:
        """Up while listening; connections open and those the guard closed, by reason."""
        return {"up": self._runner is not None, "port": self.port, "connections": len(self.guard),
                "closed": dict(self.guard.closed)}
