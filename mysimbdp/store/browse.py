"""A tenant's rejects, for the tenant: ``GET /tenants/{id}/rejects`` (filtered, paginated),
``GET /tenants/{id}/rejects/{reject_id}``, ``DELETE /tenants/{id}/rejects`` (purge what the
filters select). The documents are those of :mod:`mysimbdp.store.rejects` (one schema for
batch and stream), read from the tenant's own ``_rejects`` and nowhere else.

Filters: ``file`` (the file's ledger id), ``reason`` (the reject's ``kind``: ``parse``,
``wrangle``, ``check``, ``write``, ``malformed``, ...), ``source`` (``file`` or ``stream``),
``since`` (ISO-8601: rejects at or after it); another parameter is a 400, and a purge
without a filter needs ``all=true``. A page is at most :data:`MAX_PAGE` rejects in ``_id``
order, without their ``record`` and ``raw`` (one reject's ``GET`` has them); ``next`` is the
cursor of the following page (``after``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from mysimbdp.http.server import HttpError, int_param, json_response, require_tenant
from mysimbdp.store.rejects import REJECTS

__all__ = ["TenantRejects", "TenantDatabases", "MAX_PAGE", "rejects_filter", "page_filter"]

MAX_PAGE = 500
_DEFAULT_PAGE = 100
_TEXT_MAX = 200  # longest filter value accepted
_ID_MAX = 4096  # longest reject id a cursor may name (stream ids hold a message id, or a document's _id)
_QUERY_TIME_MS = 10_000  # a query of a tenant's rejects never holds the store longer
#: a list leaves the bulky fields out (``show`` has them): a page stays small whatever was rejected
_LIST_PROJECTION = {"record": 0, "raw": 0}
_FILTERS = frozenset({"file", "reason", "source", "since"})


class TenantDatabases(Protocol):
    """The store as the tenant's views use it (:class:`mysimbdp.store.mongo.Store`)."""

    def tenant_db(self, tenant: str) -> AsyncDatabase[dict[str, Any]]: ...


def rejects_filter(query: dict[str, str], allowed: frozenset[str] = _FILTERS) -> dict[str, Any]:
    """The store filter of the request's ``file``, ``reason``, ``source`` and ``since``; 400 for
    a value that cannot be one, and for a parameter that is none of ``allowed`` (a misspelt
    filter must not widen a purge)."""
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise HttpError(400, "bad_parameter", f"unknown parameter {unknown[0]!r}; the filters are "
                        f"{', '.join(sorted(_FILTERS))}")
    found: dict[str, Any] = {}
    for param, field in (("file", "ledger_id"), ("reason", "kind"), ("source", "source")):
        value = query.get(param)
        if value is not None:
            if not value or len(value) > _TEXT_MAX:
                raise HttpError(400, f"bad_{param}", f"{param} must be 1 to {_TEXT_MAX} characters")
            found[field] = value
    since = query.get("since")
    if since is not None:
        try:
            when = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise HttpError(400, "bad_since", "since must be an ISO-8601 time, e.g. 2026-12-01T00:00:00Z") from None
        found["at"] = {"$gte": when if when.tzinfo else when.replace(tzinfo=UTC)}
    return found


def page_filter(request: web.Request) -> dict[str, Any]:
    """:func:`rejects_filter` of a request that pages (``limit``, ``after``: the rejects after
    that ``_id``, the ``next`` of the previous page)."""
    query = rejects_filter(dict(request.query), _FILTERS | {"limit", "after"})
    after = request.query.get("after")
    if after is not None:
        if not after or len(after) > _ID_MAX:
            raise HttpError(400, "bad_after", "after must be the 'next' of the previous page")
        query["_id"] = {"$gt": after}
    return query


class TenantRejects:
    """The handlers of the tenant's rejects (the tenant's token, or the admin's)."""

    def __init__(self, *, store: TenantDatabases) -> None:
        self.store = store

    def _collection(self, request: web.Request) -> Any:
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        return self.store.tenant_db(tenant)[REJECTS]

    async def list_rejects(self, request: web.Request) -> web.Response:
        """A page of the tenant's rejects that match the filters, in ``_id`` order."""
        col = self._collection(request)
        query = page_filter(request)
        limit = int_param(request, "limit", _DEFAULT_PAGE, 1, MAX_PAGE)
        try:
            cursor = col.find(query, _LIST_PROJECTION).sort("_id", 1).limit(limit + 1).max_time_ms(_QUERY_TIME_MS)
            page = [doc async for doc in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        more = len(page) > limit
        page = page[:limit]
        return json_response({"tenant": request.match_info["id"], "rejects": page,
                              "next": str(page[-1]["_id"]) if more else None})

    async def get_reject(self, request: web.Request) -> web.Response:
        """One reject by its ``_id``; 404 if the tenant has none of that id."""
        col = self._collection(request)
        reject_id = request.match_info["reject_id"]
        try:
            doc = await col.find_one({"_id": reject_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        if doc is None:
            raise HttpError(404, "unknown_reject", f"no reject with id {reject_id!r}")
        return json_response(doc)

    async def purge_rejects(self, request: web.Request) -> web.Response:
        """Delete the tenant's rejects that match the filters (all of them without one)."""
        col = self._collection(request)
        query = rejects_filter(dict(request.query), _FILTERS | {"all"})
        if not query and request.query.get("all") != "true":
            raise HttpError(400, "no_filter", "a purge without a filter deletes every reject of the tenant: "
                            "add all=true to mean it")
        try:
            result = await col.delete_many(query)
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        return json_response({"tenant": request.match_info["id"], "deleted": result.deleted_count})


def _unavailable(exc: PyMongoError) -> HttpError:
    return HttpError(503, "store_unavailable", f"the platform's database cannot be reached; retry later "
                     f"({type(exc).__name__})")
