"""The batch manager: the daemon component that turns staged files into documents.

For each file the watcher hands over: check it against the tenant's profile (before any
parsing), record it in the ledger, wait for a fair slot, load it with the tenant's app,
then archive it (``<var>/archive/<tenant>/done/`` or ``rejected/`` with a reason file) and
log ``batch.file.committed`` or ``batch.file.rejected``. Nothing is deleted.

The file is opened once, at admission (:class:`~mysimbdp.batch.staged.StagedFile`): the
hash, the sniff, the load and the archive all use that descriptor, never the name, which
the tenant may have replaced meanwhile. A file whose content changed while it loaded is
rejected (``changed``); a file put in its place stays in staging as a new file.

A file left ``loading`` by a crash is still in the staging folder: at the next start the
watcher hands it over again, the manager finds its ``loading`` ledger entry (same tenant,
name and sha256) and resumes it; deterministic ``_id``s make the second pass write only
the records the first one did not.

Several daemons may watch one staging folder. The watcher and the upload endpoint only
propose; the ledger decides (:mod:`mysimbdp.batch.ledger`): a file is staged under an id
made from what every instance sees of it (tenant, name, inode, size, modification time),
so all of them propose the same entry, and the one whose claim (``staged -> loading``) wins
loads it. The claim's lease is renewed while the file loads; every later step that writes
the ledger, rolls documents back or archives the file first checks the claim still holds
(its fencing token), so an instance paused past its lease leaves the file to the one that
took it over (``batch.file.lease_lost``). A file whose owner died is resumed by any
instance once the lease lapses; at shutdown the claims are given up at once. A tenant's
``max_concurrent_files`` and ``max_staged_files`` count every instance's live claims.

It is handed what it uses: the ``[batch]`` settings and folders, the store, the ledger, the
app runners, the tenants, the daemon's stop event, the event bus and the schema history
(where an ``evolve`` contract records the fields it accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import hashlib
import os
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import structlog
from pymongo.errors import PyMongoError

from mysimbdp.apps.runner import AppRef, Runners
from mysimbdp.batch.constraints import Usage, check_file, check_name
from mysimbdp.batch.ledger import Claim, FileState, Ledger
from mysimbdp.batch.loader import Counts, FileJob, FileLoader
from mysimbdp.batch.readers import sniff, use_lean_memory_pool
from mysimbdp.batch.scheduler import FairScheduler
from mysimbdp.batch.staged import StagedFile, rename_noreplace, take_name
from mysimbdp.batch.watcher import StagingWatcher
from mysimbdp.config import BatchSettings, ClusterSettings
from mysimbdp.errors import FileRejected, PluginError
from mysimbdp.events import Emitter, EventBus
from mysimbdp.events.catalog import (
    BatchDrainCancelled,
    BatchFileArchivedLate,
    BatchFileClaimedElsewhere,
    BatchFileCommitted,
    BatchFileDeferred,
    BatchFileFailed,
    BatchFileInterrupted,
    BatchFileLeaseLost,
    BatchFileLoading,
    BatchFileRejected,
    BatchFileReplaced,
    BatchFileResumed,
    BatchFileRollbackFailed,
    BatchFileThrottled,
    BatchTenantUnwatched,
    BatchTenantWatching,
)
from mysimbdp.store.mongo import Store
from mysimbdp.store.schemas import SchemaRecorder
from mysimbdp.tenants import FORMATS, BatchProfile, BatchRoute, TenantChange, TenantDirectory

__all__ = ["BatchManager", "route_for", "entry_id_of"]

#: How long a file waits before it tries again when its tenant loads ``max_concurrent_files``
#: files across the instances.
THROTTLE_WAIT_S = 1.0
_RELEASE_TIMEOUT_S = 5.0



def route_for(profile: BatchProfile, name: str) -> BatchRoute | None:
    """The first route whose glob ``pattern`` matches ``name``, or None for the default app."""
    for route in profile.routes:
        if fnmatch.fnmatchcase(name, route.pattern):
            return route
    return None


def entry_id_of(tenant: str, name: str, st: os.stat_result, after: str = "") -> str:
    """The ledger id of a file found in staging: what every instance watching the folder sees
    of it (tenant, name, inode, size, modification time), so that they all propose one entry.
    ``after``: the id of an undone entry of the same file, which a new load must not reuse."""
    key = f"{tenant}\0{name}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}" + (f"\0{after}" if after else "")
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class BatchManager:
    """Daemon component ``batch``: watcher, scheduler, loader and the file lifecycle."""

    name = "batch"

    def __init__(self, *, settings: BatchSettings, staging_dir: Path, archive_dir: Path, store: Store,
                 ledger: Ledger, runners: Runners, tenants: TenantDirectory, stop_event: asyncio.Event,
                 bus: EventBus, instance_id: str = "local", cluster: ClusterSettings | None = None,
                 schemas: SchemaRecorder | None = None) -> None:
        self.settings = settings
        self.schemas = schemas
        self.instance_id = instance_id
        self.cluster = cluster or ClusterSettings()
        self.staging_dir = staging_dir
        self.archive_dir = archive_dir
        self.store = store
        self.ledger = ledger
        self.runners = runners
        self.tenants = tenants
        self.events = bus.emitter("batch")
        self.scheduler = FairScheduler(settings.max_concurrent_files)
        self.watcher = StagingWatcher(staging_dir, settings.stable_after_s, settings.rescan_interval_s,
                                      stop_event, self._on_file, self.events)
        self._executor: ThreadPoolExecutor | None = None
        self._loader: FileLoader | None = None
        self._inflight: dict[str, dict[str, tuple[int, str]]] = {}  # tenant -> name -> (bytes, sha256)
        self._loading: dict[str, str] = {}  # ledger id -> "tenant/name"
        self._claims: dict[str, tuple[Claim, asyncio.Task[Any]]] = {}  # ledger id -> claim, its load
        self._lost: set[str] = set()  # ledger ids whose claim another instance took over
        self._settling: set[str] = set()  # ledger ids this instance commits or rejects: not renewed
        self._renewer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self.arrow_memory_pool = ""  # the allocator Arrow uses, chosen at start

    # -- component -------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to tenant changes and begin watching (tenants arrive from the registry)."""
        batch = self.settings
        self.arrow_memory_pool = use_lean_memory_pool()
        self._executor = ThreadPoolExecutor(max_workers=batch.max_concurrent_files + 1, thread_name_prefix="batch")
        self._loader = FileLoader(self.store, self.runners, batch.write_batch_size,
                                  batch.progress_interval_s, events=self.events,
                                  retry_deadline_s=batch.write_retry_deadline_s, schemas=self.schemas)
        self._accepting = True
        if self.store.up:  # else not waited for now: the store may come up later; indexes are an optimisation
            with contextlib.suppress(PyMongoError):
                await self.ledger.ensure_indexes()
        self.tenants.add_listener(self._on_tenant)
        await self.watcher.start()
        self._renewer = asyncio.create_task(self._renew_loop(), name="batch.renew")

    async def drain(self, timeout: float) -> None:
        """Stop taking files; wait up to ``timeout`` for loads, then cancel them (resumed at next start)."""
        self._accepting = False
        await self.watcher.stop()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            if pending:
                self.events.emit(BatchDrainCancelled(files=sorted(self._loading.values()), count=len(pending)))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def stop(self) -> None:
        """Stop everything; loads still running are cancelled (their files resume at next start)."""
        self._accepting = False
        await self.watcher.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, object]:
        """Watched tenants, files loading and waiting for a slot."""
        return {"up": True, "tenants": sorted(self.watcher.tenants), "loading": sorted(self._loading.values()),
                "waiting": self.scheduler.waiting, "instance": self.instance_id}

    def loading(self) -> list[str]:
        """``tenant/name`` of the files this instance loads now."""
        return sorted(self._loading.values())

    async def usage(self, tenant: str) -> Usage:
        """Files waiting in the tenant's staging folder (not hidden or ``.part``, as of the
        watcher's last scan: the folder is never walked here) and committed bytes."""
        return Usage(staged_files=self.watcher.waiting(tenant),
                     used_bytes=await self.ledger.committed_bytes(tenant))

    async def _on_tenant(self, change: TenantChange) -> None:
        if change.new is not None and change.new.batch is not None:
            if change.tenant not in self.watcher.tenants:
                self.events.emit(BatchTenantWatching(tenant=change.tenant,
                                                     folder=str(self.watcher.folder(change.tenant))))
            self.watcher.watch(change.tenant)
        elif change.tenant in self.watcher.tenants:
            self.watcher.unwatch(change.tenant)
            self.events.emit(BatchTenantUnwatched(tenant=change.tenant))

    def _app_ref(self, tenant: str, name: str) -> AppRef:
        """The app by name (checked to be installed, not imported) and the tenant's runner."""
        self.runners.check(name)
        tenant_profile = self.tenants.get(tenant)
        return AppRef(name, tenant_profile.runner if tenant_profile is not None else "process")

    def _profile(self, tenant: str) -> BatchProfile | None:
        profile = self.tenants.get(tenant)
        return profile.batch if profile is not None else None

    # -- claiming a file -------------------------------------------------------------------
    async def _on_file(self, tenant: str, path: Path, st: os.stat_result) -> None:
        profile = self._profile(tenant)
        if profile is None or not self._accepting:
            self.watcher.release(tenant, path.name)
            return
        with structlog.contextvars.bound_contextvars(tenant=tenant, file=path.name):
            job_or_none = await self._admit(tenant, path, st, profile)
        if job_or_none is None:
            self.watcher.release(tenant, path.name)
            return
        job, route = job_or_none
        task = asyncio.create_task(self._run(job, profile, route), name=f"batch.file:{tenant}/{path.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit(self, tenant: str, path: Path, st: os.stat_result,
                     profile: BatchProfile) -> tuple[FileJob, BatchRoute | None] | None:
        """Check the file and stage it in the ledger; None if it was rejected (and archived).

        A file resumed after a crash (its ledger entry is ``loading``: same name, size and
        sha256) was admitted already: the profile's admission constraints (format, size,
        staged files, quota) are not checked again, whatever was edited meanwhile; were it
        refused for another reason (its app is gone, say), its partial documents are removed.
        """
        ledger, name, size = self.ledger, path.name, st.st_size
        loop = asyncio.get_running_loop()
        entry_id: str | None = None
        sha: str | None = None
        resumed = False
        staged: StagedFile | None = None
        try:
            candidates = await ledger.find(tenant, name=name, states=[FileState.STAGED, FileState.LOADING])
            entry = next((c for c in candidates if c.get("bytes") == size), None)
            if entry is not None and self._held_elsewhere(entry):
                return None  # another instance loads it; looked at again once its lease lapses
            entry_id = entry["_id"] if entry else None
            if not stat.S_ISREG(st.st_mode):
                raise FileRejected("not_regular", "not a regular file (symbolic links, FIFOs and devices are not "
                                   "followed or read); copy the file itself into the staging folder")
            check_name(name)
            # opened once, off the event loop, never following a link, never blocking on a FIFO
            try:
                staged = await loop.run_in_executor(self._executor, StagedFile.open, path, st)
            except FileRejected as exc:
                if exc.code == "not_regular":
                    return None  # replaced since the watcher looked: the next scan judges what is there
                raise
            if staged is None:
                return None  # gone or changed since the watcher looked: the next scan sees it again
            inflight = self._inflight.setdefault(tenant, {})
            resumable = _resumable_format(entry)
            # constraints first: a file too big is refused without being read
            fmt = resumable or await self._check_constraints(tenant, profile, name, size)
            if resumable is None and any(d.get("bytes") == size for d in
                                         await ledger.find(tenant, states=[FileState.UNDOING])):
                # perhaps the content being undone: it waits, and is not hashed again at every scan
                raise FileRejected("undoing", "a file of this size is being undone; it loads once that is done")
            sha = await loop.run_in_executor(self._executor, staged.sha256)
            if entry is not None and entry.get("sha256") not in (None, sha):
                if resumable is not None:  # not the file that was loading: a new one
                    fmt = await self._check_constraints(tenant, profile, name, size)
                entry, entry_id, resumable = None, None, None  # same name, other content: not that entry
            resumed = resumable is not None
            await self._refuse_duplicate(tenant, name, path, staged, sha)
            await loop.run_in_executor(self._executor, sniff, staged, fmt)
            route = route_for(profile, name)
            app = self._app_ref(tenant, route.app if route else profile.app)
        except PluginError as exc:
            await self._reject(tenant, path, size, sha, entry_id, FileRejected("no_app", str(exc)), purge=resumed,
                               staged=staged, seen=st)
            _close(staged)
            return None
        except FileRejected as exc:
            if exc.code == "hard_link" and await self._archived_late(tenant, path, st):
                return None
            if exc.code == "undoing":
                _close(staged)
                return None  # the same content is being undone: looked at again once it is undone
            if exc.code != "archived":
                # a duplicate's documents are those of the copy loading or committed: never remove them
                await self._reject(tenant, path, size, sha, entry_id, exc, purge=resumed and exc.code != "duplicate",
                                   staged=staged, seen=st)
            _close(staged)
            return None
        except BaseException:
            _close(staged)
            raise
        try:
            if entry_id is None:
                entry_id = entry_id_of(tenant, name, st)
                staged_entry = await ledger.stage_once(entry_id, tenant, name, sha, size, source="staging")
                while staged_entry.get("state") == FileState.UNDONE.value:
                    # the very file a tenant loaded, undid and put back: a new entry, the same on every instance
                    entry_id = entry_id_of(tenant, name, st, after=entry_id)
                    staged_entry = await ledger.stage_once(entry_id, tenant, name, sha, size, source="staging")
                if staged_entry.get("state") in (FileState.COMMITTED.value, FileState.REJECTED.value):
                    _close(staged)  # another instance finished it since this one looked
                    return None
        except BaseException:
            _close(staged)
            raise
        inflight[name] = (size, sha)
        scope, contract = profile.contract_of(route)
        return FileJob(tenant, name, path, entry_id, sha, size, fmt, app, profile.max_file_bytes,
                       profile.max_error_rate, route.pattern if route else None, staged=staged,
                       contract=contract, contract_scope=scope), route

    async def _check_constraints(self, tenant: str, profile: BatchProfile, name: str, size: int) -> str:
        """The profile's admission constraints (:func:`check_file`) against what the tenant has now,
        on every instance: this one's files in flight and the other instances' live claims."""
        inflight = self._inflight.setdefault(tenant, {})
        files, elsewhere = await self._elsewhere(tenant)
        used = await self.ledger.committed_bytes(tenant) + sum(b for b, _ in inflight.values()) + elsewhere
        return check_file(profile, name, size, Usage(staged_files=len(inflight) + files, used_bytes=used))

    async def _elsewhere(self, tenant: str) -> tuple[int, int]:
        """Files and bytes of the tenant that other instances load now (their live claims)."""
        others = [d for d in await self.ledger.live_claims(tenant) if d.get("owner") != self.instance_id]
        return len(others), sum(int(d.get("bytes") or 0) for d in others)

    def _held_elsewhere(self, entry: dict[str, Any]) -> bool:
        """Whether another instance's live claim holds the entry."""
        return (entry.get("state") == FileState.LOADING.value and entry.get("owner") not in (None, self.instance_id)
                and float(entry.get("lease_until") or 0) > time.time())

    async def _refuse_duplicate(self, tenant: str, name: str, path: Path, staged: StagedFile, sha: str) -> None:
        loading_elsewhere = any(d.get("sha256") == sha and d.get("owner") != self.instance_id and d.get("name") != name
                                for d in await self.ledger.live_claims(tenant))
        if loading_elsewhere or any(s == sha for _, s in self._inflight.get(tenant, {}).values()):
            raise FileRejected("duplicate", "a file with the same content is loading right now", sha256=sha)
        # one read of both states: an undo that begins between two reads must not let the copy through
        found = await self.ledger.find(tenant, sha256=sha, states=[FileState.COMMITTED, FileState.UNDOING])
        if any(d.get("state") == FileState.UNDOING.value for d in found):
            raise FileRejected("undoing", "the same content is being undone; it loads once the undo is done")
        for done in found:
            archived = done.get("archive_path")
            if (done.get("name") == name and archived and self._may_finish_archiving(done)
                    and not await asyncio.to_thread(os.path.lexists, archived)):
                # committed, then the daemon died before archiving the file: finish the archiving
                await asyncio.to_thread(_archive_staged, staged, path, Path(archived), self.events)
                self.events.emit(BatchFileArchivedLate(tenant=tenant, file=name, ledger_id=done["_id"]))
                raise FileRejected("archived", "already committed")
            if done.get("name") == name and archived and not self._may_finish_archiving(done):
                raise FileRejected("archived", "committed by another instance a moment ago: it archives the file")
            raise FileRejected("duplicate", f"the same content (sha256 {sha[:12]}…) was already committed as "
                               f"{done.get('name')!r}; it is not loaded twice", sha256=sha, ledger_id=done["_id"])

    def _may_finish_archiving(self, done: dict[str, Any]) -> bool:
        """Whether this instance may archive a file another committed: it committed it itself (or a
        daemon of an earlier version did), or the committer had a whole lease to archive it."""
        if done.get("owner") in (None, self.instance_id):
            return True
        return time.time() - float(done.get("settled_epoch") or 0) > self.cluster.lease_s

    async def _archived_late(self, tenant: str, path: Path, st: os.stat_result) -> bool:
        """A second name of a file that is this tenant's archived ``path.name`` (the daemon died
        between linking it into the archive and removing its staging name): remove the name."""
        for done in await self.ledger.find(tenant, name=path.name,
                                                  states=[FileState.COMMITTED, FileState.REJECTED]):
            archived = done.get("archive_path")
            try:
                ast = await asyncio.to_thread(os.lstat, archived) if archived else None
            except OSError:
                continue
            if ast is not None and (ast.st_dev, ast.st_ino) == (st.st_dev, st.st_ino):
                await asyncio.to_thread(take_name, path, (st.st_dev, st.st_ino), unlink=True)
                self.events.emit(BatchFileArchivedLate(tenant=tenant, file=path.name, ledger_id=done["_id"]))
                return True
        return False

    async def _quota_left(self, tenant: str, profile: BatchProfile, name: str) -> int:
        """Decompressed bytes the storage quota leaves for ``name``: the quota less the committed
        bytes and the (compressed) sizes of the tenant's other files in flight."""
        others = sum(b for n, (b, _) in self._inflight.get(tenant, {}).items() if n != name)
        others += (await self._elsewhere(tenant))[1]
        return max(0, profile.storage_quota_bytes - await self.ledger.committed_bytes(tenant) - others)

    # -- loading ---------------------------------------------------------------------------
    async def _run(self, job: FileJob, profile: BatchProfile, route: BatchRoute | None) -> None:
        with structlog.contextvars.bound_contextvars(tenant=job.tenant, file=job.name, ledger_id=job.ledger_id):
            try:
                await self._run_bound(job, profile, route)
            except asyncio.CancelledError:
                if job.ledger_id in self._lost:
                    return  # the renewal found the file taken over and stopped the load (logged there)
                if self._claim_of(job) is not None:  # a file still waiting for a slot was never begun
                    self.events.emit(BatchFileInterrupted(
                        tenant=job.tenant, file=job.name,
                        reason="the daemon is stopping; the file resumes at the next start or on another instance"))
                    await self._give_up(job)
                raise
            except PyMongoError as exc:  # the store is down: leave the file, retry at a later scan
                self.events.emit(BatchFileDeferred(tenant=job.tenant, file=job.name, error=str(exc)[:300]))
            except Exception as exc:
                self.events.emit(BatchFileFailed(tenant=job.tenant, file=job.name, error=str(exc)[:300]))
                with contextlib.suppress(Exception):
                    await self._reject(job.tenant, job.path, job.size, job.sha256, job.ledger_id,
                                       FileRejected("internal", f"the platform failed on the file: {exc}"[:500]),
                                       purge=True, staged=job.staged, claim=self._claim_of(job))
            finally:
                _close(job.staged)
                self._inflight.get(job.tenant, {}).pop(job.name, None)
                self._loading.pop(job.ledger_id, None)
                self._claims.pop(job.ledger_id, None)
                self._lost.discard(job.ledger_id)
                self._settling.discard(job.ledger_id)
                self.watcher.release(job.tenant, job.name)

    async def _run_bound(self, job: FileJob, profile: BatchProfile, route: BatchRoute | None) -> None:
        """Wait for a slot here and a claim in the ledger (within the tenant's limit across the
        instances), then load the file."""
        limit = route.max_concurrent_files if route else profile.max_concurrent_files
        while True:
            async with self.scheduler.slot(job.tenant, profile.max_concurrent_files, (job.tenant, job.route), limit):
                if self._profile(job.tenant) is None or not self._accepting:
                    return  # offboarded or stopping while waiting: the file stays in staging
                claim = await self._claim(job, profile)
                if claim is None:
                    return
                if claim is not _THROTTLED:
                    assert isinstance(claim, Claim)
                    await self._load(job, claim, profile, route.timeout_s if route else profile.timeout_s)
                    return
            await asyncio.sleep(THROTTLE_WAIT_S)

    async def _claim(self, job: FileJob, profile: BatchProfile) -> Claim | object | None:
        """This instance's claim on the file; None if another instance's claim won; ``_THROTTLED``
        if the tenant already loads ``max_concurrent_files`` files across the instances (the
        claim is given back: the first claimed keep theirs)."""
        ledger = self.ledger
        claim = await ledger.claim(job.ledger_id, self.instance_id, self.cluster.lease_s, app=job.app.name,
                                   route=job.route, format=job.fmt)
        if claim is None:
            self.events.emit(BatchFileClaimedElsewhere(tenant=job.tenant, file=job.name, ledger_id=job.ledger_id,
                                                       owner=await ledger.owner_of(job.ledger_id)))
            return None
        self._claims[job.ledger_id] = (claim, asyncio.current_task())  # type: ignore[assignment]
        live = [str(d["_id"]) for d in await ledger.live_claims(job.tenant)]
        ahead = live.index(job.ledger_id) if job.ledger_id in live else len(live)
        if ahead >= profile.max_concurrent_files:
            self._claims.pop(job.ledger_id, None)
            await ledger.release(claim, restage=not claim.resumed)
            self.events.emit(BatchFileThrottled(tenant=job.tenant, file=job.name, ledger_id=job.ledger_id,
                                                loading=len(live), limit=profile.max_concurrent_files))
            return _THROTTLED
        return claim

    async def _load(self, job: FileJob, claim: Claim, profile: BatchProfile, timeout: float) -> None:
        """Load the claimed file with the tenant's app; commit or reject it."""
        assert self._loader is not None
        self._loading[job.ledger_id] = f"{job.tenant}/{job.name}"
        # a resumed file was admitted under the quota of its time (see _admit): not cut by today's
        job.quota_bytes = None if claim.resumed else await self._quota_left(job.tenant, profile, job.name)
        starting = BatchFileResumed if claim.resumed else BatchFileLoading
        self.events.emit(starting(tenant=job.tenant, file=job.name, sha256=job.sha256, bytes=job.size,
                                  app=job.app.name, route=job.route, ledger_id=job.ledger_id))
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                counts = await self._loader.load(job)
        except TimeoutError:
            await self._reject(job.tenant, job.path, job.size, job.sha256, job.ledger_id, FileRejected(
                "timeout", f"loading took longer than the limit of {timeout:g} s; split the file or ask for a "
                "larger timeout_s"), started=started, staged=job.staged, claim=claim, purge=True)
            return
        except FileRejected as exc:  # what was written of it goes (its _rejects entries stay)
            await self._reject(job.tenant, job.path, job.size, job.sha256, job.ledger_id, exc, started=started,
                               staged=job.staged, claim=claim, purge=True)
            return
        if job.staged is not None and await asyncio.to_thread(job.staged.changed):
            # what was loaded is not what the ledger's sha256 names
            await self._reject(job.tenant, job.path, job.size, job.sha256, job.ledger_id, FileRejected(
                "changed", "the file was written to while it loaded; write under a hidden name and rename "
                "it into place when complete", **counts.as_dict()), started=started, staged=job.staged,
                claim=claim, purge=True)
            return
        await self._commit(job, claim, counts, started)

    async def _commit(self, job: FileJob, claim: Claim, counts: Counts, started: float) -> None:
        seconds = time.monotonic() - started
        dest = await asyncio.to_thread(_free_path, self.archive_dir / job.tenant / "done", job.name, job.ledger_id)
        # the quota counts content: decompressed bytes of a .gz file (its reader counted them all)
        content = job.staged.content_bytes if job.staged is not None and job.fmt.endswith(".gz") else job.size
        settled = await self._settle(claim, FileState.COMMITTED, archive_path=str(dest), content_bytes=content,
                                     seconds=round(seconds, 3), **counts.as_dict())
        if settled is None:  # taken over while this instance was paused: the other one commits it
            await self._lease_lost(claim, job.tenant, job.name, "commit")
            return
        placed = await asyncio.to_thread(_archive, job.staged, job.path, None, dest, job.ledger_id, self.events)
        if placed != dest:
            await self.ledger.set_archive_path(job.ledger_id, str(placed))
        self.events.emit(BatchFileCommitted(**_outcome(job.tenant, job.name, job.sha256, job.size, counts, seconds),
                                            app=job.app.name, ledger_id=job.ledger_id))

    # -- claims ------------------------------------------------------------------------------
    def _claim_of(self, job: FileJob) -> Claim | None:
        held = self._claims.get(job.ledger_id)
        return held[0] if held is not None else None

    async def _settle(self, claim: Claim, state: FileState, **fields: Any) -> dict[str, Any] | None:
        """The claim's last transition. From here on the renewal leaves the entry alone: a
        renewal that finds it settled by this very instance is no lost lease."""
        self._settling.add(claim.entry_id)
        return await self.ledger.settle(claim, state, **fields)

    async def _renew_loop(self) -> None:
        """Renew the lease of every file this instance loads; stop a load whose claim was taken over."""
        while True:
            await asyncio.sleep(self.cluster.renew_every_s)
            for entry_id, (claim, task) in list(self._claims.items()):
                if entry_id in self._settling:
                    continue
                try:
                    held = await self.ledger.renew(claim, self.cluster.lease_s)
                except PyMongoError:
                    continue  # the store is away: the lease may lapse; the commit's fencing decides
                if held or entry_id in self._settling or entry_id in self._lost:
                    continue
                if self._claims.get(entry_id, (None,))[0] is claim:
                    tenant, _, name = self._loading.get(entry_id, "?/?").partition("/")
                    await self._lease_lost(claim, tenant, name, "renew")
                    task.cancel()

    async def _still_held(self, claim: Claim, tenant: str, name: str, step: str) -> bool:
        """Renew the claim before a step that destroys (a rollback): False (logged) if it was lost."""
        if await self.ledger.renew(claim, self.cluster.lease_s):
            return True
        await self._lease_lost(claim, tenant, name, step)
        return False

    async def _lease_lost(self, claim: Claim, tenant: str, name: str, step: str) -> None:
        self._lost.add(claim.entry_id)
        owner = None
        with contextlib.suppress(PyMongoError):
            owner = await self.ledger.owner_of(claim.entry_id)
        self.events.emit(BatchFileLeaseLost(tenant=tenant, file=name, ledger_id=claim.entry_id, step=step,
                                            owner=owner))

    async def _give_up(self, job: FileJob) -> None:
        """At shutdown: give the claim up at once, so another instance resumes the file now."""
        claim = self._claim_of(job)
        if claim is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.ledger.release(claim)), _RELEASE_TIMEOUT_S)

    async def _reject(self, tenant: str, path: Path, size: int, sha: str | None, entry_id: str | None,
                      exc: FileRejected, started: float | None = None, purge: bool = False,
                      staged: StagedFile | None = None, seen: os.stat_result | None = None,
                      claim: Claim | None = None) -> None:
        """Record the rejection, archive the file in ``rejected/`` with ``<name>.reason.json``, log it.

        ``purge``: documents of the file may be in the tenant's database (a load began):
        remove them first, so that a rejected file leaves none behind. ``staged``: the
        admitted descriptor (its inode is archived); without it, the staging entry itself is
        moved, if it is still the one the watcher saw (``seen``), never followed or read.
        ``claim``: this instance's claim on the entry; without one, the entry is rejected only
        while it is ``staged`` (or taken over first when it is a lapsed ``loading`` one). The
        rollback, the ledger and the archive are touched only while the claim holds.
        """
        ledger = self.ledger
        if entry_id is None:
            st = seen if seen is not None else (staged.admitted if staged is not None else None)
            entry_id = entry_id_of(tenant, path.name, st) if st is not None else uuid.uuid4().hex
            await ledger.stage_once(entry_id, tenant, path.name, sha, size, source="staging")
        if claim is None and purge:
            claim = await ledger.claim(entry_id, self.instance_id, self.cluster.lease_s)
            if claim is None:
                return  # another instance holds the file: it decides
        if purge and sha is not None and claim is not None:
            if not await self._still_held(claim, tenant, path.name, "reject"):
                return
            assert self._loader is not None
            try:
                await self._loader.purge(tenant, sha, path.name)
            except Exception as failure:  # the rejection is recorded all the same
                self.events.emit(BatchFileRollbackFailed(tenant=tenant, file=path.name, error=str(failure)[:300]),
                                 exc_info=True)
        seconds = time.monotonic() - started if started is not None else 0.0
        counts = Counts(**{k: v for k, v in exc.details.items() if k in Counts.__dataclass_fields__ and isinstance(v, int)})
        dest = await asyncio.to_thread(_free_path, self.archive_dir / tenant / "rejected", path.name, entry_id)
        fields = {"code": exc.code, "reason": exc.message, "archive_path": str(dest), "seconds": round(seconds, 3),
                  **counts.as_dict()}
        if not await self._settle_rejected(entry_id, claim, fields, tenant, path.name):
            return
        details = {k: v for k, v in exc.details.items() if k not in Counts.__dataclass_fields__}
        reason = {"code": exc.code, "message": exc.message, "tenant": tenant, "file": path.name, "sha256": sha,
                  "bytes": size, "ledger_id": entry_id, **counts.as_dict(), "details": details}
        identity = (seen.st_dev, seen.st_ino) if seen is not None else None
        placed = await asyncio.to_thread(_archive, staged, path, identity, dest, entry_id, self.events, reason)
        if placed != dest:
            await ledger.set_archive_path(entry_id, str(placed))
        self.events.emit(BatchFileRejected(**_outcome(tenant, path.name, sha, size, counts, seconds),
                                           code=exc.code, reason=exc.message, ledger_id=entry_id))

    async def _settle_rejected(self, entry_id: str, claim: Claim | None, fields: dict[str, Any], tenant: str,
                               name: str) -> bool:
        """Move the entry to ``rejected``: with the claim, or from ``staged``, or by taking over a
        lapsed ``loading`` entry; False (the file is left alone) when another instance holds it."""
        ledger = self.ledger
        if claim is not None:
            if await self._settle(claim, FileState.REJECTED, **fields) is not None:
                return True
            await self._lease_lost(claim, tenant, name, "reject")
            return False
        if await ledger.reject_staged(entry_id, **fields) is not None:
            return True
        taken = await ledger.claim(entry_id, self.instance_id, self.cluster.lease_s)
        if taken is not None and await ledger.settle(taken, FileState.REJECTED, **fields) is not None:
            return True
        self.events.emit(BatchFileClaimedElsewhere(tenant=tenant, file=name, ledger_id=entry_id,
                                                   owner=await ledger.owner_of(entry_id)))
        return False


