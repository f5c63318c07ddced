"""Replaying rejects: ``POST /tenants/{id}/rejects/replay`` (``mysimbdp rejects replay``).

The kept raw input of the tenant's rejects (those the filters ``file``, ``reason``,
``source``, ``since`` select, at most ``limit`` from the cursor ``after``, in ``_id`` order)
goes through the tenant's *current* app — typically after the tenant fixed it — and its
current schema contract, in the app's worker as in production. What now passes is written
with the ``_id`` a first attempt would have had (a file's ``<sha256[:20]>:<record number>``,
a message's ``m:<message_id>[:<index>]``): replaying twice writes nothing twice. Its rejects
are removed; what still fails stays, with the new ``kind`` and ``reason`` (and ``at`` the
time of the replay).

Which rejects can be replayed:

* files: those with the record as read (``wrangle``, ``check``, ``contract``, ``write``), of
  a file that is ``committed`` (a rejected file is loaded again instead; an undone one is
  gone). A ``parse`` reject is the reader's verdict on the text, which no app changes; a
  record cut to 256 KiB cannot be replayed either;
* stream: those of one record (``rejected``, ``app_error``, ``quality``, ``contract``,
  ``write_failed``: the record is kept in ``record``) and those of a whole message (an app
  failed on it, ``app_error``, ``app_failed``; a ``contract`` reject of a document whose
  record is not known, or of a message ``reject_file`` refused): its body is kept in ``raw``,
  or in the reject ``raw_in`` names, and the whole message is replayed (what of it was
  written already counts as ``already_present``). ``malformed``, ``too_large`` and ``too_many_records`` are not (the
  body is what it is).

The answer counts what happened: ``examined``, ``written``, ``already_present``,
``skipped`` (the app now returns None for it: removed), ``still_rejected``,
``not_replayable`` by reason, and ``next``, the cursor of the following page (a page ends
early past :data:`PAGE_BYTES` of kept input). One replay at a time per tenant; each app call
is bounded by :data:`APP_TIMEOUT_S`.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from pymongo.errors import PyMongoError

from mysimbdp.apps.contract import BatchContext
from mysimbdp.apps.runner import AppError, AppRef, AppSession, Runners
from mysimbdp.apps.runner.bounded import release_now, run_bounded
from mysimbdp.batch.constraints import detect_format
from mysimbdp.batch.ledger import FileState, Ledger
from mysimbdp.batch.lifecycle import route_for
from mysimbdp.batch.loader import (
    AppFailed,
    BatchProducer,
    FileJob,
    Prepared,
    lease_session,
    target_of,
)
from mysimbdp.batch.readers import Record
from mysimbdp.errors import FileRejected, PluginError
from mysimbdp.http.server import HttpError, int_param, json_response, require_tenant
from mysimbdp.store.browse import TenantDatabases, page_filter
from mysimbdp.store.rejects import KIND_LIMIT, REASON_LIMIT, REJECTS
from mysimbdp.store.schemas import SchemaRecorder
from mysimbdp.store.writes import RetryPolicy, TargetRefused, ensure_target, write
from mysimbdp.stream.apprun import AppRoute, AppRun
from mysimbdp.stream.records import Incoming, document_id, write_failed_reject
from mysimbdp.stream.topology import type_of
from mysimbdp.tenants import BatchProfile, StreamProfile, TenantProfile

__all__ = ["RejectsReplay", "MAX_REPLAY", "APP_TIMEOUT_S"]

MAX_REPLAY = 1000
MAX_CONCURRENT = 2  # replays at once on one instance, all tenants (one per tenant)
CHUNK = 1000  # records per call of a file's app
APP_TIMEOUT_S = 300.0
_HOLD_MARGIN_S = 60.0  # a file's entry is held against an undo this much longer than the app may take
PAGE_BYTES = 32 * 1024 * 1024  # kept input replayed in one call, about
_DEFAULT = 500
FILE_KINDS = frozenset({"wrangle", "check", "contract", "write"})
RECORD_KINDS = frozenset({"rejected", "app_error", "quality", "contract", "write_failed"})
MESSAGE_KINDS = frozenset({"app_error", "app_failed", "contract"})
_POLICY = RetryPolicy(max_delay_s=5.0, deadline_s=60.0)


@dataclass
class Tally:
    """What one replay did."""

    examined: int = 0
    written: int = 0
    already_present: int = 0
    skipped: int = 0
    still_rejected: int = 0
    not_replayable: Counter[str] = field(default_factory=Counter)

    def view(self) -> dict[str, Any]:
        """As the answer shows it."""
        return {"examined": self.examined, "written": self.written, "already_present": self.already_present,
                "skipped": self.skipped, "still_rejected": self.still_rejected,
                "not_replayable": dict(self.not_replayable)}


@dataclass
class _Fates:
    """Per reject ``_id``: resolved (its reject removed) or still failing (its new kind and reason);
    per whole message replayed, the rejects that replace all of its own."""

    resolved: list[str] = field(default_factory=list)
    failing: dict[str, tuple[str, str]] = field(default_factory=dict)
    replaced: list[tuple[str, str, list[dict[str, Any]]]] = field(default_factory=list)  # message, key, rejects


@dataclass
class _Replayed:
    """One message to send through the app again: a reject's record, or a whole message's body."""

    incoming: Incoming
    rejects: list[dict[str, Any]]  # the rejects it answers for
    index: int | None = None  # the record's place in its body (a record's replay)
    whole: bool = False


class RejectsReplay:
    """The handler of ``POST /tenants/{id}/rejects/replay`` (the tenant's token, or the admin's)."""

    def __init__(self, *, store: TenantDatabases, ledger: Ledger, runners: Runners,
                 schemas: SchemaRecorder | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.runners = runners
        self.schemas = schemas
        self._running: set[str] = set()

    async def replay(self, request: web.Request) -> web.Response:
        """Replay a page of the tenant's rejects that match the filters."""
        tenant = request.match_info["id"]
        profile = require_tenant(request, tenant)
        query = page_filter(request)
        limit = int_param(request, "limit", _DEFAULT, 1, MAX_REPLAY)
        if tenant in self._running:
            raise HttpError(429, "replay_running", "a replay of this tenant's rejects is running; wait for its answer",
                            headers={"Retry-After": "5"})
        if len(self._running) >= MAX_CONCURRENT:
            raise HttpError(429, "busy", "the platform runs as many replays as it allows; retry shortly",
                            headers={"Retry-After": "5"})
        self._running.add(tenant)
        try:
            page, more = await _page(self.store.tenant_db(tenant)[REJECTS], query, limit)
            tally = Tally(examined=len(page))
            await self._replay_page(profile, page, tally)
        except PyMongoError as exc:
            raise HttpError(503, "store_unavailable", "the platform's database cannot be reached; what was "
                            f"replayed so far stays done, retry later ({type(exc).__name__})") from None
        finally:
            self._running.discard(tenant)
        return json_response({"tenant": tenant, **tally.view(), "next": str(page[-1]["_id"]) if more else None})

    async def _replay_page(self, profile: TenantProfile, page: list[dict[str, Any]], tally: Tally) -> None:
        by_file: dict[str, list[dict[str, Any]]] = {}
        messages: list[dict[str, Any]] = []
        for reject in page:
            if reject.get("source") == "file":
                by_file.setdefault(str(reject.get("ledger_id")), []).append(reject)
            else:
                messages.append(reject)
        for ledger_id, rejects in by_file.items():
            await self._replay_file_held(profile, ledger_id, rejects, tally)
        if messages:
            await self._settle(profile.id, await self._replay_stream(profile, messages, tally), tally)

    # -- files -------------------------------------------------------------------------------
    async def _replay_file_held(self, profile: TenantProfile, ledger_id: str, rejects: list[dict[str, Any]],
                                tally: Tally) -> None:
        """Replay a file's rejects while holding its entry against an undo (it would remove the
        documents this writes, or this would write into a file undone)."""
        if not await self.ledger.hold_for_replay(ledger_id, APP_TIMEOUT_S + _HOLD_MARGIN_S):
            tally.not_replayable["file_not_committed"] += len(rejects)
            return
        try:
            await self._settle(profile.id, await self._replay_file(profile, ledger_id, rejects, tally), tally)
        finally:
            await self.ledger.release_replay_hold(ledger_id)

    async def _replay_file(self, profile: TenantProfile, ledger_id: str, rejects: list[dict[str, Any]],
                           tally: Tally) -> _Fates:
        fates = _Fates()
        entry = await self.ledger.get(ledger_id, tenant=profile.id)
        if profile.batch is None or entry is None or entry.get("state") != FileState.COMMITTED.value:
            tally.not_replayable["file_not_committed"] += len(rejects)
            return fates
        records: list[Record] = []
        for reject in rejects:
            why = _file_unreplayable(reject)
            if why is not None:
                tally.not_replayable[why] += 1
            else:
                records.append(Record(int(reject["record_number"]), reject["raw"]))
        if not records:
            return fates
        job = _file_job(profile, profile.batch, entry)
        by_number = {int(r["record_number"]): str(r["_id"]) for r in rejects if r.get("record_number") is not None}
        try:
            prepared, collection, indexes, evolved = await _in_thread(self._prepare_file, job, records)
        except (AppFailed, FileRejected, AppError, PluginError, TimeoutError) as exc:
            reason = _failure(exc)
            for record in records:
                fates.failing[by_number[record.number]] = ("app_failed", reason)
            return fates
        try:
            target = await ensure_target(self.store.tenant_db(profile.id), collection, indexes, policy=_POLICY)
        except TargetRefused as exc:
            for record in records:
                fates.failing[by_number[record.number]] = ("app_failed", f"app {job.app.name!r}: {exc}")
            return fates
        result = await write(target, prepared.docs, _POLICY)
        tally.written += result.written
        tally.already_present += result.duplicates
        refused = {index: reason for index, reason in result.failed}
        failing_numbers = {int(r["record_number"]): (str(r["kind"]), str(r["reason"])) for r in prepared.rejects
                           if r.get("record_number") is not None}
        for index, doc in enumerate(prepared.docs):
            number = int(str(doc["_id"]).rsplit(":", 1)[-1])
            if index in refused:
                failing_numbers[number] = ("write", refused[index])
        for record in records:
            reject_id = by_number[record.number]
            if record.number in failing_numbers:
                fates.failing[reject_id] = failing_numbers[record.number]
            else:
                fates.resolved.append(reject_id)
        tally.skipped += prepared.skipped
        if result.written:
            await self.ledger.add_replayed(entry["_id"], result.written)
        if evolved and self.schemas is not None and job.contract is not None:
            await self.schemas.record(profile.id, job.contract_scope, evolved, f"replay of file {entry.get('name')}",
                                      job.contract.fields)
        return fates

    def _prepare_file(self, leased: list[AppSession], job: FileJob,
                      records: list[Record]) -> tuple[Prepared, str, Any, dict[str, set[str]]]:
        """In a thread: the records through the app (its record hook, else its table hook) and the
        contract, :data:`CHUNK` records per call (a frame to a worker stays small)."""
        session = lease_session(self.runners, job)
        leased.append(session)
        healthy = False
        try:
            target = target_of(job, session)
            ctx = BatchContext(job.tenant, job.app.name, job.name, job.sha256, job.fmt)
            producer = BatchProducer(job, ctx, CHUNK, session)
            producer.whole_file = False  # a replay judges records, never the file
            step: Callable[[list[Record]], Prepared]
            if session.has("mysimbdp_batch_wrangle"):
                step = producer.wrangle_chunk
            elif session.has("mysimbdp_batch_wrangle_table"):
                step = producer.wrangle_rows
            else:
                raise AppFailed(f"app {job.app.name!r} has no batch hook")
            prepared = Prepared([], [])
            for lo in range(0, len(records), CHUNK):
                part = step(records[lo:lo + CHUNK])
                prepared.docs += part.docs
                prepared.raws += part.raws
                prepared.rejects += part.rejects
                prepared.skipped += part.skipped
            healthy = True
            return prepared, target.collection, target.indexes, producer.evolved
        finally:
            release_now(self.runners, session, healthy)

    # -- stream ------------------------------------------------------------------------------
    async def _replay_stream(self, profile: TenantProfile, rejects: list[dict[str, Any]], tally: Tally) -> _Fates:
        fates = _Fates()
        stream = profile.stream
        if stream is None:
            tally.not_replayable["no_stream"] += len(rejects)
            return fates
        items = await self._stream_items(profile.id, rejects, tally)
        if not items:
            return fates
        try:
            outcomes, evolved = await _in_thread(self._run_stream, profile.id, profile.runner, stream,
                                                 [item.incoming for item in items])
        except (AppError, PluginError, TimeoutError) as exc:
            for item in items:
                for reject in item.rejects:
                    fates.failing[str(reject["_id"])] = ("app_failed", _failure(exc))
            return fates
        db = self.store.tenant_db(profile.id)
        for item, (outcome, route) in zip(items, outcomes, strict=True):
            docs = outcome.documents.get(route.collection, [])
            msg_id = item.incoming.message_id or ""
            if item.index is not None:  # one record of an array body: the id its first attempt had
                for doc in docs:
                    if doc.get("_id") == document_id(msg_id, None):
                        doc["_id"] = document_id(msg_id, item.index)
            target = await ensure_target(db, route.collection, route.indexes, policy=_POLICY)
            result = await write(target, docs, _POLICY)
            tally.written += result.written
            tally.already_present += result.duplicates
            tally.skipped += outcome.skipped
            refused = [write_failed_reject(profile.id, route.app, docs[i], why) for i, why in result.failed]
            if item.whole:  # the message's new rejects replace every reject it had
                fates.replaced.append((msg_id, item.incoming.routing_key, [*outcome.rejects, *refused]))
                tally.still_rejected += 1 if outcome.rejects or refused else 0
                continue
            problems = [(str(r["kind"]), str(r["reason"])) for r in outcome.rejects]
            problems += [("write_failed", str(r["reason"])) for r in refused]
            reject_id = str(item.rejects[0]["_id"])
            if problems:
                fates.failing[reject_id] = problems[0]
            else:
                fates.resolved.append(reject_id)
        contract = stream.contract
        if evolved and self.schemas is not None and contract is not None:
            await self.schemas.record(profile.id, "stream", evolved, "replay of stream rejects", contract.fields)
        return fates

    async def _stream_items(self, tenant: str, rejects: list[dict[str, Any]], tally: Tally) -> list[_Replayed]:
        """What to replay: each message once — whole, if any of its rejects is of the whole message
        (then it answers for all of them), else each record-level reject's record."""
        db = self.store.tenant_db(tenant)
        by_message: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for reject in rejects:
            message_id, key = reject.get("message_id"), reject.get("routing_key")
            if not isinstance(message_id, str) or not isinstance(key, str) or not (
                    key == tenant or key.startswith(tenant + ".")):
                tally.not_replayable["no_message"] += 1
                continue
            by_message.setdefault((message_id, key), []).append(reject)
        items: list[_Replayed] = []
        for (message_id, key), group in by_message.items():
            if any(not _of_one_record(r) and r.get("kind") in MESSAGE_KINDS for r in group):
                body, why = await _body_of(group, db)
                if body is None:
                    tally.not_replayable[why] += len(group)
                else:
                    items.append(_Replayed(Incoming(tenant, key, body, message_id, None, {}), group, whole=True))
                continue
            for reject in group:
                if _of_one_record(reject):
                    index = reject.get("index")
                    items.append(_Replayed(Incoming(tenant, key, orjson.dumps(reject["record"]), message_id, None, {}),
                                           [reject], index if isinstance(index, int) else None))
                else:
                    tally.not_replayable[_kind_label(reject.get("kind"))] += 1
        return items

    def _run_stream(self, leased: list[AppSession], tenant: str, runner: Any, stream: StreamProfile,
                    messages: list[Incoming]) -> tuple[list[tuple[Any, AppRoute]], dict[str, set[str]]]:
        """In a thread: the messages through the stream apps of their routing keys, and the contract."""
        sessions: dict[str, AppSession] = {}
        routes: dict[str, AppRoute] = {}
        healthy = False

        def session_of(app: str) -> AppSession:
            if app not in sessions:
                sessions[app] = self.runners.lease(tenant, app, runner, "stream")
                leased.append(sessions[app])
            return sessions[app]

        try:
            items = []
            for incoming in messages:
                kind = type_of(tenant, incoming.routing_key)
                app = stream.apps.get(kind, stream.app) if kind else stream.app
                if app not in routes:
                    target = session_of(app).target("stream")
                    routes[app] = AppRoute(app, target.collection, tuple(target.indexes))
                items.append((incoming, routes[app]))
            run = AppRun(items, stream.min_quality, stream.max_records_per_message, session_of, 1, stream.contract)
            run()
            healthy = True
            return [(outcome, route) for outcome, (_, route) in zip(run.results, items, strict=True)], run.evolved
        finally:
            for session in sessions.values():
                release_now(self.runners, session, healthy)

    # -- the rejects -------------------------------------------------------------------------
    async def _settle(self, tenant: str, fates: _Fates, tally: Tally) -> None:
        """Give the rejects still failing their new kind and reason; write a replayed message's
        new rejects before removing its old ones; remove the resolved ones (a reject that holds a
        message's raw body hands it to one that points to it first)."""
        db = self.store.tenant_db(tenant)
        col = db[REJECTS]
        now = datetime.now(UTC)
        for reject_id, (kind, reason) in fates.failing.items():
            await col.update_one({"_id": reject_id}, {"$set": {"kind": kind[:KIND_LIMIT],
                                                              "reason": reason[:REASON_LIMIT], "at": now}})
        tally.still_rejected += len(fates.failing)
        for message_id, key, new in fates.replaced:
            for reject in new:  # the new kind and reason replace those of a reject of the same id
                await col.replace_one({"_id": reject["_id"]}, reject, upsert=True)
            keep = [r["_id"] for r in new]
            await col.delete_many({"source": "stream", "message_id": message_id, "routing_key": key,
                                   "_id": {"$nin": keep}})
        for reject_id in fates.resolved:
            await _hand_on_raw(col, reject_id, set(fates.resolved))
        if fates.resolved:
            await col.delete_many({"_id": {"$in": fates.resolved}})


