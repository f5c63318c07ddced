"""The batch manager: the daemon component that turns staged files into documents.

For each file the watcher hands over: check it against the tenant's profile (before any
parsing), record it in the ledger, wait for a fair slot, load it with the tenant's app,
then archive it (``<var>/archive/<tenant>/done/`` or ``rejected/`` with a reason file) and
log ``batch.file.committed`` or ``batch.file.rejected``. Nothing is deleted.

A file left ``loading`` by a crash is still in the staging folder: at the next start the
watcher hands it over again, the manager finds its ``loading`` ledger entry (same tenant,
name and sha256) and resumes it; deterministic ``_id``s make the second pass write only
the records the first one did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from pymongo.errors import PyMongoError

from mysimbdp.apps import App
from mysimbdp.batch.constraints import Usage, check_file, check_name
from mysimbdp.batch.loader import Counts, FileJob, FileLoader
from mysimbdp.batch.readers import sniff, use_lean_memory_pool
from mysimbdp.batch.scheduler import FairScheduler
from mysimbdp.batch.watcher import StagingWatcher, is_ignored
from mysimbdp.errors import FileRejected, PluginError
from mysimbdp.ledger import FileState
from mysimbdp.logs import get_logger
from mysimbdp.tenants import FORMATS, BatchProfile, BatchRoute, TenantChange

if TYPE_CHECKING:
    from mysimbdp.daemon import Daemon

__all__ = ["BatchManager", "route_for"]

log = get_logger("batch")


def route_for(profile: BatchProfile, name: str) -> BatchRoute | None:
    """The first route whose glob ``pattern`` matches ``name``, or None for the default app."""
    for route in profile.routes:
        if fnmatch.fnmatchcase(name, route.pattern):
            return route
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class BatchManager:
    """Daemon component ``batch``: watcher, scheduler, loader and the file lifecycle."""

    name = "batch"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        settings = daemon.settings
        self.staging_dir = settings.staging_dir
        self.archive_dir = settings.archive_dir
        self.scheduler = FairScheduler(settings.batch.max_concurrent_files)
        self.watcher = StagingWatcher(settings.staging_dir, settings.batch.stable_after_s,
                                      settings.batch.rescan_interval_s, daemon.stop_event, self._on_file)
        self._executor: ThreadPoolExecutor | None = None
        self._loader: FileLoader | None = None
        self._inflight: dict[str, dict[str, tuple[int, str]]] = {}  # tenant -> name -> (bytes, sha256)
        self._loading: dict[str, str] = {}  # ledger id -> "tenant/name"
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self.arrow_memory_pool = ""  # the allocator Arrow uses, chosen at start

    # -- component -------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to tenant changes and begin watching (tenants arrive from the registry)."""
        slots = self.daemon.settings.batch.max_concurrent_files
        self.arrow_memory_pool = use_lean_memory_pool()
        self._executor = ThreadPoolExecutor(max_workers=slots + 1, thread_name_prefix="batch")
        batch = self.daemon.settings.batch
        self._loader = FileLoader(self.daemon.store, batch.write_batch_size, batch.progress_interval_s)
        self._accepting = True
        with contextlib.suppress(PyMongoError):  # the store may come up later; indexes are an optimisation
            await self.daemon.ledger.ensure_indexes()
        self.daemon.tenants.add_listener(self._on_tenant)
        await self.watcher.start()

    async def drain(self, timeout: float) -> None:
        """Stop taking files; wait up to ``timeout`` for loads, then cancel them (resumed at next start)."""
        self._accepting = False
        await self.watcher.stop()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            if pending:
                log.warning("batch.drain.cancelled", files=sorted(self._loading.values()), count=len(pending))
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
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, object]:
        """Watched tenants, files loading and waiting for a slot."""
        return {"up": True, "tenants": sorted(self.watcher.tenants), "loading": sorted(self._loading.values()),
                "waiting": self.scheduler.waiting}

    async def usage(self, tenant: str) -> Usage:
        """Files waiting in the tenant's staging folder (not hidden or ``.part``) and committed bytes."""
        folder = self.staging_dir / tenant
        try:
            waiting = sum(1 for e in os.scandir(folder) if not is_ignored(e.name) and not e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            waiting = 0
        return Usage(staged_files=waiting, used_bytes=await self.daemon.ledger.committed_bytes(tenant))

    async def _on_tenant(self, change: TenantChange) -> None:
        if change.new is not None and change.new.batch is not None:
            if change.tenant not in self.watcher.tenants:
                log.info("batch.tenant.watching", tenant=change.tenant, folder=str(self.watcher.folder(change.tenant)))
            self.watcher.watch(change.tenant)
        elif change.tenant in self.watcher.tenants:
            self.watcher.unwatch(change.tenant)
            log.info("batch.tenant.unwatched", tenant=change.tenant)

    def _profile(self, tenant: str) -> BatchProfile | None:
        profile = self.daemon.tenants.get(tenant)
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
        ledger, name, size = self.daemon.ledger, path.name, st.st_size
        entry_id: str | None = None
        sha: str | None = None
        resumed = False
        try:
            candidates = await ledger.find(tenant, name=name, states=[FileState.STAGED, FileState.LOADING])
            entry = next((c for c in candidates if c.get("bytes") == size), None)
            entry_id = entry["_id"] if entry else None
            if not stat.S_ISREG(st.st_mode):
                raise FileRejected("not_regular", "not a regular file (symbolic links and devices are not followed); "
                                   "copy the file itself into the staging folder")
            check_name(name)
            inflight = self._inflight.setdefault(tenant, {})
            resumable = _resumable_format(entry)
            # constraints first: a file too big is refused without being read
            fmt = resumable or await self._check_constraints(tenant, profile, name, size)
            sha = await asyncio.get_running_loop().run_in_executor(self._executor, _sha256, path)
            if entry is not None and entry.get("sha256") not in (None, sha):
                if resumable is not None:  # not the file that was loading: a new one
                    fmt = await self._check_constraints(tenant, profile, name, size)
                entry, entry_id, resumable = None, None, None  # same name, other content: not that entry
            resumed = resumable is not None
            await self._refuse_duplicate(tenant, name, path, sha)
            await asyncio.get_running_loop().run_in_executor(self._executor, sniff, path, fmt)
            route = route_for(profile, name)
            app = App(self.daemon.pm, route.app if route else profile.app).require("batch")
        except PluginError as exc:
            await self._reject(tenant, path, size, sha, entry_id, FileRejected("no_app", str(exc)), purge=resumed)
            return None
        except FileRejected as exc:
            if exc.code == "archived":
                return None
            # a duplicate's documents are those of the copy loading or committed: never remove them
            await self._reject(tenant, path, size, sha, entry_id, exc, purge=resumed and exc.code != "duplicate")
            return None
        if entry_id is None:
            entry_id = await ledger.stage(tenant, name, sha, size, source="staging")
        inflight[name] = (size, sha)
        return FileJob(tenant, name, path, entry_id, sha, size, fmt, app, profile.max_file_bytes,
                       profile.max_error_rate, route.pattern if route else None), route

    async def _check_constraints(self, tenant: str, profile: BatchProfile, name: str, size: int) -> str:
        """The profile's admission constraints (:func:`check_file`) against what the tenant has now."""
        inflight = self._inflight.setdefault(tenant, {})
        used = await self.daemon.ledger.committed_bytes(tenant) + sum(b for b, _ in inflight.values())
        return check_file(profile, name, size, Usage(staged_files=len(inflight), used_bytes=used))

    async def _refuse_duplicate(self, tenant: str, name: str, path: Path, sha: str) -> None:
        if any(s == sha for _, s in self._inflight.get(tenant, {}).values()):
            raise FileRejected("duplicate", "a file with the same content is loading right now", sha256=sha)
        for done in await self.daemon.ledger.find(tenant, sha256=sha, states=[FileState.COMMITTED]):
            archived = done.get("archive_path")
            if done.get("name") == name and archived and not await asyncio.to_thread(os.path.exists, archived):
                # committed, then the daemon died before moving the file: finish the move
                await asyncio.to_thread(_move, path, Path(archived))
                log.info("batch.file.archived_late", tenant=tenant, file=name, ledger_id=done["_id"])
                raise FileRejected("archived", "already committed")
            raise FileRejected("duplicate", f"the same content (sha256 {sha[:12]}…) was already committed as "
                               f"{done.get('name')!r}; it is not loaded twice", sha256=sha, ledger_id=done["_id"])

    # -- loading ---------------------------------------------------------------------------
    async def _run(self, job: FileJob, profile: BatchProfile, route: BatchRoute | None) -> None:
        with structlog.contextvars.bound_contextvars(tenant=job.tenant, file=job.name, ledger_id=job.ledger_id):
            try:
                await self._run_bound(job, profile, route)
            except asyncio.CancelledError:
                log.warning("batch.file.interrupted", tenant=job.tenant, file=job.name,
                            reason="the daemon is stopping; the file resumes at the next start")
                raise
            except PyMongoError as exc:  # the store is down: leave the file, retry at a later scan
                log.error("batch.file.deferred", tenant=job.tenant, file=job.name, error=str(exc)[:300])
            except Exception as exc:
                log.exception("batch.file.failed", tenant=job.tenant, file=job.name, error=str(exc)[:300])
                with contextlib.suppress(Exception):
                    await self._reject(job.tenant, job.path, job.size, job.sha256, job.ledger_id,
                                       FileRejected("internal", f"the platform failed on the file: {exc}"[:500]),
                                       purge=True)
            finally:
                self._inflight.get(job.tenant, {}).pop(job.name, None)
                self._loading.pop(job.ledger_id, None)
                self.watcher.release(job.tenant, job.name)

    async def _run_bound(self, job: FileJob, profile: BatchProfile, route: BatchRoute | None) -> None:
        limit = route.max_concurrent_files if route else profile.max_concurrent_files
        timeout = route.timeout_s if route else profile.timeout_s
        async with self.scheduler.slot(job.tenant, profile.max_concurrent_files, (job.tenant, job.route), limit):
            if self._profile(job.tenant) is None or not self._accepting:
                return  # offboarded or stopping while waiting: the file stays in staging
            assert self._loader is not None
            previous = await self.daemon.ledger.get(job.ledger_id)
            resumed = previous is not None and previous.get("state") == FileState.LOADING.value
            await self.daemon.ledger.transition(job.ledger_id, FileState.LOADING, app=job.app.name, route=job.route,
                                                format=job.fmt, attempts=int((previous or {}).get("attempts", 0)) + 1)
            self._loading[job.ledger_id] = f"{job.tenant}/{job.name}"
            log.info("batch.file.resumed" if resumed else "batch.file.loading", tenant=job.tenant, file=job.name,
                     sha256=job.sha256, bytes=job.size, app=job.app.name, route=job.route)
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    counts = await self._loader.load(job)
            except TimeoutError:
                await self._loader.rollback(job)
                await self._reject(job.tenant, job.path, job.size, job.sha256, job.ledger_id, FileRejected(
                    "timeout", f"loading took longer than the limit of {timeout:g} s; split the file or ask for a "
                    "larger timeout_s"), started=started)
                return
            except FileRejected as exc:
                await self._reject(job.tenant, job.path, job.size, job.sha256, job.ledger_id, exc, started=started)
                return
            await self._commit(job, counts, started)

    async def _commit(self, job: FileJob, counts: Counts, started: float) -> None:
        seconds = time.monotonic() - started
        dest = _free_path(self.archive_dir / job.tenant / "done", job.name, job.ledger_id)
        await self.daemon.ledger.transition(job.ledger_id, FileState.COMMITTED, archive_path=str(dest),
                                            seconds=round(seconds, 3), **counts.as_dict())
        await asyncio.to_thread(_move, job.path, dest)
        log.info("batch.file.committed", **_outcome(job.tenant, job.name, job.sha256, job.size, counts, seconds),
                 app=job.app.name, ledger_id=job.ledger_id)

    async def _reject(self, tenant: str, path: Path, size: int, sha: str | None, entry_id: str | None,
                      exc: FileRejected, started: float | None = None, purge: bool = False) -> None:
        """Record the rejection, move the file to ``rejected/`` with ``<name>.reason.json``, log it.

        ``purge``: documents of the file may be in the tenant's database (a load began):
        remove them first, so that a rejected file leaves none behind.
        """
        ledger = self.daemon.ledger
        if purge and sha is not None:
            assert self._loader is not None
            try:
                await self._loader.purge(tenant, sha, path.name)
            except Exception as failure:  # the rejection is recorded all the same
                log.exception("batch.file.rollback_failed", tenant=tenant, file=path.name, error=str(failure)[:300])
        seconds = time.monotonic() - started if started is not None else 0.0
        counts = Counts(**{k: v for k, v in exc.details.items() if k in Counts.__dataclass_fields__ and isinstance(v, int)})
        if entry_id is None:
            entry_id = await ledger.stage(tenant, path.name, sha, size, source="staging")
        dest = _free_path(self.archive_dir / tenant / "rejected", path.name, entry_id)
        await ledger.transition(entry_id, FileState.REJECTED, code=exc.code, reason=exc.message,
                                archive_path=str(dest), seconds=round(seconds, 3), **counts.as_dict())
        details = {k: v for k, v in exc.details.items() if k not in Counts.__dataclass_fields__}
        reason = {"code": exc.code, "message": exc.message, "tenant": tenant, "file": path.name, "sha256": sha,
                  "bytes": size, "ledger_id": entry_id, **counts.as_dict(), "details": details}
        await asyncio.to_thread(_archive_rejected, path, dest, reason)
        log.warning("batch.file.rejected", **_outcome(tenant, path.name, sha, size, counts, seconds),
                    code=exc.code, reason=exc.message, ledger_id=entry_id)


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


def _free_path(folder: Path, name: str, entry_id: str) -> Path:
    """``folder/name``, or ``folder/<id8>-name`` when a file of that name was archived before."""
    path = folder / name
    return folder / f"{entry_id[:8]}-{name}" if path.exists() or path.is_symlink() else path


def _move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():  # move the link itself, never what it points to
        if src.parent.stat().st_dev == dest.parent.stat().st_dev:
            os.replace(src, dest)
        else:
            os.symlink(os.readlink(src), dest)
            src.unlink()
        return
    shutil.move(str(src), str(dest))


def _archive_rejected(src: Path, dest: Path, reason: dict[str, Any]) -> None:
    _move(src, dest)
    dest.with_name(dest.name + ".reason.json").write_bytes(orjson.dumps(reason, option=orjson.OPT_INDENT_2, default=str))
