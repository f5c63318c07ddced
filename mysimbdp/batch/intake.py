"""The upload door: tenants send batch files over HTTP instead of writing into staging.

``PUT /tenants/{id}/files/{name}`` streams the body to ``<staging>/<id>/.<name>.<tag>.part``
(``<tag>``: this instance's, so that daemons sharing the staging folder never touch each
other's uploads)
(hashing it on the way, never holding the whole file in memory), records the file in the
ledger as ``staged`` and then renames it atomically to ``<staging>/<id>/<name>``, where the
batch watcher picks it up. The tenant's constraints are checked with the same code the
watcher uses (:mod:`mysimbdp.batch.constraints`), before the body is read when possible
(``Content-Length``, ``Expect: 100-continue``) and again while it streams. Any failure,
including a broken connection, leaves nothing behind; the ``.part`` files of a daemon killed
mid-upload are removed when it starts again (or, once it is gone from the instances, by the
next instance that starts). See ``docs/upload.md``.

The service is handed what it uses: the staging folder, the ledger, the batch manager's view
of what a tenant has staged (:class:`StagedUsage`), the daemon's stop event and the event bus.
Its handlers are mounted by the route table (:mod:`mysimbdp.http.routes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from aiohttp import web
from pymongo.errors import PyMongoError

from mysimbdp.batch.constraints import Usage, check_file, check_name, detect_format
from mysimbdp.batch.ledger import FileState, Ledger
from mysimbdp.errors import FileRejected
from mysimbdp.events import Emitter, EventBus
from mysimbdp.events.catalog import (
    UploadDrainCancelled,
    UploadInterrupted,
    UploadPartRemoved,
    UploadRejected,
    UploadStaged,
    UploadStarted,
)
from mysimbdp.http.server import HttpError, error_response, int_param, json_response, require_tenant
from mysimbdp.tenants import BatchProfile, TenantProfile

__all__ = ["UploadService", "StagedUsage", "batch_profile", "STATUS_BY_CODE", "CHUNK_BYTES", "part_path", "upload_name_of",
           "remove_stale_parts", "instance_tag", "MAX_UPLOAD_NAME_BYTES"]

#: HTTP status of each refusal code (the codes of :data:`~mysimbdp.batch.constraints.REASON_CODES`
#: plus the door's own).
STATUS_BY_CODE = {
    "bad_name": 400,
    "length_mismatch": 400,
    "no_batch": 404,
    "unknown_file": 404,
    "exists": 409,
    "in_progress": 409,
    "duplicate": 409,
    "too_big": 413,
    "format": 415,
    "staging_full": 429,
    "over_quota": 507,
    "no_space": 507,
    "draining": 503,
    "store_unavailable": 503,
}

#: Bytes handed to the writer thread at once: memory per upload stays around this size.
CHUNK_BYTES = 1024 * 1024
#: A refused body larger than this is not read to the end: the connection is closed instead.
_LINGER_MAX_BYTES = 64 * 1024
_MAX_LIST = 1000
_LIVE_WAIT_S = 1.0  # how long the start waits for the list of instances up (a store that is away)


_TAG_HEX = 8
_PART = re.compile(r"\.(?P<name>.+)\.(?P<tag>[0-9a-f]{" + str(_TAG_HEX) + r"})\.part", re.DOTALL)
#: The longest name an upload may have: its temporary name (``.<name>.<tag>.part``) must fit
#: in the 255 bytes a file name may have.
MAX_UPLOAD_NAME_BYTES = 255 - len(".") - len(".") - _TAG_HEX - len(".part")


def instance_tag(instance_id: str) -> str:
    """The short tag of an instance in its uploads' temporary names."""
    return hashlib.sha256(instance_id.encode()).hexdigest()[:_TAG_HEX]


def part_path(folder: Path, name: str, tag: str) -> Path:
    """Where the instance tagged ``tag`` writes an upload of ``name`` until it is complete
    (hidden from the watcher)."""
    return folder / f".{name}.{tag}.part"


def upload_name_of(part_name: str) -> tuple[str, str] | None:
    """The upload name and instance tag whose :func:`part_path` is ``part_name``, or None.

    An upload writes ``.<name>.<tag>.part`` only for a ``name`` that passed the name checks and
    has a known format's extension; any other file (``.x.tmp``, ``x.csv.part``, ``.notes.part``,
    a tenant's own ``.x.csv.part``) is not the upload door's.
    """
    match = _PART.fullmatch(part_name)
    if match is None:
        return None
    name = match["name"]
    try:
        check_name(name)
    except FileRejected:
        return None
    return (name, match["tag"]) if detect_format(name) is not None else None