async def _page(col: Any, query: dict[str, Any], limit: int) -> tuple[list[dict[str, Any]], bool]:
    """At most ``limit`` rejects in ``_id`` order, and at most about :data:`PAGE_BYTES` of kept
    input (a page of large message bodies ends early); whether more follow."""
    page: list[dict[str, Any]] = []
    size = 0
    async for doc in col.find(query).sort("_id", 1).limit(limit + 1):
        if len(page) >= limit or (page and size >= PAGE_BYTES):
            return page, True
        page.append(doc)
        for kept in (doc.get("raw"), doc.get("record")):
            if isinstance(kept, str):
                size += len(kept)
            elif kept is not None:
                size += len(orjson.dumps(kept, default=str))
    return page, False


def _file_unreplayable(reject: Mapping[str, Any]) -> str | None:
    """Why a file's reject cannot be replayed (None: it can)."""
    if reject.get("kind") not in FILE_KINDS:
        return f"kind_{reject.get('kind')}"
    if reject.get("record_number") is None:
        return "no_record_number"
    if not isinstance(reject.get("raw"), dict):
        return "raw_not_kept"  # cut to size, or never kept
    return None


def _of_one_record(reject: Mapping[str, Any]) -> bool:
    """Whether a stream reject is about one record, kept in ``record`` (replayed alone)."""
    return isinstance(reject.get("record"), dict) and reject.get("kind") in RECORD_KINDS


