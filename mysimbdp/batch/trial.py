"""Dry-run of a file: ``POST /tenants/{id}/try?name=<file name>[&limit=N]`` (``mysimbdp try``).

The body goes through what a staged file goes through — the name and the profile's
admission checks (format, size, quota, staged files), the duplicate check, the sniff, the
reader and the tenant's app in its worker, the schema contract — and nothing is written: no
ledger entry, no document, no reject, no archive. The answer:

* ``admitted`` (and ``code``/``reason`` when the admission refused it: nothing more is run);
* ``verdict``: ``commit``, or ``reject`` with the ``code`` and ``reason`` the load would end
  with (``error_rate``, ``app_failed``, ``content``, ``contract``, ``timeout``);
* ``counts`` (records in, documents, rejected, skipped) and ``rejects_by_kind``;
* ``documents``: the first ``limit`` documents as they would be stored (``_id`` included);
* ``rejects``: every reject with its reason (the first :data:`MAX_REJECTS`);
* ``fields``: per field of the documents, how many have it, nulls, the types seen, min/max;
* ``evolved``: the fields an ``evolve`` contract would add to the schema history;
* ``estimate``: records/s of this dry-run (reading and the app, no writes) and of the
  tenant's recent loads, and the time a load of this file would take at the latter.

The body is written to a file under ``<var>/try`` that has no name (``O_TMPFILE``: a crash
leaves nothing); at most ``try_max_bytes`` (and the tenant's
``max_file_bytes``), one dry-run per tenant and ``max_concurrent_tries`` in all, each at most
``try_timeout_s`` (and the route's ``timeout_s``): past it the worker is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import orjson
from aiohttp import web
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from mysimbdp.apps.contract import BatchContext
from mysimbdp.apps.runner import AppRef, AppSession, Runners
from mysimbdp.apps.runner.bounded import release_now, run_bounded
from mysimbdp.apps.runner.calls import collection_problem
from mysimbdp.batch.constraints import check_file, check_name
from mysimbdp.batch.intake import StagedUsage, batch_profile
from mysimbdp.batch.ledger import FileState, Ledger
from mysimbdp.batch.lifecycle import route_for
from mysimbdp.batch.loader import (
    AppFailed,
    BatchProducer,
    FileJob,
    guarded,
    lease_session,
    target_of,
)
from mysimbdp.batch.readers import sniff
from mysimbdp.batch.staged import StagedFile
from mysimbdp.config import BatchSettings
from mysimbdp.errors import FileRejected, PluginError
from mysimbdp.http.server import HttpError, int_param, json_response, require_tenant
from mysimbdp.store.contracts import type_name
from mysimbdp.store.writes import without_nan
from mysimbdp.tenants import BatchProfile, BatchRoute, TenantProfile

__all__ = ["FileTrial", "FieldSummary", "MAX_DOCUMENTS", "MAX_REJECTS"]

MAX_DOCUMENTS = 1000
MAX_REJECTS = 1000
MAX_FIELDS = 200  # fields summarised (the first seen)
MAX_SHOWN_BYTES = 8 * 1024 * 1024  # documents shown, as JSON, at most
_DEFAULT_DOCUMENTS = 10
_TEXT_SHOWN = 100  # characters of a text min/max shown
_RAW_SHOWN = 2000  # characters of a reject's raw input shown
_RECENT_FILES = 5
_CHUNK_BYTES = 1024 * 1024


class FileTrial:
    """The handler of ``POST /tenants/{id}/try`` (the tenant's token, or the admin's)."""

    def __init__(self, *, settings: BatchSettings, runners: Runners, ledger: Ledger, usage: StagedUsage,
                 var_dir: Path) -> None:
        self.settings = settings
        self.runners = runners
        self.ledger = ledger
        self.usage = usage
        self.folder = var_dir / "try"
        self._running: set[str] = set()

    async def try_file(self, request: web.Request) -> web.Response:
        """Run the body through admission, reader, app and contract; write nothing."""
        tenant = request.match_info["id"]
        profile = require_tenant(request, tenant)
        batch = batch_profile(profile)
        name = request.query.get("name", "")
        limit = int_param(request, "limit", _DEFAULT_DOCUMENTS, 0, MAX_DOCUMENTS)
        unknown = sorted(set(request.query) - {"name", "limit"})
        if unknown:
            raise HttpError(400, "bad_parameter", f"unknown parameter {unknown[0]!r}; the parameters are name, limit")
        max_bytes = min(self.settings.try_max_bytes, batch.max_file_bytes)
        if request.content_length is not None and request.content_length > max_bytes:
            raise HttpError(413, "too_big", f"a dry-run takes at most {max_bytes} bytes; send the first part of "
                            "the file", limit=max_bytes)
        if tenant in self._running:
            raise HttpError(429, "try_running", "a dry-run of this tenant is running; wait for its answer",
                            headers={"Retry-After": "5"})
        if len(self._running) >= self.settings.max_concurrent_tries:
            raise HttpError(429, "busy", "the platform runs as many dry-runs as it allows; retry shortly",
                            headers={"Retry-After": "5"})
        self._running.add(tenant)
        staged: StagedFile | None = None
        try:
            staged = await self._receive(request, max_bytes, name)
            return json_response(await self._trial(profile, batch, name, staged, limit))
        finally:
            self._running.discard(tenant)
            if staged is not None:
                with contextlib.suppress(OSError):
                    staged.close()

    async def _receive(self, request: web.Request, max_bytes: int, name: str) -> StagedFile:
        """The body in a file without a name (nothing is left of it after a crash): read as a
        staged file is, through its descriptor."""
        await asyncio.to_thread(self.folder.mkdir, mode=0o700, parents=True, exist_ok=True)
        fd = await asyncio.to_thread(_anonymous_file, self.folder)
        try:
            size = 0
            async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise HttpError(413, "too_big", f"a dry-run takes at most {max_bytes} bytes; send the first "
                                    "part of the file", limit=max_bytes)
                await asyncio.to_thread(_write_all, fd, chunk)
            return StagedFile(fd, await asyncio.to_thread(os.fstat, fd), name)
        except BaseException:
            os.close(fd)
            raise

    async def _trial(self, profile: TenantProfile, batch: BatchProfile, name: str, staged: StagedFile,
                     limit: int) -> dict[str, Any]:
        tenant = profile.id
        try:
            job, route = await self._admit(profile, batch, name, staged)
        except FileRejected as exc:
            return {"tenant": tenant, "name": name, "bytes": staged.size, "admitted": False, "code": exc.code,
                    "reason": exc.message}
        timeout = min(self.settings.try_timeout_s, route.timeout_s if route else batch.timeout_s)
        result = await self._run(job, limit, timeout)
        answer = {"tenant": tenant, "name": name, "bytes": staged.size, "admitted": True, "format": job.fmt,
                  "app": job.app.name, "route": job.route, **result.answer(batch.max_error_rate)}
        answer["estimate"] = await self._estimate(tenant, result)
        return answer

    async def _admit(self, profile: TenantProfile, batch: BatchProfile, name: str,
                     staged: StagedFile) -> tuple[FileJob, BatchRoute | None]:
        """What admission would say of a file of this name and content (:class:`FileRejected` if it refuses)."""
        check_name(name)
        try:
            usage = await self.usage.usage(profile.id)
            fmt = check_file(batch, name, staged.size, usage)
            sha = await asyncio.to_thread(staged.sha256)
            if await self.ledger.find(profile.id, sha256=sha, states=[FileState.COMMITTED, FileState.UNDOING]):
                raise FileRejected("duplicate", "a file with the same content was already loaded; it would not be "
                                   "loaded twice")
        except PyMongoError as exc:
            raise HttpError(503, "store_unavailable", "the platform's database cannot be reached; retry later "
                            f"({type(exc).__name__})") from None
        await asyncio.to_thread(sniff, staged, fmt)
        route = route_for(batch, name)
        app = route.app if route else batch.app
        try:
            self.runners.check(app)
        except PluginError as exc:
            raise FileRejected("no_app", str(exc)) from None
        scope, contract = batch.contract_of(route)
        job = FileJob(profile.id, name, Path(name), "try", sha, staged.size, fmt, AppRef(app, profile.runner),
                      batch.max_file_bytes, batch.max_error_rate, route.pattern if route else None, staged=staged,
                      contract=contract, contract_scope=scope)
        return job, route

    async def _run(self, job: FileJob, limit: int, timeout: float) -> Trial:
        """The file through the app in its worker (from a thread of its own), collected, never
        written; everything the app does — starting, its target, wrangling — within ``timeout``."""
        trial = Trial(limit)
        started = time.monotonic()
        try:
            await run_bounded(self._in_thread, job, trial, timeout_s=timeout, name=f"try-{job.tenant}")
        except TimeoutError:
            trial.fail("timeout", f"the dry-run ran past {timeout:g} s (try_timeout_s, or the route's "
                       "timeout_s); the app was stopped. Send a smaller part of the file")
        except AppFailed as exc:
            trial.fail("app_failed", f"app {job.app.name!r} failed on the file: {exc}")
        except FileRejected as exc:
            trial.fail(exc.code, exc.message)
        finally:
            trial.seconds = time.monotonic() - started
        return trial

    def _in_thread(self, leased: list[AppSession], job: FileJob, trial: Trial) -> None:
        session = lease_session(self.runners, job)
        leased.append(session)
        healthy = False
        producer: BatchProducer | None = None
        try:
            target = target_of(job, session)
            problem = collection_problem(target.collection)
            if problem is not None:
                raise AppFailed(f"it declares an invalid target collection: {problem}")
            trial.collection = target.collection
            ctx = BatchContext(job.tenant, job.app.name, job.name, job.sha256, job.fmt)
            producer = BatchProducer(job, ctx, self.settings.write_batch_size, session)
            guarded(_collect, producer, trial)
            trial.evolved = {k: sorted(v) for k, v in producer.evolved.items()}
            healthy = True
        finally:
            if producer is not None:
                producer.close()
            release_now(self.runners, session, healthy)

    async def _estimate(self, tenant: str, trial: Trial) -> dict[str, Any]:
        """The dry-run's rate, the tenant's recent loads' rate, and the load time it predicts."""
        records = trial.records_in
        recent: float | None = None
        with contextlib.suppress(PyMongoError):
            done = await self.ledger.last_committed(tenant, _RECENT_FILES)
            seconds = sum(float(d.get("seconds") or 0) for d in done)
            if seconds > 0:
                recent = sum(int(d.get("records_in") or 0) for d in done) / seconds
        tried = records / trial.seconds if trial.seconds > 0 else None
        rate = recent or tried
        return {"records": records, "dry_run_s": round(trial.seconds, 3),
                "dry_run_records_per_s": None if tried is None else round(tried, 1),
                "recent_loads_records_per_s": None if recent is None else round(recent, 1),
                "load_s": round(records / rate, 1) if rate else None,
                "based_on": "recent_loads" if recent else "dry_run"}


