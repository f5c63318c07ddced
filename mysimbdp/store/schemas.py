"""The tenants' schema history: what ``evolve`` contracts accepted, and ``GET /tenants/{id}/schema``.

One document per tenant and scope in ``mysimbdp.schemas`` (``_id`` ``<tenant>:<scope>``;
scopes: ``batch``, ``route:<pattern>``, ``stream``): the fields accepted beyond the
contract with the types seen (``fields``, a list of ``{name, types}``: field names are a
tenant's, kept as values, never as keys), and ``history``, one entry per new field or new
type (``at``, ``field``, ``type``, ``change``: ``added`` or ``type_added``, ``source``: the
file or ``stream``), the last :data:`MAX_HISTORY`. A write is a compare-and-swap on
``version``, so instances recording at once lose nothing.

``GET /tenants/{id}/schema`` (the tenant's token, or the admin's) shows, per scope, the
contract declared in the profile, the current schema (declared fields and the evolved ones)
and the history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from pymongo.errors import DuplicateKeyError, PyMongoError

from mysimbdp.http.server import HttpError, json_response, require_tenant
from mysimbdp.store.contracts import MAX_FIELDS, Contract
from mysimbdp.tenants import TenantProfile

__all__ = ["SchemaHistory", "SchemaRecorder", "MAX_HISTORY"]

COLLECTION = "schemas"
MAX_HISTORY = 1000
_ATTEMPTS = 8


class SchemaRecorder(Protocol):
    """Where loads record the fields an ``evolve`` contract accepted."""

    async def record(self, tenant: str, scope: str, evolved: Mapping[str, set[str]], source: str,
                     declared: Mapping[str, str]) -> None: ...


class PlatformDatabase(Protocol):
    """The store as the history uses it (:class:`mysimbdp.store.mongo.Store`)."""

    @property
    def platform_db(self) -> Any: ...


class SchemaHistory:
    """Reads and records the schema history; serves ``GET /tenants/{id}/schema``."""

    def __init__(self, *, store: PlatformDatabase) -> None:
        self.store = store

    @property
    def collection(self) -> Any:
        """``mysimbdp.schemas``."""
        return self.store.platform_db[COLLECTION]

    async def record(self, tenant: str, scope: str, evolved: Mapping[str, set[str]], source: str,
                     declared: Mapping[str, str]) -> None:
        """Add the new fields and types of ``evolved`` to the scope's schema (each once);
        ``declared``: the contract's fields (a new type of one is ``type_added``)."""
        key = f"{tenant}:{scope}"
        for _ in range(_ATTEMPTS):
            doc = await self.collection.find_one({"_id": key})
            version = int(doc.get("version") or 0) if doc else 0
            known = {str(f["name"]): set(f.get("types") or []) for f in (doc or {}).get("fields", [])}
            changes = _changes(known, evolved, source, declared)
            if not changes:
                return
            new = {"_id": key, "tenant": tenant, "scope": scope, "version": version + 1,
                   "fields": [{"name": n, "types": sorted(t)} for n, t in sorted(known.items())],
                   "history": [*(doc or {}).get("history", []), *changes][-MAX_HISTORY:],
                   "updated_at": datetime.now(UTC)}
            if doc is None:
                try:
                    await self.collection.insert_one(new)
                    return
                except DuplicateKeyError:
                    continue  # another instance recorded first: read again
            result = await self.collection.replace_one({"_id": key, "version": version}, new)
            if result.matched_count:
                return

    async def get_schema(self, request: web.Request) -> web.Response:
        """Per scope: the contract, the current schema and its history."""
        tenant = request.match_info["id"]
        profile = require_tenant(request, tenant)
        try:
            stored = {doc["scope"]: doc async for doc in self.collection.find({"tenant": tenant})}
        except PyMongoError as exc:
            raise HttpError(503, "store_unavailable", "the platform's database cannot be reached; retry later "
                            f"({type(exc).__name__})") from None
        scopes = _declared(profile)
        for scope in stored:
            scopes.setdefault(scope, None)
        return json_response({"tenant": tenant, "scopes": [
            _scope_view(scope, contract, stored.get(scope)) for scope, contract in scopes.items()]})


def _changes(known: dict[str, set[str]], evolved: Mapping[str, set[str]], source: str,
             declared: Mapping[str, str]) -> list[dict[str, Any]]:
    """The history entries of what ``evolved`` adds to ``known`` (updated in place)."""
    at = datetime.now(UTC)
    changes: list[dict[str, Any]] = []
    for name, types in sorted(evolved.items()):
        if name not in known and len(known) >= MAX_FIELDS:
            continue
        for kind in sorted(types):
            if kind in known.get(name, set()):
                continue
            changes.append({"at": at, "field": name, "type": kind, "source": source[:300],
                               "change": "type_added" if name in known or name in declared else "added"})
            known.setdefault(name, set()).add(kind)
    return changes


def _declared(profile: TenantProfile) -> dict[str, Contract | None]:
    """The contracts of the tenant's profile by scope."""
    scopes: dict[str, Contract | None] = {}
    if profile.batch is not None:
        scopes["batch"] = profile.batch.contract
        for route in profile.batch.routes:
            if route.contract is not None:
                scopes[f"route:{route.pattern}"] = route.contract
    if profile.stream is not None:
        scopes["stream"] = profile.stream.contract
    return scopes


def _scope_view(scope: str, contract: Contract | None, stored: Mapping[str, Any] | None) -> dict[str, Any]:
    current = {name: [kind] for name, kind in (contract.fields.items() if contract else ())}
    for f in (stored or {}).get("fields", []):
        current.setdefault(str(f["name"]), [])
        current[str(f["name"])] = sorted({*current[str(f["name"])], *f.get("types", [])})
    return {"scope": scope, "contract": None if contract is None else contract.model_dump(),
            "current": current, "history": list((stored or {}).get("history", [])),
            "updated_at": (stored or {}).get("updated_at")}
