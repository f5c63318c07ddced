"""The web console: ``/console``, a live page for tenants and operators, served by the daemon.

* ``GET /console`` and ``GET /console/static/{name}``: the page and its script and styles,
  shipped in the package (``mysimbdp/templates/console/``): no build step, nothing fetched
  from elsewhere at run time.
* ``POST /console/session`` (``{"token": ...}``): a tenant's token or the admin token,
  exchanged once for the session cookie (:mod:`mysimbdp.http.signin`); ``DELETE`` signs out;
  ``GET /console/session``: who is signed in, and the CSRF nonce the page sends with changes.
* ``GET /console/events``: server-sent events from the daemon's event bus — files loading,
  their progress, commits and rejections, the stream's batches, consumers and the monitor's
  alerts and decisions — a tenant's session only those of its own tenant, without the
  instances' names; every 15 s a ``ping`` (the page says when the stream of events broke and
  when it is back).

Everything else the page shows it reads from the API it shares with the CLI (files, rejects,
stream status and control, statistics from memory), with the session's cookie. Bounds: at
most :data:`MAX_STREAMS` event streams at once (and half the HTTP connections), of which
:data:`STREAMS_PER_CALLER` per tenant (all operators together count as one); :data:`QUEUE`
events waiting per stream (a slow page misses events and is told, once, to read the state
again); a page that reads nothing for :data:`WRITE_TIMEOUT_S` is closed; a stream ends when its
session does (the tenant's token changed, the session expired). Sign-in takes JSON only
(another site's form cannot sign an operator in as someone else), 4 KiB, and at most
:data:`FAILURES_PER_MINUTE` failures a minute per address.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import time
from typing import Any

import orjson
from aiohttp import web

from mysimbdp.events import EventBus
from mysimbdp.events.catalog import Event
from mysimbdp.http.server import HttpError, json_response
from mysimbdp.http.signin import (
    CALLER_KEY,
    COOKIE,
    SESSION_S,
    Caller,
    SessionCodec,
    session_middleware,
)
from mysimbdp.http.tokens import hash_token, token_matches
from mysimbdp.tenants import TenantDirectory

__all__ = ["Console", "MAX_STREAMS", "QUEUE", "LIVE_EVENTS"]

MAX_STREAMS = 200
#: event streams of one tenant (operators: of all operators) at once: no one takes them all
STREAMS_PER_CALLER = 4
QUEUE = 1000
PING_S = 15.0
WRITE_TIMEOUT_S = 10.0  # a page that reads nothing for this long is closed
_BODY_MAX = 4096
#: sign-in failures one address may make in a minute before it must wait (429)
FAILURES_PER_MINUTE = 10
_FAILURE_ADDRESSES = 10_000
_ASSETS = {"app.js": "application/javascript", "app.css": "text/css"}
#: the events a page follows; a tenant's session gets those of its tenant only
LIVE_EVENTS = frozenset({
    "batch.file.loading", "batch.file.resumed", "batch.file.progress", "batch.file.committed", "batch.file.rejected",
    "batch.file.undoing", "batch.file.undone", "upload.staged", "stream.batch.committed",
    "stream.consumers.changed", "monitor.alert", "monitor.scaled",
})
#: fields a tenant is not shown: which instance decided or holds what
#: (a scaling decision's reason can name the instances that joined or went)
_PRIVATE = frozenset({"decided_by", "instance", "instance_id", "owner", "consumer", "component", "error", "reason"})


class Console:
    """The console's routes and its event streams."""

    def __init__(self, *, tenants: TenantDirectory, admin_token: str | None, bus: EventBus,
                 max_connections: int = 2 * MAX_STREAMS) -> None:
        self.tenants = tenants
        self.admin_token = admin_token
        self.codec = SessionCodec(admin_token)
        self.bus = bus
        # at most half the HTTP connections may be event streams: the API keeps the rest
        self.max_streams = max(1, min(MAX_STREAMS, max_connections // 2))
        self._streams: dict[asyncio.Queue[bytes | None], Caller] = {}
        self._missed: set[asyncio.Queue[bytes | None]] = set()  # told once, until they read on
        self._failures: dict[str, list[float]] = {}
        self._subscribed = False

    # -- the daemon's parts --------------------------------------------------------------------
    def middleware(self) -> Any:
        """The session middleware, to put in front of every route."""
        return session_middleware(self.codec, self._still_valid)

    def routes(self) -> list[web.AbstractRouteDef]:
        """The console's routes."""
        return [
            web.get("/console", self.page),
            web.get("/console/static/{name}", self.asset),
            web.post("/console/session", self.sign_in),
            web.get("/console/session", self.who),
            web.delete("/console/session", self.sign_out),
            web.get("/console/events", self.events),
        ]

    def close(self) -> None:
        """End every event stream (the daemon stops)."""
        for queue in list(self._streams):
            with contextlib.suppress(asyncio.QueueEmpty):
                if queue.full():
                    queue.get_nowait()
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def _still_valid(self, caller: Caller) -> bool:
        if caller.kind == "admin":
            return self.admin_token is not None
        profile = self.tenants.get(caller.tenant or "")
        return profile is not None and (profile.token_sha256 or "")[:16] == caller.token_hash

    # -- the page --------------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.Response:
        """The page (no data in it: it asks the API once signed in)."""
        return web.Response(body=_asset("index.html"), content_type="text/html", headers=_NO_STORE)

    async def asset(self, request: web.Request) -> web.Response:
        """The page's script and styles."""
        name = request.match_info["name"]
        if name not in _ASSETS:
            raise HttpError(404, "not_found", "no such file")
        return web.Response(body=_asset(name), content_type=_ASSETS[name], headers=_NO_STORE)

    # -- sessions --------------------------------------------------------------------------------
    async def sign_in(self, request: web.Request) -> web.Response:
        """Exchange a token for the session cookie."""
        # another site's page cannot sign the operator in as someone else: a form cannot send
        # JSON, a script of another origin cannot without a preflight, which nothing answers
        if request.content_type != "application/json":
            raise HttpError(415, "json_only", 'send {"token": "<your token>"} as application/json')
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise HttpError(403, "cross_site", "sign in from the console's own page")
        if request.content_length is None or request.content_length > _BODY_MAX:
            raise HttpError(413, "too_big", "a sign-in is a small JSON object with a Content-Length")
        address = request.remote or ""
        if self._too_many_failures(address):
            raise HttpError(429, "slow_down", "too many failed sign-ins from this address; wait a minute",
                            headers={"Retry-After": "60"})
        try:
            body = orjson.loads(await request.read())
            token = str(body["token"]).strip()
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise HttpError(400, "bad_request", 'send {"token": "<your token>"}') from None
        kind, tenant, token_hash = self._identify(token)
        if kind is None:
            self._failed(address)
            raise HttpError(401, "unauthorized", "this token is not valid")
        value, caller = self.codec.issue(kind, tenant, token_hash)
        response = json_response(_me(caller, self.tenants))
        response.headers.update(_PRIVATE_ANSWER)
        # Secure over HTTPS, and behind a TLS proxy that says so (X-Forwarded-Proto)
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        response.set_cookie(COOKIE, value, max_age=int(SESSION_S), path="/", httponly=True, samesite="Strict",
                            secure=secure)
        return response

    def _too_many_failures(self, address: str) -> bool:
        recent = [t for t in self._failures.get(address, []) if t > time.monotonic() - 60]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        return len(recent) >= FAILURES_PER_MINUTE

    def _failed(self, address: str) -> None:
        if address not in self._failures and len(self._failures) >= _FAILURE_ADDRESSES:
            self._failures.pop(next(iter(self._failures)))  # the oldest address seen
        self._failures.setdefault(address, []).append(time.monotonic())

    def _identify(self, token: str) -> tuple[Any, str | None, str]:
        if not token:
            return None, None, ""
        if self.admin_token and token_matches(token, hash_token(self.admin_token)):
            return "admin", None, ""
        for profile in self.tenants.all():
            if profile.token_sha256 and token_matches(token, profile.token_sha256):
                return "tenant", profile.id, profile.token_sha256
        return None, None, ""

    async def who(self, request: web.Request) -> web.Response:
        """Who the session is (401 without one)."""
        response = json_response(_me(_caller(request), self.tenants))
        response.headers.update(_PRIVATE_ANSWER)
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        """Forget the cookie (the page's; a copy of it stays valid until it expires)."""
        response = json_response({"signed_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    # -- live events -----------------------------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of the session's scope until the page goes, the session ends (its
        token changed, it expired) or the daemon stops."""
        caller = _caller(request)
        mine = sum(1 for c in self._streams.values() if _owner(c) == _owner(caller))
        if len(self._streams) >= self.max_streams or mine >= STREAMS_PER_CALLER:
            raise HttpError(503, "busy", "too many live pages are open; close one, or retry shortly",
                            headers={"Retry-After": "10"})
        self._subscribe()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
        self._streams[queue] = caller
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await self._write(response, _sse("hello", {"at": time.time(), "kind": caller.kind,
                                                       "tenant": caller.tenant}))
            while self._valid(caller):
                try:
                    item = await asyncio.wait_for(queue.get(), PING_S)
                except TimeoutError:
                    item = _sse("ping", {"at": time.time()})
                if item is None:
                    break
                self._missed.discard(queue)
                await self._write(response, item)
        except (ConnectionError, TimeoutError):
            pass  # the page went, or stopped reading
        finally:
            self._streams.pop(queue, None)
            self._missed.discard(queue)
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_S)

    def _valid(self, caller: Caller) -> bool:
        return caller.expires > time.time() and self._still_valid(caller)

    def _subscribe(self) -> None:
        if not self._subscribed:
            self.bus.subscribe(self._on_event, "console")
            self._subscribed = True

    def _on_event(self, event: Event) -> None:
        if event.NAME not in LIVE_EVENTS or not self._streams:
            return
        fields = event.fields()
        tenant = fields.get("tenant")
        whole: bytes | None = None
        private: bytes | None = None
        for queue, caller in list(self._streams.items()):
            if caller.kind == "tenant":
                if tenant != caller.tenant:
                    continue
                if private is None:
                    private = _sse(event.NAME, {k: v for k, v in fields.items() if k not in _PRIVATE})
                data = private
            else:
                if whole is None:
                    whole = _sse(event.NAME, fields)
                data = whole
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:  # a page that does not keep up misses events and is told so, once
                if queue not in self._missed:
                    self._missed.add(queue)
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(_sse("missed", {"at": time.time()}))


_PRIVATE_ANSWER = {"Cache-Control": "no-store"}
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
             "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                                        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                        "base-uri 'none'; form-action 'self'"}


def _owner(caller: Caller) -> str:
    """Whose streams count together: a tenant's, or the operators'."""
    return f"tenant:{caller.tenant}" if caller.kind == "tenant" else "admin"


def _asset(name: str) -> bytes:
    return importlib.resources.files("mysimbdp").joinpath("templates", "console", name).read_bytes()


def _caller(request: web.Request) -> Caller:
    caller = request.get(CALLER_KEY)
    if not isinstance(caller, Caller):
        raise HttpError(401, "unauthorized", "sign in first (POST /console/session)")
    return caller


def _me(caller: Caller, tenants: TenantDirectory | None = None) -> dict[str, Any]:
    """What the page is told of its session: who, the tenants it may see, the CSRF nonce."""
    if caller.kind == "admin":
        visible = sorted(p.id for p in tenants.all()) if tenants is not None else []
    else:
        visible = [caller.tenant] if caller.tenant else []
    return {"kind": caller.kind, "tenant": caller.tenant, "tenants": visible, "csrf": caller.csrf,
            "expires": caller.expires}


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data, default=str) + b"\n\n"
