"""Operator endpoints of the stream manager (admin token required).

* ``POST /tenants/{id}/stream/start`` and ``POST /tenants/{id}/stream/stop``
* ``PUT /tenants/{id}/stream/consumers`` with ``{"count": n}``
* ``GET /tenants/{id}/stream``

Errors use the platform's shape ``{"code", "message"}``: 400 ``bad_request`` and
``out_of_bounds``, 404 ``no_stream``, 409 ``not_running``, 503 ``broker_unavailable``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mysimbdp.errors import BrokerUnavailable
from mysimbdp.http.server import DAEMON_KEY, HttpError, json_response, require_admin

if TYPE_CHECKING:
    from mysimbdp.stream.manager import StreamManager

__all__ = ["stream_routes"]

_STATUS = {"no_stream": 404, "out_of_bounds": 400, "not_running": 409}


def _manager(request: web.Request) -> StreamManager:
    manager: StreamManager = request.app[DAEMON_KEY].component("stream")
    return manager


async def _call(request: web.Request, action: Callable[[StreamManager, str], Awaitable[Any]]) -> Any:
    """Authenticate, run ``action(manager, tenant)`` and map its errors to HTTP answers."""
    from mysimbdp.stream.manager import StreamError

    require_admin(request)
    tenant = request.match_info["id"]
    try:
        return await action(_manager(request), tenant)
    except StreamError as exc:
        raise HttpError(_STATUS.get(exc.code, 400), exc.code, str(exc)) from None
    except BrokerUnavailable as exc:
        raise HttpError(503, "broker_unavailable", str(exc)) from None


async def _start(request: web.Request) -> web.Response:
    async def act(m: StreamManager, tenant: str) -> dict[str, Any]:
        before, after = await m.start_tenant(tenant, "operator: start")
        return {"tenant": tenant, "state": "running", "from": before, "to": after}
    return json_response(await _call(request, act))


async def _stop(request: web.Request) -> web.Response:
    async def act(m: StreamManager, tenant: str) -> dict[str, Any]:
        before, after = await m.stop_tenant(tenant, "operator: stop")
        return {"tenant": tenant, "state": "stopped", "from": before, "to": after}
    return json_response(await _call(request, act))


async def _scale(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        body = await request.json()
    except ValueError:
        raise HttpError(400, "bad_request", 'send a JSON body like {"count": 2}') from None
    count = body.get("count") if isinstance(body, dict) else None
    if isinstance(count, bool) or not isinstance(count, int):
        raise HttpError(400, "bad_request", f'"count" must be an integer, got {count!r}')

    async def act(m: StreamManager, tenant: str) -> dict[str, Any]:
        before, after = await m.scale(tenant, count, "operator: scale")
        return {"tenant": tenant, "from": before, "to": after}
    return json_response(await _call(request, act))


async def _status(request: web.Request) -> web.Response:
    async def act(m: StreamManager, tenant: str) -> dict[str, Any]:
        return await m.status(tenant)
    return json_response(await _call(request, act))


def stream_routes() -> list[web.AbstractRouteDef]:
    """The route definitions the HTTP server mounts."""
    return [
        web.post("/tenants/{id}/stream/start", _start),
        web.post("/tenants/{id}/stream/stop", _stop),
        web.put("/tenants/{id}/stream/consumers", _scale),
        web.get("/tenants/{id}/stream", _status),
    ]
