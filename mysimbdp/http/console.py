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
most :data:`MAX_STREAMS` event streams at once, :data:`QUEUE` events waiting per stream (a
slow page misses events and is told to read the state again), sign-in bodies of 4 KiB.
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
QUEUE = 1000
PING_S = 15.0
_BODY_MAX = 4096
_ASSETS = {"app.js": "application/javascript", "app.css": "text/css"}
#: the events a page follows; a tenant's session gets those of its tenant only
LIVE_EVENTS = frozenset({
    "batch.file.loading", "batch.file.resumed", "batch.file.progress", "batch.file.committed", "batch.file.rejected",
    "batch.file.undoing", "batch.file.undone", "upload.staged", "stream.batch.committed",
    "stream.consumers.changed", "monitor.alert", "monitor.scaled",
})
#: fields a tenant is not shown: which instance decided or holds what
_PRIVATE = frozenset({"decided_by", "instance", "instance_id", "owner", "consumer", "component", "error"})


class Console:
    """The console's routes and its event streams."""

    def __init__(self, *, tenants: TenantDirectory, admin_token: str | None, bus: EventBus) -> None:
        self.tenants = tenants
        self.admin_token = admin_token
        self.codec = SessionCodec(admin_token)
        self.bus = bus
        self._streams: dict[asyncio.Queue[tuple[str, dict[str, Any]] | None], Caller] = {}
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
        if request.content_length is not None and request.content_length > _BODY_MAX:
            raise HttpError(413, "too_big", "a sign-in is a small JSON object")
        try:
            body = orjson.loads(await request.content.read(_BODY_MAX))
            token = str(body["token"]).strip()
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise HttpError(400, "bad_request", 'send {"token": "<your token>"}') from None
        kind, tenant, token_hash = self._identify(token)
        if kind is None:
            raise HttpError(401, "unauthorized", "this token is not valid")
        value, caller = self.codec.issue(kind, tenant, token_hash)
        response = json_response(_me(caller, self.tenants))
        response.set_cookie(COOKIE, value, max_age=int(SESSION_S), path="/", httponly=True, samesite="Strict",
                            secure=request.secure)
        return response

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
        return json_response(_me(_caller(request), self.tenants))

    async def sign_out(self, request: web.Request) -> web.Response:
        """Forget the cookie (the page's; a copy of it stays valid until it expires)."""
        response = json_response({"signed_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    # -- live events -----------------------------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of the session's scope until the page goes or the daemon stops."""
        caller = _caller(request)
        if len(self._streams) >= MAX_STREAMS:
            raise HttpError(503, "busy", "too many live pages are open; retry shortly", headers={"Retry-After": "10"})
        self._subscribe()
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(QUEUE)
        self._streams[queue] = caller
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(_sse("hello", {"at": time.time(), "kind": caller.kind, "tenant": caller.tenant}))
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), PING_S)
                except TimeoutError:
                    await response.write(_sse("ping", {"at": time.time()}))
                    continue
                if item is None:
                    break
                await response.write(_sse(*item))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._streams.pop(queue, None)
        return response

    def _subscribe(self) -> None:
        if not self._subscribed:
            self.bus.subscribe(self._on_event, "console")
            self._subscribed = True

    def _on_event(self, event: Event) -> None:
        if event.NAME not in LIVE_EVENTS or not self._streams:
            return
        fields = event.fields()
        tenant = fields.get("tenant")
        for queue, caller in list(self._streams.items()):
            if caller.kind == "tenant":
                if tenant != caller.tenant:
                    continue
                data = {k: v for k, v in fields.items() if k not in _PRIVATE}
            else:
                data = fields
            try:
                queue.put_nowait((event.NAME, data))
            except asyncio.QueueFull:  # a page that does not keep up: it misses events and is told so
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(("missed", {"at": time.time()}))


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
             "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                                        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}


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
