"""The file ledger: one document per staged file in ``mysimbdp.files``, and the one place
that moves a file from state to state.

States: ``staged -> loading -> committed | rejected`` (and ``staged -> rejected`` for a
file refused at admission), then ``committed -> undoing -> undone`` when the tenant undoes
a load (:mod:`mysimbdp.batch.undo`). The ledger is how exactly-once loading survives a crash (a file
left ``loading`` is resumed) and how duplicates are refused (a sha256 already committed for
the tenant). Several daemons may share it: every transition is one conditional update on
the state it expects (``find_one_and_update``), so of two instances trying the same
transition exactly one wins, and the others only propose:

* :meth:`Ledger.claim` ``staged -> loading`` (or takes over a ``loading`` file whose lease
  lapsed, or that this instance itself left): sets ``owner``, ``lease_until`` (seconds since
  the epoch, the claimer's clock) and increments ``lease``, the fencing token;
* :meth:`Ledger.renew` keeps the lease while the file loads;
* :meth:`Ledger.settle` ``loading -> committed | rejected``, only with the token the claim
  gave: a daemon paused past its lease (the file taken over meanwhile) cannot settle;
* :meth:`Ledger.reject_staged` ``staged -> rejected`` at admission;
* :meth:`Ledger.release` gives a claim up at once (shutdown, cluster-wide limit);
* :meth:`Ledger.request_undo` ``committed -> undoing``, unclaimed (not while a replay of the
  file's rejects holds the entry, :meth:`Ledger.hold_for_replay`); :meth:`Ledger.claim_undo`
  takes an ``undoing`` entry whose lease lapsed (or that this instance left) to do the undo,
  with the same owner, lease and fencing token as a load's claim;
* :meth:`Ledger.finish_undo` ``undoing -> undone``, only while that claim holds.

Every timestamp (``staged_at``, ``loading_at``, ``committed_at``, ``rejected_at``) is a BSON
date in UTC: ``staged_at`` from the daemon's clock, the others from the store's.
"""

from __future__ import annotations

import builtins
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from mysimbdp.store.mongo import Store

__all__ = ["FileState", "Ledger", "Claim"]

COLLECTION = "files"


