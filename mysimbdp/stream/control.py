"""Stream control endpoints: the tenant's token (within its profile's bounds) or the admin's.

* ``POST /tenants/{id}/stream/start`` and ``POST /tenants/{id}/stream/stop``
* ``PUT /tenants/{id}/stream/consumers`` with ``{"count": n}``
* ``GET /tenants/{id}/stream``

Errors use the platform's shape ``{"code", "message"}``: 400 ``bad_request`` and
``out_of_bounds``, 404 ``no_stream``, 409 ``not_running``, 503 ``broker_unavailable``.
The handlers are given the manager they drive (:class:`StreamControlRoutes`); the route
table (:mod:`mysimbdp.http.routes`) mounts them.

With the cluster's scaling decisions (:class:`mysimbdp.monitor.shares.ClusterScaling`), the
operator acts on the tenant across every instance: ``scale`` sets the cluster-wide total,
``start`` and ``stop`` the decision's state; this instance carries out its share at once, the
others at their next evaluation. The answers add ``total`` and ``share`` (this instance's),
the status a ``cluster`` section (the decision, who decides now). A decision needs the
store: while it is unreachable these answer 503 ``store_unavailable``.

A tenant controls its own stream with its token, within ``[min_consumers, max_consumers]``
of its profile; the admin token acts on any tenant. Every action's reason says who acted
(``operator: scale``, ``tenant: scale``), and so do the ``stream.consumers.changed`` and
``stream.started``/``stream.stopped`` events it causes. A tenant is not shown the platform's
instance ids (``decided_by``, the shares): only its stream's state and total.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pymongo.errors import PyMongoError

from mysimbdp.errors import BrokerUnavailable
from mysimbdp.http.server import HttpError, is_admin, json_response, require_tenant
from mysimbdp.monitor.shares import ClusterScaling, ScaleDecision
from mysimbdp.stream.manager import StreamError, StreamManager

__all__ = ["StreamControlRoutes"]

_STATUS = {"no_stream": 404, "out_of_bounds": 400, "not_running": 409}


class StreamControlRoutes:
    """The operators' stream endpoints, driving ``manager``."""

    def __init__(self, manager: StreamManager, cluster: ClusterScaling | None = None) -> None:
        """``cluster``: the tenants' shared scaling decisions (None: this daemon alone)."""
        self.manager = manager
        self.cluster = cluster

    async def _call(self, request: web.Request, action: Callable[[str, str], Awaitable[Any]]) -> Any:
        """Authenticate (the tenant or the admin), run ``action(tenant, who)`` (``who``:
        ``operator`` or ``tenant``) and map its errors to HTTP answers."""
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        who = "operator" if is_admin(request) else "tenant"
        operator = who == "operator"
        try:
            answer = await action(tenant, who)
            return answer if operator else _for_tenant(answer)
        except StreamError as exc:
            raise HttpError(_STATUS.get(exc.code, 400), exc.code, str(exc)) from None
        except (BrokerUnavailable, TimeoutError) as exc:  # the broker's hosts are the operators' business
            detail = f": {exc}" if operator else ""
            raise HttpError(503, "broker_unavailable", f"the message broker cannot be reached{detail}; "
                            "try again later") from None
        except PyMongoError as exc:
            detail = f" (the store is unreachable: {str(exc)[:200]})" if operator else ""
            raise HttpError(503, "store_unavailable", f"the scaling decision could not be read or written"
                            f"{detail}; try again once the store is back") from None

    def _shared(self, answer: dict[str, Any], decision: ScaleDecision) -> dict[str, Any]:
        assert self.cluster is not None
        return {**answer, "total": decision.total, "share": decision.share_of(self.cluster.id),
                "decided_by": decision.decided_by}

    async def start(self, request: web.Request) -> web.Response:
        """``POST /tenants/{id}/stream/start``."""
        async def act(tenant: str, who: str) -> dict[str, Any]:
            if self.cluster is None:
                before, after = await self.manager.start_tenant(tenant, f"{who}: start")
                return {"tenant": tenant, "state": "running", "from": before, "to": after}
            low, high = self.manager.bounds(tenant)
            if self.manager.is_running(tenant):  # already running: the decision stays as it is
                n = self.manager.consumer_count(tenant)
                return {"tenant": tenant, "state": "running", "from": n, "to": n}
            before, after, decision = await self.cluster.set_state(
                tenant, "running", min(max(low, 1), high), f"{who}: start")
            return self._shared({"tenant": tenant, "state": "running", "from": before, "to": after}, decision)
        return json_response(await self._call(request, act))

    async def stop(self, request: web.Request) -> web.Response:
        """``POST /tenants/{id}/stream/stop``."""
        async def act(tenant: str, who: str) -> dict[str, Any]:
            if self.cluster is None:
                before, after = await self.manager.stop_tenant(tenant, f"{who}: stop")
                return {"tenant": tenant, "state": "stopped", "from": before, "to": after}
            self.manager.bounds(tenant)  # no stream: 404 before anything is written
            before, after, decision = await self.cluster.set_state(tenant, "stopped", 0, f"{who}: stop")
            return self._shared({"tenant": tenant, "state": "stopped", "from": before, "to": after}, decision)
        return json_response(await self._call(request, act))

    async def scale(self, request: web.Request) -> web.Response:
        """``PUT /tenants/{id}/stream/consumers`` with ``{"count": n}``."""
        require_tenant(request, request.match_info["id"])  # before the body is read
        try:
            body = await request.json()
        except ValueError:
            raise HttpError(400, "bad_request", 'send a JSON body like {"count": 2}') from None
        count = body.get("count") if isinstance(body, dict) else None
        if isinstance(count, bool) or not isinstance(count, int):
            raise HttpError(400, "bad_request", f'"count" must be an integer, got {count!r}')

        async def act(tenant: str, who: str) -> dict[str, Any]:
            if self.cluster is None:
                before, after = await self.manager.scale(tenant, count, f"{who}: scale")
                return {"tenant": tenant, "from": before, "to": after}
            self.manager.check_count(tenant, count)  # the bounds hold for the total
            before, after, decision = await self.cluster.set_total(tenant, count, f"{who}: scale")
            return self._shared({"tenant": tenant, "from": before, "to": after}, decision)
        return json_response(await self._call(request, act))

    async def status(self, request: web.Request) -> web.Response:
        """``GET /tenants/{id}/stream``: this instance's consumers, and the cluster's decision."""
        async def act(tenant: str, who: str) -> dict[str, Any]:
            status = await self.manager.status(tenant)
            if self.cluster is not None:
                status["cluster"] = await self._cluster_view(tenant)
            return status
        return json_response(await self._call(request, act))

    async def _cluster_view(self, tenant: str) -> dict[str, Any]:
        """This instance, who decides for the tenant now and the decision (None before the first)."""
        assert self.cluster is not None
        try:
            decision = await self.cluster.decision(tenant)
            deciding = await self.cluster.deciding(tenant)
        except PyMongoError as exc:  # the status of this instance is still worth showing
            return {"instance": self.cluster.id, "error": f"store unreachable: {str(exc)[:200]}"}
        return {"instance": self.cluster.id, "deciding": deciding,
                "decision": decision.view() if decision is not None else None,
                "share": decision.share_of(self.cluster.id) if decision is not None else None}


#: What a tenant is not shown of an answer: which of the platform's instances decided or run what.
#: (a decision's reason can name instances that joined or went; the cluster's error, the store's hosts)
_PLATFORM_ONLY = frozenset({"decided_by", "share", "shares", "instance", "deciding", "reason"})


def _for_tenant(answer: Any, within: str = "") -> Any:
    """``answer`` without the platform's instance ids and store errors (at any depth)."""
    if isinstance(answer, dict):
        return {k: _for_tenant(v, k) for k, v in answer.items()
                if k not in _PLATFORM_ONLY and not (within == "cluster" and k == "error")}
    return answer

