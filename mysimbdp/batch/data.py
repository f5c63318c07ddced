"""``GET /tenants/{id}/data``: what a tenant has in the store, for the tenant itself.

Its collections in ``tenant_<id>`` (the store's estimated count, the indexes, at most
:data:`MAX_COLLECTIONS`), when its last file was committed and when its stream last wrote
documents (``last_stream_ingest``: the latest any instance reported in its heartbeat, so at
most a heartbeat old), so that a tenant can see its data arrived and where to query it
without an operator (README: "Query your data").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from mysimbdp.batch.ledger import Ledger
from mysimbdp.http.server import HttpError, json_response, require_tenant
from mysimbdp.store.browse import TenantDatabases

__all__ = ["TenantData", "MAX_COLLECTIONS", "MAX_INDEXES"]

MAX_COLLECTIONS = 200
MAX_INDEXES = 64


class Heartbeats(Protocol):
    """The instances' heartbeat documents (:class:`mysimbdp.cluster.instances.InstanceRegistry`)."""

    async def last_ingest(self, tenant: str) -> float | None: ...


class TenantData:
    """The handler of ``GET /tenants/{id}/data`` (tenant token, or the admin's)."""

    def __init__(self, *, store: TenantDatabases, ledger: Ledger, instances: Heartbeats | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.instances = instances

    async def get_data(self, request: web.Request) -> web.Response:
        """The tenant's collections, their estimated counts and indexes; its last committed file."""
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        db = self.store.tenant_db(tenant)
        try:
            names = sorted(await db.list_collection_names())
            collections = [await _collection(db, name) for name in names[:MAX_COLLECTIONS]]
            last = next(iter(await self.ledger.last_committed(tenant)), None)
            stream_at = await self._last_stream_ingest(tenant)
        except PyMongoError as exc:
            raise HttpError(503, "store_unavailable", "the platform's database cannot be reached; retry later "
                            f"({type(exc).__name__})") from None
        return json_response({
            "tenant": tenant, "database": db.name, "collections": collections,
            "more_collections": max(0, len(names) - MAX_COLLECTIONS),
            "last_file": None if last is None else {
                "id": last.get("_id"), "name": last.get("name"), "committed_at": last.get("committed_at"),
                "records_written": last.get("records_written")},
            "last_stream_ingest": None if stream_at is None else datetime.fromtimestamp(stream_at, UTC),
        })

    async def _last_stream_ingest(self, tenant: str) -> float | None:
        """The latest time any instance's consumers of ``tenant`` wrote documents."""
        return None if self.instances is None else await self.instances.last_ingest(tenant)


async def _collection(db: AsyncDatabase[dict[str, Any]], name: str) -> dict[str, Any]:
    col = db[name]
    indexes: list[dict[str, Any]] = []
    async for index in await col.list_indexes():
        if len(indexes) >= MAX_INDEXES:
            break
        indexes.append({"name": index.get("name"), "keys": [[k, v] for k, v in dict(index.get("key", {})).items()],
                        **({"unique": True} if index.get("unique") else {})})
    return {"name": name, "estimated_count": await col.estimated_document_count(), "indexes": indexes}