def _kind_label(kind: Any) -> str:
    """``kind_<kind>`` for the answer (a kind is the platform's word, or a bounded one an app gave)."""
    text = "".join(c if c.isalnum() or c in "_-" else "?" for c in str(kind)[:KIND_LIMIT])
    return f"kind_{text}"


async def _body_of(group: list[dict[str, Any]], db: Any) -> tuple[bytes | None, str]:
    """A message's body, from the reject of ``group`` that keeps it (or the one they point to)."""
    holder: Mapping[str, Any] | None = next((r for r in group if isinstance(r.get("raw"), str)), None)
    if holder is None:
        pointer = next((r["raw_in"] for r in group if isinstance(r.get("raw_in"), str)), None)
        holder = await db[REJECTS].find_one({"_id": pointer}) if pointer is not None else None
    raw = None if holder is None else holder.get("raw")
    if holder is None or not isinstance(raw, str):
        return None, "raw_not_kept"
    try:
        body = base64.b64decode(raw, validate=True) if holder.get("raw_encoding") == "base64" else raw.encode()
    except (binascii.Error, ValueError):
        return None, "raw_not_kept"
    if isinstance(holder.get("raw_bytes"), int) and holder["raw_bytes"] > len(body):
        return None, "raw_cut"
    return body, ""


