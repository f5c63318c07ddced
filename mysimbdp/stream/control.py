"""Operator endpoints of the stream manager (admin token required).

* ``POST /tenants/{id}/stream/start`` and ``POST /tenants/{id}/stream/stop``
* ``PUT /tenants/{id}/stream/consumers`` with ``{"count": n}``
* ``GET /tenants/{id}/stream``

Errors use the platform's shape ``{"code", "message"}``: 400 ``bad_request`` and
``out_of_bounds``, 404 ``no_stream``, 409 ``not_running``, 503 ``broker_unavailable``.
The handlers are given the manager they drive (:class:`StreamControlRoutes`); the route
table (:mod:`mysimbdp.http.routes`) mounts them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mysimbdp.errors import BrokerUnavailable
from mysimbdp.http.server import HttpError, json_response, require_admin
from mysimbdp.stream.manager import StreamError, StreamManager

__all__ = ["StreamControlRoutes"]

_STATUS = {"no_stream": 404, "out_of_bounds": 400, "not_running": 409}


class StreamControlRoutes:
    """The operators' stream endpoints, driving ``manager``."""

    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager

    async def _call(self, request: web.Request, action: Callable[[str], Awaitable[Any]]) -> Any:
        """Authenticate, run ``action(tenant)`` and map its errors to HTTP answers."""
        require_admin(request)
        tenant = request.match_info["id"]
        try:
            return await action(tenant)
        except StreamError as exc:
            raise HttpError(_STATUS.get(exc.code, 400), exc.code, str(exc)) from None
        except BrokerUnavailable as exc:
            raise HttpError(503, "broker_unavailable", str(exc)) from None

    async def start(self, request: web.Request) -> web.Response:
        """``POST /tenants/{id}/stream/start``."""
        async def act(tenant: str) -> dict[str, Any]:
            before, after = await self.manager.start_tenant(tenant, "operator: start")
            return {"tenant": tenant, "state": "running", "from": before, "to": after}
        return json_response(await self._call(request, act))

    async def stop(self, request: web.Request) -> web.Response:
        """``POST /tenants/{id}/stream/stop``."""
        async def act(tenant: str) -> dict[str, Any]:
            before, after = await self.manager.stop_tenant(tenant, "operator: stop")
            return {"tenant": tenant, "state": "stopped", "from": before, "to": after}
        return json_response(await self._call(request, act))

    async def scale(self, request: web.Request) -> web.Response:
        """``PUT /tenants/{id}/stream/consumers`` with ``{"count": n}``."""
        require_admin(request)
        try:
            body = await request.json()
        except ValueError:
            raise HttpError(400, "bad_request", 'send a JSON body like {"count": 2}') from None
        count = body.get("count") if isinstance(body, dict) else None
        if isinstance(count, bool) or not isinstance(count, int):
            raise HttpError(400, "bad_request", f'"count" must be an integer, got {count!r}')

        async def act(tenant: str) -> dict[str, Any]:
            before, after = await self.manager.scale(tenant, count, "operator: scale")
            return {"tenant": tenant, "from": before, "to": after}
        return json_response(await self._call(request, act))

    async def status(self, request: web.Request) -> web.Response:
        """``GET /tenants/{id}/stream``."""
        return json_response(await self._call(request, self.manager.status))
