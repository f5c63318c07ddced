"""Undoing a load: ``DELETE /tenants/{id}/files/{file_id}`` removes exactly the documents a
committed file wrote (and its rejects), marks its ledger entry ``undone`` with who asked and
when, and lets the same content be loaded again.

The documents of a file are those whose ``_id`` has the file's prefix ``<sha256[:20]>:``
(:func:`mysimbdp.batch.loader.id_prefix`), in any of the tenant's collections: the app's
target, and the documents a replay of the file's rejects wrote. They are removed in chunks
of :data:`CHUNK` (a large file never holds the store in one command), then the file's
rejects (``ledger_id``), then the entry moves ``undoing -> undone``.

The request moves the entry ``committed -> undoing`` (:meth:`Ledger.request_undo`; not
while a replay of the file's rejects holds it: 409 ``replay_running``) and answers ``202``
at once. The work is a claim in the ledger like a load's (:meth:`Ledger.claim_undo`: owner,
lease, fencing token), taken by an instance with a free slot — at most :data:`MAX_UNDOS` at
once per instance, one per tenant, so that many undos share the store in turn — and run in
the background under a renewed lease. A daemon killed mid-undo leaves the entry
``undoing``: at its next start, or on any instance once the lease lapses, the undo is taken
up again and finishes. A file whose content another committed entry shares (the same
documents) is not undone (409 ``shared_content``).
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
from mysimbdp.batch.loader import id_range
from mysimbdp.events import EventBus
from mysimbdp.events.catalog import BatchFileUndoFailed, BatchFileUndoing, BatchFileUndone
from mysimbdp.http.server import HttpError, is_admin, json_response, require_tenant
from mysimbdp.store.browse import TenantDatabases
from mysimbdp.store.rejects import REJECTS

__all__ = ["FileUndo", "CHUNK", "MAX_UNDOS"]

#: Documents removed per delete command.
CHUNK = 5_000
#: Undos one instance runs at once (one per tenant); more wait, ``undoing``, for a free slot.
MAX_UNDOS = 2


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
        self._tenants: set[str] = set()  # tenants whose undo runs here
        self._wake = asyncio.Event()  # an undo was asked for, or one finished
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
        """``DELETE /tenants/{id}/files/{file_id}``: 202 while the undo waits or runs, 200 once undone."""
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        who = "operator" if is_admin(request) else "tenant"
        file_id = request.match_info["ledger_id"]
        try:
            entry = await self._request(tenant, file_id, who)
        except PyMongoError as exc:
            raise HttpError(503, "store_unavailable", "the platform's database cannot be reached; retry later "
                            f"({type(exc).__name__})") from None
        done = entry.get("state") == FileState.UNDONE.value
        if not done:
            self._wake.set()  # a free slot takes it at once
        return json_response(_answer(entry), status=200 if done else 202)

    async def _request(self, tenant: str, file_id: str, who: str) -> dict[str, Any]:
        """The entry once its undo is asked for (``undoing``), or as it is (``undoing``, ``undone``)."""
        entry = await self.ledger.get(file_id, tenant=tenant)
        if entry is None:
            raise HttpError(404, "unknown_file", f"tenant {tenant!r} has no file with id {file_id!r}")
        state = str(entry.get("state"))
        if state in (FileState.UNDONE.value, FileState.UNDOING.value):
            return entry
        if state != FileState.COMMITTED.value:
            raise HttpError(409, "not_committed", _not_undoable(state), state=state)
        twins = [d for d in await self.ledger.find(tenant, sha256=entry.get("sha256"),
                                                   states=[FileState.COMMITTED, FileState.UNDOING])
                 if d["_id"] != file_id]
        if twins:  # their documents have the same ids: removing one file's would remove the other's
            raise HttpError(409, "shared_content", f"file {twins[0]['_id']} holds the same content and the same "
                            "documents; undoing this one would remove that one's too. Ask an operator")
        moved = await self.ledger.request_undo(file_id, undo_by=who)
        if moved is not None:
            return moved
        entry = await self.ledger.get(file_id, tenant=tenant) or entry
        if entry.get("state") == FileState.COMMITTED.value:  # a replay of its rejects holds it
            raise HttpError(409, "replay_running", "a replay of this file's rejects is running; ask again once it "
                            "is done", headers={"Retry-After": "30"})
        return entry

    # -- the work --------------------------------------------------------------------------
    def _launch(self, claim: Claim) -> None:
        tenant = str(claim.entry["tenant"])
        task = asyncio.create_task(self._undo(claim), name=f"undo:{claim.entry_id}")
        self._running[claim.entry_id] = task
        self._tenants.add(tenant)

        def finished(_: asyncio.Task[None]) -> None:
            self._running.pop(claim.entry_id, None)
            self._tenants.discard(tenant)
            self._wake.set()  # the next undo waiting may begin
        task.add_done_callback(finished)

    async def _sweep_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._sweep()
            except PyMongoError:
                pass  # the store is away: the next round tries again
            except Exception as exc:  # a bug must not end the sweeps: every undo would wait for ever
                self.events.emit(BatchFileUndoFailed(tenant="", file="", ledger_id="", error=str(exc)[:300]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(1.0, self.lease_s / 2))

    async def _sweep(self) -> None:
        """Claim ``undoing`` entries no instance works on, while this one has a free slot (at most
        :data:`MAX_UNDOS`, one per tenant: the undos of many files share the store in turn)."""
        for found in await self.ledger.lapsed(FileState.UNDOING, self.instance_id):
            if len(self._running) >= MAX_UNDOS:
                return
            if found["_id"] in self._running or found.get("tenant") in self._tenants:
                continue
            claim = await self.ledger.claim_undo(str(found["_id"]), self.instance_id, self.lease_s)
            if claim is not None:
                self._launch(claim)

    async def _undo(self, claim: Claim) -> None:
        entry = claim.entry
        tenant, name, sha = str(entry["tenant"]), str(entry.get("name")), str(entry.get("sha256") or "")
        started = time.monotonic()
        resumed = entry.get("undo_documents") is not None  # counted by an undo that was interrupted
        try:
            counts = await self._counts(claim, tenant, sha)
            if counts is None:
                return
            documents, rejects = counts
            self.events.emit(BatchFileUndoing(tenant=tenant, file=name, ledger_id=claim.entry_id,
                                              by=str(entry.get("undo_by") or "tenant"), documents=documents,
                                              rejects=rejects, resumed=resumed))
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
                    documents += await db[collection].count_documents(id_range(sha))
        rejects = await db[REJECTS].count_documents({"ledger_id": claim.entry_id})
        if not await self.ledger.update_held(claim, undo_documents=documents, undo_rejects=rejects):
            raise _Lost()
        return documents, rejects

    async def _remove_documents(self, claim: Claim, collection: Any, sha: str) -> bool:
        """Remove the file's documents from ``collection``, a chunk at a time, renewing the lease;
        False (nothing more done) once the claim is lost."""
        while True:
            ids = [d["_id"] async for d in collection.find(id_range(sha), {"_id": 1}).limit(CHUNK)]
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
