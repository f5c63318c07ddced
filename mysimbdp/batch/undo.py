"""Undoing a load: ``DELETE /tenants/{id}/files/{file_id}`` removes exactly the documents a
committed file wrote (and its rejects), marks its ledger entry ``undone`` with who asked and
when, and lets the same content be loaded again.

The documents of a file are those whose ``_id`` has the file's prefix ``<sha256[:20]>:``
(:func:`mysimbdp.batch.loader.id_prefix`), in any of the tenant's collections: the app's
target, and the documents a replay of the file's rejects wrote. They are removed in chunks
of :data:`CHUNK` (a large file never holds the store in one command), then the file's
rejects (``ledger_id``), then the entry moves ``undoing -> undone``.

The undo is a claim in the ledger like a load's (:meth:`Ledger.claim_undo`: owner, lease,
fencing token): the request answers ``202`` at once and the work runs in the background
under a renewed lease. A daemon killed mid-undo leaves the entry ``undoing``: at its next
start, or on any instance once the lease lapses, the undo is taken up again and finishes.
What there is to remove is counted once, when the undo begins, so the counts it ends with
are those of the file whatever crashed in between. Asking again is harmless: an ``undone``
entry answers ``200``, an ``undoing`` one ``202``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web
from pymongo.errors import PyMongoError

from mysimbdp.batch.ledger import Claim, FileState, Ledger
from mysimbdp.batch.loader import id_prefix
from mysimbdp.events import EventBus
from mysimbdp.events.catalog import BatchFileUndoFailed, BatchFileUndoing, BatchFileUndone
from mysimbdp.http.server import HttpError, is_admin, json_response, require_tenant
from mysimbdp.store.browse import TenantDatabases
from mysimbdp.store.rejects import REJECTS

__all__ = ["FileUndo", "CHUNK"]

#: Documents removed per delete command.
CHUNK = 5_000


def prefix_range(sha256: str) -> dict[str, Any]:
    """The ``_id`` range of the documents of the file with this sha256."""
    prefix = id_prefix(sha256)
    return {"_id": {"$gte": prefix, "$lt": prefix[:-1] + ";"}}


class FileUndo:
    """Daemon component ``undo``: the undo endpoint and the undos in progress (this instance's,
    and those another left behind)."""

    name = "undo"

    def __init__(self, *, store: TenantDatabases, ledger: Ledger, instance_id: str, lease_s: float,
                 bus: EventBus) -> None:
        self.store = store
        self.ledger = ledger
        self.instance_id = instance_id
        self.lease_s = lease_s
        self.events = bus.emitter("batch")
        self._running: dict[str, asyncio.Task[None]] = {}  # ledger id -> its undo
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take up the undos left ``undoing`` (a crash, another instance gone), now and every lease."""
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="undo.sweep")

    async def stop(self) -> None:
        """Stop every undo (each resumes at the next start, or on another instance after its lease)."""
        tasks = [t for t in (self._sweeper, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def health(self) -> dict[str, object]:
        """The undos this instance runs now."""
        return {"up": True, "undoing": len(self._running)}

    # -- HTTP ------------------------------------------------------------------------------
    async def undo_file(self, request: web.Request) -> web.Response:
        """``DELETE /tenants/{id}/files/{file_id}``: 202 while the undo runs, 200 once undone."""
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        who = "operator" if is_admin(request) else "tenant"
        file_id = request.match_info["ledger_id"]
        try:
            entry = await self.ledger.get(file_id, tenant=tenant)
            if entry is None:
                raise HttpError(404, "unknown_file", f"tenant {tenant!r} has no file with id {file_id!r}")
            state = entry.get("state")
            if state == FileState.UNDONE.value:
                return json_response(_answer(entry), status=200)
            if state not in (FileState.COMMITTED.value, FileState.UNDOING.value):
                raise HttpError(409, "not_committed", _not_undoable(str(state)), state=state)
            if state == FileState.UNDOING.value and file_id in self._running:
                # this instance undoes it now: claiming it again (its own entry) would take it
                # from the running undo, which would stop until the next sweep
                return json_response(_answer(entry), status=202)
            asked = {"undo_by": who} if state == FileState.COMMITTED.value else {}  # who asked first stays
            claim = await self.ledger.claim_undo(file_id, self.instance_id, self.lease_s, **asked)
        except PyMongoError as exc:
            raise HttpError(503, "store_unavailable", "the platform's database cannot be reached; retry later "
                            f"({type(exc).__name__})") from None
        if claim is not None:
            self._launch(claim)
            entry = claim.entry
        else:  # another instance undoes it now (or finished a moment ago)
            entry = await self.ledger.get(file_id, tenant=tenant) or entry
        done = entry.get("state") == FileState.UNDONE.value
        return json_response(_answer(entry), status=200 if done else 202)

    # -- the work --------------------------------------------------------------------------
    def _launch(self, claim: Claim) -> None:
        if claim.entry_id in self._running:
            return
        task = asyncio.create_task(self._undo(claim), name=f"undo:{claim.entry_id}")
        self._running[claim.entry_id] = task
        task.add_done_callback(lambda _: self._running.pop(claim.entry_id, None))

    async def _sweep_loop(self) -> None:
        while True:
            with contextlib.suppress(PyMongoError):
                for entry_id in await self.ledger.lapsed(FileState.UNDOING, self.instance_id):
                    if entry_id in self._running:
                        continue
                    claim = await self.ledger.claim_undo(entry_id, self.instance_id, self.lease_s)
                    if claim is not None:
                        self._launch(claim)
            await asyncio.sleep(max(1.0, self.lease_s / 2))

    async def _undo(self, claim: Claim) -> None:
        entry = claim.entry
        tenant, name, sha = str(entry["tenant"]), str(entry.get("name")), str(entry.get("sha256") or "")
        started = time.monotonic()
        try:
            counts = await self._counts(claim, tenant, sha)
            if counts is None:
                return
            documents, rejects = counts
            self.events.emit(BatchFileUndoing(tenant=tenant, file=name, ledger_id=claim.entry_id,
                                              by=str(entry.get("undo_by") or "tenant"), documents=documents,
                                              rejects=rejects, resumed=claim.resumed))
            db = self.store.tenant_db(tenant)
            for collection in sorted(await db.list_collection_names()):
                if sha and not collection.startswith(("_", "system.")):
                    if not await self._remove_documents(claim, db[collection], sha):
                        return
            await db[REJECTS].delete_many({"ledger_id": claim.entry_id})
            done = await self.ledger.finish_undo(claim, documents_removed=documents, rejects_removed=rejects)
            if done is None:
                raise _Lost()
            self.events.emit(BatchFileUndone(tenant=tenant, file=name, ledger_id=claim.entry_id,
                                             by=str(entry.get("undo_by") or "tenant"), documents=documents,
                                             rejects=rejects, seconds=round(time.monotonic() - started, 3)))
        except _Lost:
            self._failed(claim, "another instance took the undo over (this one was paused past its lease)")
        except PyMongoError as exc:
            self._failed(claim, str(exc)[:300])
            with contextlib.suppress(PyMongoError):
                await self.ledger.release(claim)

    async def _counts(self, claim: Claim, tenant: str, sha: str) -> tuple[int, int] | None:
        """What there is to remove, counted when the undo began (kept in the entry: a resumed undo
        reports the file's counts, not what the interrupted one left)."""
        entry = claim.entry
        if entry.get("undo_documents") is not None:
            return int(entry["undo_documents"]), int(entry.get("undo_rejects") or 0)
        db = self.store.tenant_db(tenant)
        documents = 0
        if sha:
            for collection in await db.list_collection_names():
                if not collection.startswith(("_", "system.")):
                    documents += await db[collection].count_documents(prefix_range(sha))
        rejects = await db[REJECTS].count_documents({"ledger_id": claim.entry_id})
        if not await self.ledger.update_held(claim, undo_documents=documents, undo_rejects=rejects):
            raise _Lost()
        return documents, rejects

    async def _remove_documents(self, claim: Claim, collection: Any, sha: str) -> bool:
        """Remove the file's documents from ``collection``, a chunk at a time, renewing the lease;
        False (nothing more done) once the claim is lost."""
        while True:
            ids = [d["_id"] async for d in collection.find(prefix_range(sha), {"_id": 1}).limit(CHUNK)]
            if not ids:
                return True
            await collection.delete_many({"_id": {"$in": ids}})
            if not await self.ledger.renew(claim, self.lease_s):
                raise _Lost()

    def _failed(self, claim: Claim, error: str) -> None:
        entry = claim.entry
        self.events.emit(BatchFileUndoFailed(tenant=str(entry["tenant"]), file=str(entry.get("name")),
                                             ledger_id=claim.entry_id, error=error))


class _Lost(Exception):
    """The undo's claim no longer holds the entry."""


def _not_undoable(state: str) -> str:
    if state in (FileState.STAGED.value, FileState.LOADING.value):
        return f"the file is {state}: only a committed file can be undone; ask again once it is committed"
    if state == FileState.REJECTED.value:
        return ("the file was rejected: it left no documents (its rejects are removed with "
                "'mysimbdp rejects purge --file <id>')")
    return f"the file is {state}: only a committed file can be undone"


def _answer(entry: dict[str, Any]) -> dict[str, Any]:
    """What the tenant is told of its entry (no instance names, no paths)."""
    keys = ("name", "state", "sha256", "records_written", "undo_by", "undoing_at", "undone_at",
            "undo_documents", "undo_rejects", "documents_removed", "rejects_removed")
    return {"id": entry.get("_id"), **{k: entry.get(k) for k in keys if k in entry}}