@dataclass
class FieldSummary:
    """What the documents hold in one field."""

    present: int = 0
    nulls: int = 0
    types: Counter[str] = field(default_factory=Counter)
    min: Any = None
    max: Any = None

    def add(self, value: Any) -> None:
        """Count one document's value of the field."""
        self.present += 1
        kind = type_name(value)
        self.types[kind] += 1
        if value is None:
            self.nulls += 1
            return
        if kind in ("int", "long", "double", "date", "string"):
            key = value[:_TEXT_SHOWN] if isinstance(value, str) else value
            with contextlib.suppress(TypeError):  # an int beside a date: each kept apart by type
                if self.min is None or key < self.min:
                    self.min = key
                if self.max is None or key > self.max:
                    self.max = key

    def view(self, documents: int) -> dict[str, Any]:
        """As the answer shows it."""
        return {"present": self.present, "missing": documents - self.present, "nulls": self.nulls,
                "types": dict(self.types.most_common()), "min": self.min, "max": self.max}


class Trial:
    """What a dry-run saw, collected in its thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.records_in = self.documents_count = self.rejected = self.skipped = 0
        self.documents: list[dict[str, Any]] = []
        self.rejects: list[dict[str, Any]] = []
        self.by_kind: Counter[str] = Counter()
        self.fields: dict[str, FieldSummary] = {}
        self.more_fields = 0
        self.failure: tuple[str, str] | None = None
        self.collection: str | None = None
        self.evolved: dict[str, list[str]] = {}  # fields an ``evolve`` contract would accept
        self.shown_bytes = 0
        self.documents_cut = False  # documents left out of the answer past MAX_SHOWN_BYTES
        self.seconds = 0.0

    def fail(self, code: str, reason: str) -> None:
        """The load would be rejected as a whole."""
        self.failure = (code, reason)

    def add_document(self, raw: Mapping[str, Any]) -> None:
        """One document the load would write."""
        doc = without_nan(bson.decode(raw.raw) if isinstance(raw, RawBSONDocument) else dict(raw))
        self.documents_count += 1
        if len(self.documents) < self.limit and not self.documents_cut:
            self.shown_bytes += len(orjson.dumps(doc, default=str))
            if self.shown_bytes > MAX_SHOWN_BYTES:
                self.documents_cut = True  # the answer stays small whatever the app makes
            else:
                self.documents.append(doc)
        for key, value in doc.items():
            summary = self.fields.get(key)
            if summary is None:
                if len(self.fields) >= MAX_FIELDS:
                    self.more_fields += 1
                    continue
                summary = self.fields[key] = FieldSummary()
            summary.add(value)

    def add_reject(self, reject: Mapping[str, Any]) -> None:
        """One reject the load would keep."""
        self.rejected += 1
        self.by_kind[str(reject.get("kind"))] += 1
        if len(self.rejects) < MAX_REJECTS:
            raw = reject.get("raw")
            text = raw if isinstance(raw, str) else orjson.dumps(raw, default=str).decode("utf-8", "replace")
            if len(text) > _RAW_SHOWN:
                raw = text[:_RAW_SHOWN]  # a record as text, cut
            self.rejects.append({"record_number": reject.get("record_number"), "kind": reject.get("kind"),
                                 "reason": reject.get("reason"), "raw": raw})

    def answer(self, max_error_rate: float) -> dict[str, Any]:
        """The verdict and what was seen."""
        verdict: dict[str, Any] = {"verdict": "commit"}
        rate = self.rejected / self.records_in if self.records_in else 0.0
        if self.failure is not None:
            verdict = {"verdict": "reject", "code": self.failure[0], "reason": self.failure[1]}
        elif rate > max_error_rate:
            verdict = {"verdict": "reject", "code": "error_rate",
                       "reason": f"{self.rejected} of {self.records_in} records ({rate:.1%}) were malformed or "
                                 f"rejected, over the tenant's max_error_rate of {max_error_rate:.1%}"}
        return {**verdict, "collection": self.collection,
                "counts": {"records_in": self.records_in, "documents": self.documents_count,
                           "rejected": self.rejected, "skipped": self.skipped},
                "rejects_by_kind": dict(self.by_kind), "documents": self.documents,
                "documents_cut": self.documents_cut, "rejects": self.rejects, "rejects_shown": len(self.rejects),
                "fields": {k: s.view(self.documents_count) for k, s in self.fields.items()},
                "more_fields": self.more_fields, "evolved": self.evolved}


def _collect(producer: BatchProducer, trial: Trial) -> None:
    """In the dry-run's thread: every batch the producer prepares, into ``trial``."""
    for prepared in producer.batches():
        trial.records_in += prepared.records_in
        trial.skipped += prepared.skipped
        for doc in prepared.docs:
            trial.add_document(doc)
        for reject in prepared.rejects:
            trial.add_reject(reject)


def _anonymous_file(folder: Path) -> int:
    """A new file in ``folder`` that no name leads to (``O_TMPFILE``; where the file system has
    none, a file created and unlinked at once)."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        path = folder / f".{uuid.uuid4().hex}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        path.unlink()
        return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