def remove_stale_parts(staging: Path, started: float, events: Emitter, own_tag: str,
                       gone: Callable[[str, float], bool] = lambda tag, age: False) -> int:
    """Delete the uploads' temporary files in every tenant folder of ``staging`` that no
    upload writes any more; the count.

    This instance's own (tag ``own_tag``) last written before ``started`` are left by its
    previous run, killed mid-upload. Another instance's are removed only when ``gone(tag,
    age_s)`` says that instance is no longer up (and the file not written for long enough).
    A file modified since ``started`` is never removed; nor are links, folders and any file
    that is not an upload's. Each removal is logged as ``upload.part.removed``.
    """
    removed = 0
    try:
        tenants = [e for e in os.scandir(staging) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    for tenant in tenants:
        try:
            entries = list(os.scandir(tenant.path))
        except OSError:
            continue
        for entry in entries:
            parsed = upload_name_of(entry.name)
            if parsed is None or not entry.is_file(follow_symlinks=False):
                continue
            name, tag = parsed
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime >= started or (tag != own_tag and not gone(tag, started - st.st_mtime)):
                    continue
                os.unlink(entry.path)
            except OSError:  # gone already, or not ours to delete
                continue
            removed += 1
            events.emit(UploadPartRemoved(tenant=tenant.name, name=name, bytes=st.st_size,
                                          age_s=round(started - st.st_mtime, 1)))
    return removed


@dataclass
class _Upload:
    """An upload that passed the checks made before its body is read."""

    tenant: str
    name: str
    profile: BatchProfile
    folder: Path
    declared: int | None  # Content-Length, None for a chunked body
    usage: Usage
    received: int = 0


#: The ids of the instances up now (:meth:`mysimbdp.cluster.instances.InstanceRegistry.live_ids`).
LiveInstances = Callable[[], Awaitable[Sequence[str]]]


class StagedUsage(Protocol):
    """What a tenant has staged and committed (:meth:`mysimbdp.batch.lifecycle.BatchManager.usage`)."""

    async def usage(self, tenant: str) -> Usage:
        """Files waiting in the tenant's staging folder and its committed bytes."""
        ...


class UploadService:
    """The ``upload`` component: the tenant-facing file endpoints."""

    name = "upload"

    def __init__(self, *, staging_dir: Path, ledger: Ledger, batch: StagedUsage | None, stopping: asyncio.Event,
                 bus: EventBus, instance_id: str = "", live_instances: LiveInstances | None = None,
                 lease_s: float = 30.0) -> None:
        """``batch``: the batch manager's usage figures (None: the folder is counted here);
        ``stopping``: once set, uploads are refused (503); ``instance_id``: this instance (its
        uploads' temporary names carry its tag); ``live_instances``: the ids of the instances
        up now, whose uploads in progress are left alone at start (None: this is the only one);
        ``lease_s``: how long an instance is up without a heartbeat."""
        self.staging_dir = staging_dir
        self.tag = instance_tag(instance_id)
        self._live_instances = live_instances
        self._lease_s = lease_s
        self.ledger = ledger
        self.batch = batch
        self._stopping = stopping
        self.events = bus.emitter("upload")
        self._accepting = False
        self._inflight: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._stats = {"staged": 0, "rejected": 0, "interrupted": 0}

    # -- component -----------------------------------------------------------------------

    async def start(self) -> None:
        """Remove the temporary files of uploads a killed daemon left behind, then accept uploads.

        None of this instance's uploads is in flight yet (the HTTP server starts after this
        component), so its own are stale; another instance's only once that instance is gone.
        """
        live: set[str] | None = set()
        if self._live_instances is not None:
            try:
                live = {instance_tag(i) for i in await asyncio.wait_for(self._live_instances(), _LIVE_WAIT_S)}
            except (PyMongoError, TimeoutError):
                live = None  # the instances are unknown: only this instance's own leftovers go

        def gone(tag: str, age_s: float) -> bool:
            return live is not None and tag not in live and age_s > self._lease_s

        await asyncio.to_thread(remove_stale_parts, self.staging_dir, time.time(), self.events, self.tag, gone)
        self._accepting = True

    async def stop(self) -> None:
        """Refuse uploads; anything still in flight is cancelled and cleaned up."""
        self._accepting = False
        await self._cancel_inflight()

    def health(self) -> dict[str, object]:
        """Up while accepting; uploads in flight and counters since start."""
        return {"up": self._accepting or self._stopping.is_set(), "in_flight": len(self._inflight),
                **self._stats}

    async def drain(self, timeout: float) -> None:
        """Refuse new uploads, give those in flight ``timeout`` seconds, then cancel them."""
        self._accepting = False
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        await self._cancel_inflight()

    async def _cancel_inflight(self) -> None:
        left = dict(self._inflight)
        if not left:
            return
        self.events.emit(UploadDrainCancelled(uploads=[{"tenant": t, "name": n} for t, n in sorted(left)]))
        for task in left.values():
            task.cancel()
        await asyncio.gather(*left.values(), return_exceptions=True)

    # -- usage ---------------------------------------------------------------------------

    async def usage(self, tenant: str) -> Usage:
        """Files waiting and committed bytes (the batch manager's view) plus uploads in flight."""
        if self.batch is not None:
            base = await self.batch.usage(tenant)
        else:
            base = Usage(_count_waiting(self._folder(tenant)), await self.ledger.committed_bytes(tenant))
        inflight = sum(1 for t, _ in self._inflight if t == tenant)
        return Usage(base.staged_files + inflight, base.used_bytes)

    def _folder(self, tenant: str) -> Path:
        return self.staging_dir / tenant

    # -- GET constraints -------------------------------------------------------------------

    async def get_constraints(self, request: web.Request) -> web.Response:
        """The tenant's batch constraints and its current usage."""
        tenant = request.match_info["id"]
        profile = batch_profile(require_tenant(request, tenant))
        usage = await self.usage(tenant)
        return json_response({
            "tenant": tenant,
            "formats": list(profile.formats),
            "max_file_bytes": profile.max_file_bytes,
            "max_staged_files": profile.max_staged_files,
            "storage_quota_bytes": profile.storage_quota_bytes,
            "usage": {
                "staged_files": usage.staged_files,
                "used_bytes": usage.used_bytes,
                "free_bytes": max(0, profile.storage_quota_bytes - usage.used_bytes),
                "free_slots": max(0, profile.max_staged_files - usage.staged_files),
            },
        })

    # -- PUT file --------------------------------------------------------------------------

    async def _precheck(self, request: web.Request) -> _Upload:
        """Every check that needs no body: token, name, profile, conflicts, constraints."""
        if not self._accepting or self._stopping.is_set():
            raise HttpError(503, "draining", "the daemon is shutting down; retry against the next instance")
        tenant = request.match_info["id"]
        profile = batch_profile(require_tenant(request, tenant))
        name = request.match_info["name"]
        try:
            check_name(name)
        except FileRejected as exc:
            raise _refusal(exc.code, exc.message) from None
        if len(name.encode("utf-8", "surrogateescape")) > MAX_UPLOAD_NAME_BYTES:
            raise _refusal("bad_name", f"an uploaded file's name may have at most {MAX_UPLOAD_NAME_BYTES} bytes "
                           "(its temporary name needs the rest of the 255)")
        declared = request.content_length
        usage = await self.usage(tenant)
        # No await from here on: put_file registers the upload before anything else runs.
        folder = self._folder(tenant)
        if (folder / name).exists():
            raise _refusal("exists", f"{name!r} is already waiting in staging; wait until it is "
                           f"loaded (GET /tenants/{tenant}/files) or upload it under another name")
        if (tenant, name) in self._inflight:
            raise _refusal("in_progress", f"{name!r} is being uploaded right now by another request")
        try:
            check_file(profile, name, declared or 0, usage)
        except FileRejected as exc:
            raise _refusal(exc.code, exc.message, **_safe(exc.details)) from None
        return _Upload(tenant, name, profile, folder, declared, usage)

    async def expect_file(self, request: web.Request) -> web.StreamResponse | None:
        """``PUT`` with ``Expect: 100-continue``: refuse before the client sends the body, else let it come."""
        try:
            await self._precheck(request)
        except HttpError as exc:
            self._log_refusal(request, exc)
            response = error_response(exc.status, exc.code, exc.message, **exc.extra)
            response.force_close()  # the client holds the body back: nothing to read
            return response
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error_response(417, "expectation_failed", "only 'Expect: 100-continue' is supported")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    async def put_file(self, request: web.Request) -> web.StreamResponse:
        """Stream the body into staging; 201 with the ledger id, or a refusal."""
        try:
            up = await self._precheck(request)
        except HttpError as exc:
            self._log_refusal(request, exc)
            return self._refusal_response(request, exc)
        key = (up.tenant, up.name)
        task = asyncio.current_task()
        assert task is not None
        self._inflight[key] = task
        try:
            return await self._receive(request, up)
        except HttpError as exc:
            if exc.code != "interrupted":  # already logged as upload.interrupted
                self._log_refusal(request, exc)
            return self._refusal_response(request, exc)
        finally:
            self._inflight.pop(key, None)

    async def _receive(self, request: web.Request, up: _Upload) -> web.Response:
        t0 = time.monotonic()
        up.folder.mkdir(parents=True, exist_ok=True)
        part = part_path(up.folder, up.name, self.tag)
        self.events.emit(UploadStarted(tenant=up.tenant, name=up.name, declared_bytes=up.declared))
        try:
            try:
                size, sha256 = await self._stream_to(part, request, up)
            except (HttpError, asyncio.CancelledError):
                raise
            except OSError as exc:
                if isinstance(exc, ConnectionError):  # the client went away mid-body
                    raise self._interrupted(up, exc) from None
                if exc.errno == errno.ENOSPC:
                    raise _refusal("no_space", "the platform's staging disk is full; retry later") from None
                raise
            except Exception as exc:  # a broken body (bad chunked encoding, short of its length)
                raise self._interrupted(up, exc) from None
            file_id = await self._record(up, sha256, size)
            try:
                await asyncio.to_thread(_publish, part, up.folder / up.name)
            except FileExistsError:
                await self.ledger.reject_staged(file_id, code="exists", reason=(
                    "a file of that name appeared in staging during the upload"))
                raise _refusal("exists", f"{up.name!r} appeared in staging while it was being "
                               "uploaded; upload it again once that file is loaded") from None
            except Exception as exc:  # never leave a 'staged' entry without its file
                with contextlib.suppress(Exception):
                    await self.ledger.reject_staged(file_id, code="internal",
                                                    reason=f"the upload could not be completed: {exc}")
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        self._stats["staged"] += 1
        self.events.emit(UploadStaged(tenant=up.tenant, name=up.name, file_id=file_id, bytes=size,
                                      sha256=sha256, seconds=round(time.monotonic() - t0, 3)))
        location = f"/tenants/{up.tenant}/files/{file_id}"
        body = {"id": file_id, "tenant": up.tenant, "name": up.name, "bytes": size,
                "sha256": sha256, "state": FileState.STAGED.value, "url": location}
        response = json_response(body, status=201)
        response.headers["Location"] = location
        return response

    async def _record(self, up: _Upload, sha256: str, size: int) -> str:
        """Refuse content already committed, else record the file as ``staged``; its ledger id."""
        ledger = self.ledger
        try:
            if await ledger.find(up.tenant, sha256=sha256, states=[FileState.COMMITTED]):
                raise _refusal("duplicate", f"a file with the same content (sha256 {sha256}) was "
                               "already loaded; it is not loaded twice", sha256=sha256)
            return await ledger.stage(up.tenant, up.name, sha256, size, source="upload")
        except PyMongoError as exc:
            raise HttpError(503, "store_unavailable", "the platform's database cannot be reached; "
                            f"nothing was kept, retry later ({type(exc).__name__})") from None

    async def _stream_to(self, part: Path, request: web.Request, up: _Upload) -> tuple[int, str]:
        """Write the body to ``part`` in chunks, enforcing size and quota as it arrives."""
        limit = up.profile.max_file_bytes
        quota_left = up.profile.storage_quota_bytes - up.usage.used_bytes
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        with await asyncio.to_thread(_open_part, part) as out:
            async for chunk in request.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                up.received = size
                if size > limit:
                    raise _refusal("too_big", f"the body is over the limit of {limit} bytes "
                                   "(max_file_bytes); upload stopped", limit=limit)
                if size > quota_left:
                    raise _refusal("over_quota", f"the body would exceed the storage quota of "
                                   f"{up.profile.storage_quota_bytes} bytes; upload stopped",
                                   used=up.usage.used_bytes, limit=up.profile.storage_quota_bytes)
                buffer += chunk
                if len(buffer) >= CHUNK_BYTES:
                    await asyncio.to_thread(_write, out, digest, bytes(buffer))
                    buffer.clear()
            if up.declared is not None and size != up.declared:
                raise _refusal("length_mismatch", f"Content-Length said {up.declared} bytes but "
                               f"{size} arrived; nothing was kept")
            await asyncio.to_thread(_finish, out, digest, bytes(buffer))
        return size, digest.hexdigest()

    def _interrupted(self, up: _Upload, exc: BaseException) -> HttpError:
        self._stats["interrupted"] += 1
        self.events.emit(UploadInterrupted(tenant=up.tenant, name=up.name, bytes_received=up.received,
                                           error=str(exc) or type(exc).__name__))
        return HttpError(400, "interrupted", "the upload was interrupted before the body was "
                         "complete; nothing was kept, send the file again")

    def _refusal_response(self, request: web.Request, exc: HttpError) -> web.Response:
        response = error_response(exc.status, exc.code, exc.message, **exc.extra)
        if exc.status == 503 or not request.content.is_eof():
            left = request.content_length
            if left is None or left > _LINGER_MAX_BYTES:
                response.force_close()  # do not read a large refused body just to discard it
        return response

    def _log_refusal(self, request: web.Request, exc: HttpError) -> None:
        self._stats["rejected"] += 1
        name = request.match_info.get("name", "")
        tenant = request.match_info.get("id")
        if exc.code == "bad_name":  # never write an unsafe name into the log
            self.events.emit(UploadRejected(tenant=tenant, code=exc.code, status=exc.status, reason=exc.message,
                                            name_bytes=len(name.encode("utf-8", "surrogateescape"))))
        else:
            self.events.emit(UploadRejected(tenant=tenant, code=exc.code, status=exc.status, reason=exc.message,
                                            name=name))

    # -- GET files -------------------------------------------------------------------------

    async def list_files(self, request: web.Request) -> web.Response:
        """The tenant's most recent files (``?limit=``, ``?state=``), newest first."""
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        limit = int_param(request, "limit", 100, 1, _MAX_LIST)
        state = request.query.get("state")
        if state is not None and state not in {s.value for s in FileState}:
            raise HttpError(400, "bad_state", f"state must be one of {', '.join(s.value for s in FileState)}")
        if state is None:
            entries = await self.ledger.list(tenant, limit=limit)
        else:
            entries = (await self.ledger.find(tenant, states=[FileState(state)]))[::-1][:limit]
        return json_response({"tenant": tenant, "files": [_view(e) for e in entries]})

    async def get_file(self, request: web.Request) -> web.Response:
        """One file of the tenant by ledger id; 404 for unknown ids and other tenants' files."""
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        file_id = request.match_info["ledger_id"]
        entry = await self.ledger.get(file_id, tenant=tenant)
        if entry is None:
            raise HttpError(404, "unknown_file", f"tenant {tenant!r} has no file with id {file_id!r}")
        return json_response(_view(entry))


# -- helpers -------------------------------------------------------------------------------


def _refusal(code: str, message: str, **extra: Any) -> HttpError:
    return HttpError(STATUS_BY_CODE.get(code, 400), code, message, **extra)


def _safe(details: dict[str, object]) -> dict[str, object]:
    """Details of a :class:`FileRejected` that are plain JSON values."""
    return {k: v for k, v in details.items() if isinstance(v, str | int | float | bool | list)}


def batch_profile(profile: TenantProfile) -> BatchProfile:
    """The tenant's ``[batch]`` section; 404 ``no_batch`` without one."""
    if profile.batch is None:
        raise _refusal("no_batch", f"tenant {profile.id!r} has no [batch] section in its profile; "
                       "file uploads are off for it")
    return profile.batch


def _count_waiting(folder: Path) -> int:
    """Files waiting in a staging folder (hidden and in-progress files do not count)."""
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return 0


#: Ledger fields that are the platform's business (paths on its disks), not shown to tenants.
#: what a tenant is not shown of its entries: server paths, and which instance holds the file
#: under which lease (the platform's host names are not the tenants' business)
_PRIVATE = frozenset({"_id", "archive_path", "owner", "lease", "lease_until", "claimed_epoch", "settled_epoch"})


def _view(entry: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry as the tenant sees it: ``id`` instead of ``_id``, no server paths, no claims."""
    view = {"id": entry.get("_id")}
    view.update((k, v) for k, v in entry.items() if k not in _PRIVATE)
    return view


def _open_part(part: Path) -> BinaryIO:
    """A new, empty ``.part`` file (a stale one this instance's killed run left is replaced;
    another instance's never has this name)."""
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    # O_EXCL|O_NOFOLLOW: never write through a link someone placed at this path.
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    return os.fdopen(fd, "wb")


def _write(out: BinaryIO, digest: Any, data: bytes) -> None:
    digest.update(data)
    out.write(data)


def _finish(out: BinaryIO, digest: Any, data: bytes) -> None:
    if data:
        _write(out, digest, data)
    out.flush()
    os.fsync(out.fileno())


def _publish(part: Path, final: Path) -> None:
    """Make the complete file appear under its real name, atomically, never overwriting."""
    try:
        os.link(part, final)  # fails with FileExistsError instead of replacing a waiting file
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links
        if final.exists():
            raise FileExistsError(str(final)) from None
        os.rename(part, final)
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