_THROTTLED = object()  # a claim given back: the tenant's limit across the instances is reached


def _resumable_format(entry: dict[str, Any] | None) -> str | None:
    """The format a ``loading`` entry was admitted with (it resumes without admission checks), else None."""
    if entry is None or entry.get("state") != FileState.LOADING.value or not entry.get("sha256"):
        return None
    fmt = entry.get("format")
    return fmt if isinstance(fmt, str) and fmt in FORMATS else None


def _outcome(tenant: str, name: str, sha: str | None, size: int, counts: Counts, seconds: float) -> dict[str, Any]:
    return {"tenant": tenant, "file": name, "sha256": sha, "bytes": size, **counts.as_dict(),
            "seconds": round(seconds, 3),
            "records_per_s": round(counts.records_in / seconds, 1) if seconds > 0 else 0.0,
            "mb_per_s": round(size / 1e6 / seconds, 3) if seconds > 0 else 0.0}


def _close(staged: StagedFile | None) -> None:
    if staged is not None:
        staged.close()


REASON_SUFFIX = ".reason.json"
# Choosing an archive name and creating it is one step for the whole daemon: two files
# archived at once never take the same name, nor a name that pairs with the other's.
_ARCHIVE_LOCK = threading.Lock()


def _taken(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` cannot be used: it, its reason file, or (for a name ending in
    ``.reason.json``) the file it would look like the reason of, exists."""
    names = [name, name + REASON_SUFFIX]
    if name.endswith(REASON_SUFFIX):
        names.append(name.removesuffix(REASON_SUFFIX))
    return any(os.path.lexists(folder / n) for n in names)


def _free_path(folder: Path, name: str, entry_id: str) -> Path:
    """``folder/name``, or ``folder/<id8>-name`` (then ``<id>-name``) when that name is taken.

    A name is taken when it exists, when its ``<name>.reason.json`` exists, or when it is a
    tenant's file named ``X.reason.json`` and ``X`` exists: so in the archive, ``X.reason.json``
    beside ``X`` is always the platform's reason file of ``X``, never a tenant's file.
    """
    for candidate in (name, f"{entry_id[:8]}-{name}", f"{entry_id}-{name}"):
        if not _taken(folder, candidate):
            return folder / candidate
    return folder / f"{entry_id}-{name}"


def _archive(staged: StagedFile | None, path: Path, identity: tuple[int, int] | None, dest: Path,
             entry_id: str, events: Emitter, reason: dict[str, Any] | None = None) -> Path:
    """Archive the file at ``dest`` (or, if that name was taken meanwhile, a free one); returns where.

    With ``staged``, its inode is placed in the archive and the staging name removed if it
    still names that inode; else the staging entry itself is moved if it is still
    ``identity``. ``reason``: written beside it as ``<dest>.reason.json``, never over a file.
    """
    folder = dest.parent
    folder.mkdir(parents=True, exist_ok=True)
    with _ARCHIVE_LOCK:
        if _taken(folder, dest.name):
            dest = _free_path(folder, path.name, entry_id)
        if staged is not None:
            _archive_staged(staged, path, dest, events)
        elif identity is not None and reason is not None and reason.get("code") == "hard_link":
            _drop_entry(path, identity)  # another name of a file that is not the tenant's to give
        elif identity is not None:
            _move_entry(path, identity, dest)
        if reason is not None:
            fd = os.open(dest.with_name(dest.name + REASON_SUFFIX),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(reason, option=orjson.OPT_INDENT_2, default=str))
    return dest


def _archive_staged(staged: StagedFile, path: Path, dest: Path, events: Emitter) -> None:
    """Our inode into the archive, then the staging name away if it is still ours."""
    staged.place(dest, path)
    if not staged.remove_name(path):
        events.emit(BatchFileReplaced(
            tenant=path.parent.name, file=path.name,
            reason="another file took the name while this one loaded; it stays in staging as a new file"))


def _drop_entry(path: Path, identity: tuple[int, int]) -> None:
    """Remove the staging name of a hard link (if it is still ``identity``): archiving it would
    keep one more name of a file that is someone else's, in this tenant's archive. Nothing is
    lost: the file's content stays under its other names."""
    private = take_name(path, identity)
    if private is not None:
        private.unlink()


def _move_entry(path: Path, identity: tuple[int, int], dest: Path) -> None:
    """Move the staging entry (a link, a FIFO, a file: never followed or read) to ``dest``,
    if it is still ``identity``."""
    private = take_name(path, identity)
    if private is None:
        return
    try:
        rename_noreplace(private, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if private.is_symlink():  # another file system: the link itself, never what it points to
            os.symlink(os.readlink(private), dest)
        os.unlink(private)  # other entries are not copied: their bytes are never read
