"""The file ledger: one document per staged file in ``mysimbdp.files``.

States: ``staged -> loading -> committed | rejected``. The ledger is how exactly-once
loading survives a crash (a file left ``loading`` is resumed) and how duplicates are
refused (a sha256 already committed for the tenant).

Every timestamp (``staged_at``, ``loading_at``, ``committed_at``, ``rejected_at``) is a BSON
date in UTC: ``staged_at`` from the daemon's clock, the others from the store's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from mysimbdp.store.mongo import Store

__all__ = ["FileState", "Ledger"]

COLLECTION = "files"


class FileState(StrEnum):
    """Where a file is in its lifecycle."""

    STAGED = "staged"
    LOADING = "loading"
    COMMITTED = "committed"
    REJECTED = "rejected"


def _now() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """Reads and writes ledger entries; ids are strings (``uuid4`` hex)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def collection(self) -> Any:
        """``mysimbdp.files``."""
        return self.store.platform_db[COLLECTION]

    async def ensure_indexes(self) -> None:
        """Indexes for the look-ups below."""
        await self.collection.create_index([("tenant", ASCENDING), ("sha256", ASCENDING), ("state", ASCENDING)])
        await self.collection.create_index([("tenant", ASCENDING), ("name", ASCENDING), ("state", ASCENDING)])

    async def stage(self, tenant: str, name: str, sha256: str | None, size: int,
                    source: str = "staging", **extra: Any) -> str:
        """Record a new file as ``staged``; returns its ledger id."""
        entry_id = uuid.uuid4().hex
        await self.collection.insert_one({
            "_id": entry_id, "tenant": tenant, "name": name, "sha256": sha256, "bytes": size,
            "state": FileState.STAGED.value, "source": source, "staged_at": _now(), **extra,
        })
        return entry_id

    async def transition(self, entry_id: str, state: FileState, **fields: Any) -> dict[str, Any] | None:
        """Move an entry to ``state``, set ``fields`` (e.g. counts, reason, timings) and ``<state>_at``.

        ``<state>_at`` is the store's current time as a BSON date (``$currentDate``): the
        embedded store turns a date given in a top-level ``$set`` into a naive string.
        """
        return await self.collection.find_one_and_update(
            {"_id": entry_id},
            {"$set": {"state": state.value, **fields}, "$currentDate": {f"{state.value}_at": {"$type": "date"}}},
            return_document=ReturnDocument.AFTER)

    async def get(self, entry_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """One entry by id (restricted to ``tenant`` when given)."""
        query: dict[str, Any] = {"_id": entry_id}
        if tenant is not None:
            query["tenant"] = tenant
        return await self.collection.find_one(query)

    async def find(self, tenant: str, *, sha256: str | None = None, name: str | None = None,
                   states: list[FileState] | None = None) -> list[dict[str, Any]]:
        """Entries of ``tenant`` matching the given sha256, name and states, oldest first."""
        query: dict[str, Any] = {"tenant": tenant}
        if sha256 is not None:
            query["sha256"] = sha256
        if name is not None:
            query["name"] = name
        if states:
            query["state"] = {"$in": [s.value for s in states]}
        return [doc async for doc in self.collection.find(query).sort("staged_at", ASCENDING)]

    async def list(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        """The tenant's most recent entries, newest first."""
        cursor = self.collection.find({"tenant": tenant}).sort("staged_at", -1).limit(limit)
        return [doc async for doc in cursor]

    async def committed_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's committed files: the usage counted against its storage quota.

        A file counts its content's size, ``content_bytes`` (decompressed for ``.gz``: the
        batch manager records it at commit), or ``bytes`` for entries that lack it.
        """
        total = 0
        query = {"tenant": tenant, "state": FileState.COMMITTED.value}
        async for doc in self.collection.find(query, {"bytes": 1, "content_bytes": 1}):
            total += int(doc.get("content_bytes") or doc.get("bytes") or 0)
        return total