class FileState(StrEnum):
    """Where a file is in its lifecycle."""

    STAGED = "staged"
    LOADING = "loading"
    COMMITTED = "committed"
    REJECTED = "rejected"
    UNDOING = "undoing"
    UNDONE = "undone"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """This instance's hold on a ``loading`` entry: ``lease`` is the fencing token every later
    transition of the entry is conditional on."""

    entry_id: str
    owner: str
    lease: int
    resumed: bool  # the entry was ``loading`` already (a crash, a lapsed lease, a handover)
    entry: dict[str, Any]
    state: str = FileState.LOADING.value  # the state the claim holds the entry in

    @property
    def held(self) -> dict[str, Any]:
        """The query that matches the entry only while this claim holds it."""
        return {"_id": self.entry_id, "state": self.state, "owner": self.owner, "lease": self.lease}


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

    async def stage_once(self, entry_id: str, tenant: str, name: str, sha256: str | None, size: int,
                         source: str = "staging", **extra: Any) -> dict[str, Any]:
        """Record the file as ``staged`` under ``entry_id`` unless an instance did already; the entry."""
        doc = {"_id": entry_id, "tenant": tenant, "name": name, "sha256": sha256, "bytes": size,
               "state": FileState.STAGED.value, "source": source, "staged_at": _now(), **extra}
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError:
            found = await self.collection.find_one({"_id": entry_id})
            return found if found is not None else doc
        return doc

    async def claim(self, entry_id: str, owner: str, lease_s: float, **fields: Any) -> Claim | None:
        """``staged -> loading`` for ``owner``, or take over a ``loading`` entry whose lease lapsed,
        that has none (left by a daemon of an earlier version) or that ``owner`` left itself (a
        restart). None when the entry is in another state or another instance's live claim.
        ``fields`` (app, route, format) are set with it; ``attempts`` counts the claims.

        Each case is its own conditional update: an ``$or`` of them would be one, but the
        embedded store ignores the other conditions of a query beside an ``$or``."""
        now = time.time()
        update = {"$set": {"state": FileState.LOADING.value, "owner": owner, "lease_until": now + lease_s,
                           "claimed_epoch": now, **fields},
                  "$inc": {"lease": 1, "attempts": 1}, "$currentDate": {"loading_at": {"$type": "date"}}}
        return await self._take(entry_id, [{"state": FileState.STAGED.value}], FileState.LOADING, owner, now, update)

    async def request_undo(self, entry_id: str, **fields: Any) -> dict[str, Any] | None:
        """``committed -> undoing`` unclaimed (a lapsed lease: the first instance with a free undo
        slot claims it, :meth:`claim_undo`), with ``fields`` (who asked). Not while a replay of the
        file's rejects holds it (``replay_until``). The entry after, or None if not moved."""
        now = time.time()
        update = {"$set": {"state": FileState.UNDOING.value, "lease_until": 0.0, **fields},
                  "$currentDate": {"undoing_at": {"$type": "date"}}}
        for free in ({"replay_until": None}, {"replay_until": {"$lt": now}}):
            doc = await self.collection.find_one_and_update(
                {"_id": entry_id, "state": FileState.COMMITTED.value, **free}, update,
                return_document=ReturnDocument.AFTER)
            if doc is not None:
                return doc
        return None

    async def hold_for_replay(self, entry_id: str, seconds: float) -> bool:
        """Keep an undo from beginning on the committed entry for ``seconds`` (a replay writes
        into the file's ``_id`` range); False if the entry is not committed."""
        result = await self.collection.update_one({"_id": entry_id, "state": FileState.COMMITTED.value},
                                                  {"$set": {"replay_until": time.time() + seconds}})
        return bool(result.matched_count)

    async def release_replay_hold(self, entry_id: str) -> None:
        """The replay is done: an undo may begin."""
        await self.collection.update_one({"_id": entry_id}, {"$set": {"replay_until": 0.0}})

    async def claim_undo(self, entry_id: str, owner: str, lease_s: float) -> Claim | None:
        """Claim an ``undoing`` entry (:meth:`request_undo`) whose lease lapsed or that ``owner``
        left, to do the undo; None otherwise."""
        now = time.time()
        update = {"$set": {"owner": owner, "lease_until": now + lease_s, "claimed_epoch": now}, "$inc": {"lease": 1}}
        return await self._take(entry_id, [], FileState.UNDOING, owner, now, update)

    async def _take(self, entry_id: str, fresh: list[dict[str, Any]], state: FileState, owner: str, now: float,
                    update: dict[str, Any]) -> Claim | None:
        """Apply ``update`` to the entry if it is in ``fresh``, or in ``state`` held by ``owner``
        or under a lapsed lease: each case is its own conditional update (an ``$or`` of them
        would be one, but the embedded store ignores the other conditions of a query beside an ``$or``)."""
        held = state.value
        cases: list[tuple[dict[str, Any], bool]] = [
            *((condition, False) for condition in fresh),
            ({"state": held, "owner": owner}, True),
            ({"state": held, "lease_until": {"$lt": now}}, True),
            ({"state": held, "lease_until": None}, True),
        ]
        for condition, resumed in cases:
            doc = await self.collection.find_one_and_update({"_id": entry_id, **condition}, update,
                                                            return_document=ReturnDocument.AFTER)
            if doc is not None:
                return Claim(entry_id, owner, int(doc["lease"]), resumed, doc, held)
        return None

    async def finish_undo(self, claim: Claim, **fields: Any) -> dict[str, Any] | None:
        """``undoing -> undone`` with ``fields`` (what was removed), only while ``claim`` holds."""
        return await self.collection.find_one_and_update(
            claim.held, _to(FileState.UNDONE, {**fields, "lease_until": 0.0}), return_document=ReturnDocument.AFTER)

    async def update_held(self, claim: Claim, **fields: Any) -> bool:
        """Set ``fields`` on the entry while ``claim`` holds it; False if it no longer does."""
        result = await self.collection.update_one(claim.held, {"$set": fields})
        return bool(result.matched_count)

    async def lapsed(self, state: FileState, owner: str) -> list[dict[str, Any]]:
        """The entries in ``state`` (any tenant; ``_id`` and ``tenant``) whose lease lapsed or that
        ``owner`` holds, oldest first."""
        now = time.time()
        found: dict[str, dict[str, Any]] = {}
        for condition in ({"owner": owner}, {"lease_until": {"$lt": now}}, {"lease_until": None}):
            async for doc in self.collection.find({"state": state.value, **condition},
                                                  {"tenant": 1, "staged_at": 1}):
                found[str(doc["_id"])] = doc
        return sorted(found.values(), key=lambda d: (str(d.get("staged_at") or ""), str(d["_id"])))

    async def renew(self, claim: Claim, lease_s: float) -> bool:
        """Extend the claim's lease; False if it no longer holds the entry (taken over, settled)."""
        result = await self.collection.update_one(claim.held, {"$set": {"lease_until": time.time() + lease_s}})
        return bool(result.matched_count)

    async def settle(self, claim: Claim, state: FileState, **fields: Any) -> dict[str, Any] | None:
        """``loading -> committed | rejected`` with ``fields`` (counts, reason, archive path) and
        ``<state>_at`` (the store's time), only while ``claim`` holds the entry; else None."""
        if state not in (FileState.COMMITTED, FileState.REJECTED):
            raise ValueError(f"a claim settles as committed or rejected, not {state}")
        return await self.collection.find_one_and_update(
            claim.held, _to(state, {**fields, "lease_until": 0.0}), return_document=ReturnDocument.AFTER)

    async def reject_staged(self, entry_id: str, **fields: Any) -> dict[str, Any] | None:
        """``staged -> rejected`` (refused at admission, or an upload that failed); None if the
        entry was no longer ``staged`` (another instance claimed or rejected it)."""
        return await self.collection.find_one_and_update(
            {"_id": entry_id, "state": FileState.STAGED.value}, _to(FileState.REJECTED, fields),
            return_document=ReturnDocument.AFTER)

    async def release(self, claim: Claim, restage: bool = False) -> bool:
        """Give the claim up at once, so any instance may claim the entry now. It stays
        ``loading`` (its documents may be partly written: it resumes) with a lapsed lease; with
        ``restage``, for a claim that loaded nothing, it is ``staged`` again. False if not held."""
        if restage:
            update = {"$set": {"state": FileState.STAGED.value, "lease_until": 0.0}, "$inc": {"attempts": -1}}
        else:
            update = {"$set": {"lease_until": 0.0}}
        result = await self.collection.update_one(claim.held, update)
        return bool(result.matched_count)

    async def add_replayed(self, entry_id: str, documents: int) -> None:
        """Count documents a replay of the file's rejects wrote (``records_replayed``)."""
        await self.collection.update_one({"_id": entry_id, "state": FileState.COMMITTED.value},
                                         {"$inc": {"records_replayed": documents}})

    async def set_archive_path(self, entry_id: str, path: str) -> None:
        """Where the file was archived, when another name than the one settled with was free."""
        await self.collection.update_one({"_id": entry_id}, {"$set": {"archive_path": path}})

    async def owner_of(self, entry_id: str) -> str | None:
        """The instance that holds ``entry_id`` now (None when it is not ``loading`` or the lease lapsed)."""
        doc = await self.collection.find_one({"_id": entry_id}, {"state": 1, "owner": 1, "lease_until": 1})
        if doc is None or doc.get("state") != FileState.LOADING.value:
            return None
        if float(doc.get("lease_until") or 0) < time.time():
            return None
        return str(doc.get("owner")) if doc.get("owner") else None

    async def live_claims(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's files ``loading`` under a live lease (any instance), first claimed first."""
        query = {"tenant": tenant, "state": FileState.LOADING.value, "lease_until": {"$gt": time.time()}}
        cursor = self.collection.find(query, {"owner": 1, "bytes": 1, "claimed_epoch": 1, "sha256": 1, "name": 1})
        docs = [doc async for doc in cursor]
        return sorted(docs, key=lambda d: (float(d.get("claimed_epoch") or 0), str(d["_id"])))

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

    async def last_committed(self, tenant: str, count: int = 1) -> builtins.list[dict[str, Any]]:
        """The tenant's ``count`` most recently committed entries, newest first."""
        cursor = self.collection.find({"tenant": tenant, "state": FileState.COMMITTED.value}).sort(
            "committed_at", -1).limit(count)
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


def _to(state: FileState, fields: dict[str, Any]) -> dict[str, Any]:
    """The update that moves an entry to ``state`` (``settled_epoch``: seconds since the epoch, the
    settling instance's clock). ``<state>_at`` is the store's current time as a BSON date (``$currentDate``): the embedded store turns a date given in a top-level
    ``$set`` into a naive string."""
    return {"$set": {"state": state.value, "settled_epoch": time.time(), **fields},
            "$currentDate": {f"{state.value}_at": {"$type": "date"}}}
