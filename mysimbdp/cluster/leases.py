"""Named leases in ``mysimbdp.leases``: one holder at a time, taken over once it lapses.

A lease document is ``{_id: name, holder, until, version}``; ``until`` is seconds since the
epoch on the holder's clock. :meth:`Leases.hold` takes or renews a lease in one conditional
update (renew: ``holder`` is us; take over: ``until`` has passed; first: insert), so of two
instances asking at once exactly one holds it. ``version`` grows at each change of holder.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

__all__ = ["Leases", "PlatformDatabase", "COLLECTION"]

COLLECTION = "leases"


class PlatformDatabase(Protocol):
    """Where the platform keeps its own collections (:class:`mysimbdp.store.mongo.Store`)."""

    @property
    def platform_db(self) -> AsyncDatabase[dict[str, Any]]: ...


class Leases:
    """Takes, renews and releases named leases for one holder (this instance)."""

    def __init__(self, store: PlatformDatabase, holder: str, lease_s: float) -> None:
        self.store = store
        self.holder = holder
        self.lease_s = lease_s

    @property
    def collection(self) -> Any:
        """``mysimbdp.leases``."""
        return self.store.platform_db[COLLECTION]

    async def hold(self, name: str) -> bool:
        """Take or renew the lease ``name``; True if this instance holds it now."""
        now = time.time()
        until = now + self.lease_s
        col = self.collection
        renewed = await col.find_one_and_update(
            {"_id": name, "holder": self.holder}, {"$set": {"until": until}}, return_document=ReturnDocument.AFTER)
        if renewed is not None:
            return True
        taken = await col.find_one_and_update(
            {"_id": name, "until": {"$lt": now}},
            {"$set": {"holder": self.holder, "until": until, "since": now}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER)
        if taken is not None:
            return True
        try:
            await col.insert_one({"_id": name, "holder": self.holder, "until": until, "since": now, "version": 1})
        except DuplicateKeyError:
            return False  # someone else holds it (or took it a moment ago)
        return True

    async def release(self, name: str) -> None:
        """Give the lease up at once (if this instance holds it): another may take it now."""
        await self.collection.update_one({"_id": name, "holder": self.holder}, {"$set": {"until": 0.0}})

    async def release_all(self) -> int:
        """Give up every lease this instance holds (at shutdown); how many."""
        result = await self.collection.update_many({"holder": self.holder}, {"$set": {"until": 0.0}})
        return int(result.modified_count)

    async def holder_of(self, name: str) -> str | None:
        """Who holds ``name`` now (None when nobody does or it lapsed)."""
        doc = await self.collection.find_one({"_id": name})
        if doc is None or float(doc.get("until") or 0) < time.time():
            return None
        return str(doc.get("holder"))