async def _hand_on_raw(col: Any, reject_id: str, leaving: set[str]) -> None:
    """Before a reject holding a message's raw body is removed, give the body to a reject of the
    same message that stays and points to it, and point the others to that one."""
    holder = await col.find_one({"_id": reject_id, "raw": {"$ne": None}})
    if holder is None or not isinstance(holder.get("raw"), str):
        return
    staying = [d async for d in col.find({"raw_in": reject_id}, {"_id": 1}) if d["_id"] not in leaving]
    if not staying:
        return
    heir = staying[0]["_id"]
    await col.update_one({"_id": heir}, {"$set": {"raw": holder["raw"], "raw_bytes": holder.get("raw_bytes"),
                                                 "raw_encoding": holder.get("raw_encoding"), "raw_in": None}})
    for other in staying[1:]:
        await col.update_one({"_id": other["_id"]}, {"$set": {"raw_in": heir}})


def _file_job(profile: TenantProfile, batch: BatchProfile, entry: Mapping[str, Any]) -> FileJob:
    """The job a replay of this file's rejects runs as: the route's current app and contract."""
    name = str(entry.get("name"))
    route = route_for(batch, name)
    scope, contract = batch.contract_of(route)
    fmt = str(entry.get("format") or detect_format(name) or "jsonl")
    return FileJob(profile.id, name, Path(name), str(entry["_id"]), str(entry.get("sha256")), int(entry.get("bytes") or 0),
                   fmt, AppRef(route.app if route else batch.app, profile.runner), batch.max_file_bytes,
                   batch.max_error_rate, route.pattern if route else None, contract=contract, contract_scope=scope)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(leased, *args)``, at most :data:`APP_TIMEOUT_S` (:func:`run_bounded`)."""
    return await run_bounded(fn, *args, timeout_s=APP_TIMEOUT_S, name="replay")


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"the app did not finish the replay within {APP_TIMEOUT_S:g} s"
    if isinstance(exc, FileRejected):
        return exc.message
    return str(exc)[:1000] or type(exc).__name__


