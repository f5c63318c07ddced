"""Loading one file: parse, hand records to the tenant's app, write documents exactly once.

Parsing and wrangling run in a worker thread, one batch ahead of the writes: while batch
*k* is being written by the event loop, batch *k+1* is being parsed and wrangled, so the
store and the CPU work at the same time and the event loop stays responsive. Memory is
bounded by two batches whatever the file size.

Exactly once: document *n* of a file gets ``_id = "<sha256[:20]>:<n>"``; documents are
written with unordered ``insert`` commands and duplicate-key errors count as already
present, so a file re-loaded after a crash ends with every record exactly once. The writes,
their retries (transient errors for ``batch.write_retry_deadline_s``, then the file is
deferred), the target check and the ``_rejects`` schema are the store's, shared with the
stream (:mod:`mysimbdp.store.writes`, :mod:`mysimbdp.store.rejects`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pymongo.errors import OperationFailure, PyMongoError

from mysimbdp.apps.contract import BatchContext, Target
from mysimbdp.apps.runner import AppError, AppRef, AppSession, Runners
from mysimbdp.batch.arrow_bson import encode_rows
from mysimbdp.batch.readers import (
    RAW_LIMIT,
    ArrowBatch,
    Malformed,
    Record,
    infer_csv_schema,
    iter_arrow_batches,
    iter_records,
    open_stream,
)
from mysimbdp.batch.staged import StagedFile
from mysimbdp.errors import FileRejected, PluginError, Reject
from mysimbdp.events import Emitter
from mysimbdp.events.catalog import (
    BatchAppStuck,
    BatchFileProgress,
    BatchFileRollbackFailed,
    BatchFileRolledBack,
    BatchStoreRetry,
)
from mysimbdp.store.contracts import Contract, check_document
from mysimbdp.store.mongo import Store
from mysimbdp.store.rejects import reject_document
from mysimbdp.store.schemas import SchemaRecorder
from mysimbdp.store.writes import (
    DEFAULT_DEADLINE_S,
    RetryPolicy,
    TargetRefused,
    ensure_target,
    write,
    write_rejects,
)

__all__ = ["FileJob", "Counts", "FileLoader", "BatchProducer", "Prepared", "AppFailed", "id_prefix",
           "id_range", "lease_session", "give_back", "target_of", "guarded", "ARROW_BLOCK_BYTES"]

# CSV is parsed in blocks of ARROW_BLOCK_BYTES (Arrow's reader needs memory many times its
# block) and wrangled and encoded in batches of about ARROW_BATCH_BYTES of column data
# (each batch costs some hundred compute calls, whatever its rows).
ARROW_BLOCK_BYTES = 128 * 1024
ARROW_BATCH_BYTES = 512 * 1024
#: Longest wait between two attempts of a write while the store is unreachable.
_RETRY_MAX_S = 5.0
_EMPTY = pa.scalar("", pa.string())
_SETTLE_S = 5.0
_MAX_EVOLVED = 500  # new fields one file may add to the tenant's schema history


def id_prefix(sha256: str) -> str:
    """The ``_id`` prefix of every document of the file with this sha256."""
    return sha256[:20] + ":"


def id_range(sha256: str) -> dict[str, Any]:
    """The query of every document of the file with this sha256 (its ``_id`` prefix as a range)."""
    prefix = id_prefix(sha256)
    return {"_id": {"$gte": prefix, "$lt": prefix[:-1] + ";"}}


@dataclass
class FileJob:
    """A file that passed the constraints and is about to load."""

    tenant: str
    name: str
    path: Path
    ledger_id: str
    sha256: str
    size: int
    fmt: str
    app: AppRef
    max_file_bytes: int
    max_error_rate: float
    route: str | None = None
    #: the descriptor opened at admission: every read of the file goes through it (never the path)
    staged: StagedFile | None = None
    #: decompressed bytes the tenant's storage quota leaves for this file (None: no limit)
    quota_bytes: int | None = None
    #: the schema contract of the file's documents (None: none) and its scope in the schema history
    contract: Contract | None = None
    contract_scope: str = "batch"


@dataclass
class Counts:
    """What happened to a file's records."""

    records_in: int = 0
    records_written: int = 0
    records_rejected: int = 0
    duplicates: int = 0
    records_skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as event/ledger fields."""
        return dict(self.__dict__)


@dataclass
class Prepared:
    """One batch ready to write: documents (with raw records) and reject documents."""

    docs: list[Mapping[str, Any]]
    raws: list[Any]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    records_in: int = 0
    skipped: int = 0


class AppFailed(Exception):
    """The app failed on the file as a whole (wraps whatever it raised)."""


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Reject) else f"{type(exc).__name__}: {exc}"


def _cut(raw: Any) -> Any:
    if isinstance(raw, str) and len(raw) > RAW_LIMIT:
        return raw[:RAW_LIMIT]
    if isinstance(raw, dict | list):  # a huge record must not make its reject unstorable too
        text = orjson.dumps(raw, default=str)
        if len(text) > RAW_LIMIT:
            return text[:RAW_LIMIT].decode("utf-8", "replace")
    return raw


class BatchProducer:
    """Runs in the worker thread: reads, wrangles and yields :class:`Prepared` batches."""

    def __init__(self, job: FileJob, ctx: BatchContext, chunk_size: int, session: AppSession) -> None:
        self.job, self.ctx, self.chunk_size, self.session = job, ctx, chunk_size, session
        self.prefix = id_prefix(job.sha256)
        self._prefix_scalar = pa.scalar(self.prefix, pa.string())
        self.now = datetime.now(UTC)
        self.stream: IO[bytes] | None = None  # opened by batches()
        #: fields (and their types) the contract's ``evolve`` accepted in this file
        self.evolved: dict[str, set[str]] = {}
        #: a ``reject_file`` contract fails the file (False: rejects the record, for a replay)
        self.whole_file = True

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def reject(self, number: int | None, stage: str, reason: str, raw: Any, key: str | None = None,
               document_id: str | None = None) -> dict[str, Any]:
        """A document for ``_rejects`` (deterministic ``_id``: a re-load does not repeat it)."""
        job = self.job
        return reject_document(id=f"{self.prefix}{key or number}", source="file", kind=stage, reason=reason,
                               tenant=job.tenant, app=job.app.name, at=self.now, file=job.name,
                               ledger_id=job.ledger_id, sha256=job.sha256, record_number=number, raw=_cut(raw),
                               document_id=document_id)

    def contracted(self, doc: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """``doc`` as the contract lets it be written (None, and why: rejected). A violation
        under ``reject_file`` fails the whole file."""
        contract = self.job.contract
        if contract is None:
            return doc, ""
        checked = check_document(contract, doc)
        if checked.reject_file and self.whole_file:
            raise FileRejected("contract", f"document {doc.get('_id')} violates the contract "
                               f"(on_violation = reject_file): {checked.reason}"[:1000])
        for name, kind in checked.evolved.items():
            if name in self.evolved or len(self.evolved) < _MAX_EVOLVED:
                self.evolved.setdefault(name, set()).add(kind)
        return checked.document, checked.reason

    def batches(self) -> Iterator[Prepared]:
        """Columnar for CSV when the app has the table hook, else record by record."""
        session = self.session
        job = self.job
        self.stream = open_stream(job.staged or job.path, job.fmt, job.max_file_bytes, job.quota_bytes)
        if self.job.fmt.startswith("csv") and session.has("mysimbdp_batch_wrangle_table"):
            return self._columnar()
        if not session.has("mysimbdp_batch_wrangle"):
            raise AppFailed(f"app {session.name!r} implements only mysimbdp_batch_wrangle_table, which "
                            f"handles CSV; it cannot load {self.job.fmt} files")
        return self._per_record()

    # -- per-record path -------------------------------------------------------------------
    def _per_record(self) -> Iterator[Prepared]:
        assert self.stream is not None
        for chunk in iter_records(self.stream, self.job.fmt, self.chunk_size):
            yield self.wrangle_chunk(chunk)

    def wrangle_chunk(self, chunk: Sequence[Record | Malformed]) -> Prepared:
        """Records through the app's record hook, then the contract: documents and rejects."""
        out = Prepared([], [], records_in=len(chunk))
        docs, raws, rejects = out.docs, out.raws, out.rejects
        records = [item for item in chunk if type(item) is Record]
        results = self._app(self.session.wrangle_records, [item.value for item in records], self.ctx) \
            if records else []
        fates = dict(zip((id(item) for item in records), results, strict=True))
        for item in chunk:
            if type(item) is Malformed:
                rejects.append(self.reject(item.number, "parse", item.reason, item.raw))
                continue
            assert isinstance(item, Record)
            fate = fates[id(item)]
            if fate.doc is not None:
                fate.doc["_id"] = f"{self.prefix}{item.number}"
                doc, violation = self.contracted(fate.doc)
                if doc is not None:
                    docs.append(doc)
                    raws.append(item.value)
                else:
                    rejects.append(self.reject(item.number, "contract", violation, item.value))
            elif fate.stage is not None:
                rejects.append(self.reject(item.number, fate.stage, fate.reason or "", item.value))
            else:
                out.skipped += 1
        return out

    def wrangle_rows(self, records: Sequence[Record]) -> Prepared:
        """Records (values as a columnar read parsed them) through the app's table hook, its
        check hook and the contract: for an app that has no record hook (a replay)."""
        out = Prepared([], [], records_in=len(records))
        if not records:
            return out
        table = self._app(self.session.wrangle_table, pa.RecordBatch.from_pylist([r.value for r in records]),
                          self.ctx)
        if table.num_rows != len(records):
            raise AppFailed(f"mysimbdp_batch_wrangle_table returned {table.num_rows} rows for {len(records)}")
        marks = table.column("_reject").to_pylist() if "_reject" in table.schema.names else [None] * len(records)
        if "_reject" in table.schema.names:
            table = table.drop_columns(["_reject"])
        rows = [{**row, "_id": f"{self.prefix}{r.number}"} for r, row in zip(records, table.to_pylist(), strict=True)]
        check = self.session.has("mysimbdp_batch_check")
        problems = self._app(self.session.check_documents, rows, self.ctx) if check else [None] * len(rows)
        for record, row, mark, problem in zip(records, rows, marks, problems, strict=True):
            if mark is not None or problem is not None:
                stage, why = ("wrangle", str(mark)) if mark is not None else ("check", str(problem))
                out.rejects.append(self.reject(record.number, stage, why, record.value))
                continue
            doc, violation = self.contracted(row)
            if doc is None:
                out.rejects.append(self.reject(record.number, "contract", violation, record.value))
            else:
                out.docs.append(doc)
                out.raws.append(record.value)
        return out

    @staticmethod
    def _app(fn: Any, *args: Any) -> Any:
        """A call of the app (wherever it runs); its failure fails the file."""
        try:
            return fn(*args)
        except AppError as exc:
            raise AppFailed(str(exc)) from None

    # -- columnar path ---------------------------------------------------------------------
    def _columnar(self) -> Iterator[Prepared]:
        job = self.job
        schema = infer_csv_schema(job.staged or job.path, job.fmt, job.max_file_bytes, ARROW_BLOCK_BYTES)
        declared = self._app(self.session.columns, self.ctx) if self.session.has("mysimbdp_batch_columns") else {}
        schema = pa.schema([pa.field(f.name, declared.get(f.name, f.type)) for f in schema])
        check = self.session.has("mysimbdp_batch_check")

        def reopen() -> IO[bytes]:
            self.close()  # the columnar reader gave up on it: read the file again
            self.stream = open_stream(job.staged or job.path, job.fmt, job.max_file_bytes, job.quota_bytes)
            return self.stream

        assert self.stream is not None
        for ab in iter_arrow_batches(self.stream, schema, ARROW_BLOCK_BYTES, ARROW_BATCH_BYTES, reopen):
            out = self._app(self.session.wrangle_table, ab.batch, self.ctx)
            refused = self._refused(ab, out)
            if "_reject" in out.schema.names:
                out = out.drop_columns(["_reject"])
            # BSON for the whole block at once (per-call costs of the kernels amortised), unless
            # the app checks each document (it needs dicts) or a column type is not handled
            encoded = None if check or self.job.contract else encode_rows(out, self._id_array(ab, 0, out.num_rows))
            if encoded is None:
                out = _naive_utc(out)
            # slices of write_batch_size rows: bounded memory and one write in flight per slice
            for lo in range(0, max(out.num_rows, 1), self.chunk_size):
                part = None if encoded is None else encoded[lo:lo + self.chunk_size]
                prep = self._documents(ab, out.slice(lo, self.chunk_size), lo, refused, check, part)
                if lo == 0:
                    prep.records_in += len(ab.malformed)
                    prep.rejects[:0] = [self.reject(number, "parse", reason, raw,
                                                    key=None if number is not None else f"m{ab.first}.{k}")
                                        for k, (number, reason, raw) in enumerate(ab.malformed)]
                yield prep

    def _refused(self, ab: ArrowBatch, out: pa.RecordBatch) -> dict[int, tuple[str, str]]:
        """Rows not to write: values that did not fit their column, and rows the app marked."""
        refused: dict[int, tuple[str, str]] = {i: ("parse", reason) for i, reason, _ in ab.bad}
        if "_reject" in out.schema.names:
            for i, reason in enumerate(out.column("_reject").to_pylist()):
                if reason is not None and i not in refused:
                    refused[i] = ("wrangle", str(reason))
        return refused

    def _documents(self, ab: ArrowBatch, out: pa.RecordBatch, lo: int, refused: dict[int, tuple[str, str]],
                   check: bool, encoded: Sequence[Mapping[str, Any]] | None) -> Prepared:
        """Documents of rows ``lo .. lo + out.num_rows`` of the block (``out`` is that slice).

        ``encoded`` holds the slice's rows already encoded as BSON (None: build dicts here).
        """
        n = out.num_rows
        prep = Prepared([], [], records_in=n)
        mine = {i - lo: r for i, r in refused.items() if lo <= i < lo + n}
        if encoded is not None and not check:
            prep.docs = [doc for i, doc in enumerate(encoded) if i not in mine] if mine else list(encoded)
        else:
            keys = ["_id", *out.schema.names]
            rows = [(i, dict(zip(keys, row, strict=True)))
                    for i, row in enumerate(_rows(self._id_array(ab, lo, n).to_pylist(), out)) if i not in mine]
            problems = self._app(self.session.check_documents, [doc for _, doc in rows], self.ctx) if check and rows \
                else [None] * len(rows)
            for (i, doc), problem in zip(rows, problems, strict=True):
                if problem is not None:
                    mine[i] = ("check", problem)
                    continue
                kept, violation = self.contracted(doc)
                if kept is None:
                    mine[i] = ("contract", violation)
                else:
                    prep.docs.append(kept)
        prep.raws = [None] * len(prep.docs)
        if mine:
            as_read = {i: raw for i, _, raw in ab.bad}  # the text of values that did not parse
            for i, (stage, reason) in sorted(mine.items()):
                raw = as_read.get(lo + i) or ab.batch.slice(lo + i, 1).to_pylist()[0]
                prep.rejects.append(self.reject(ab.number(lo + i), stage, reason, raw))
        return prep

    def _id_array(self, ab: ArrowBatch, lo: int, n: int) -> pa.Array:
        """The deterministic ``_id``s (``<prefix><record number>``) of rows ``lo .. lo + n - 1``
        of the batch, as an Arrow string array built by Arrow."""
        numbers = pa.array(ab.numbers_of(lo, n), pa.int64())
        return pc.binary_join_element_wise(self._prefix_scalar, pc.cast(numbers, pa.string()), _EMPTY)


def _rows(ids: list[str], out: pa.RecordBatch) -> Iterator[tuple[Any, ...]]:
    """``(id, value, value, ...)`` per row; the columns are converted only if iterated."""
    columns = [column.to_pylist() for column in out.columns]
    yield from zip(ids, *columns, strict=True)


def _naive_utc(out: pa.RecordBatch) -> pa.RecordBatch:
    """Time-zone-aware timestamp columns as naive UTC: same instants, 3x cheaper to convert to Python."""
    if not any(pa.types.is_timestamp(f.type) and f.type.tz for f in out.schema):
        return out
    columns, fields = [], []
    for f, column in zip(out.schema, out.columns, strict=True):
        if pa.types.is_timestamp(f.type) and f.type.tz:
            column = column.cast(pa.timestamp(f.type.unit))
            f = pa.field(f.name, column.type)
        columns.append(column)
        fields.append(f)
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))


class FileLoader:
    """Loads files into the tenants' databases; one instance per daemon."""

    def __init__(self, store: Store, runners: Runners, write_batch_size: int, progress_interval_s: float, *,
                 events: Emitter, retry_deadline_s: float = DEFAULT_DEADLINE_S,
                 schemas: SchemaRecorder | None = None) -> None:
        self.store = store
        self.schemas = schemas
        self.events = events
        self.runners = runners
        self.write_batch_size = write_batch_size
        self.progress_interval_s = progress_interval_s
        # past the deadline the store's error propagates: the file is deferred and resumes later
        self._policy = RetryPolicy(max_delay_s=_RETRY_MAX_S, deadline_s=retry_deadline_s)

    def _log_retry(self, attempt: int, delay: float, exc: BaseException) -> None:
        """A write waits for the store (see :mod:`mysimbdp.store.writes`)."""
        self.events.emit(BatchStoreRetry(error=str(exc)[:300], retry_in_s=delay))

    async def load(self, job: FileJob) -> Counts:
        """Load ``job``; raises :class:`FileRejected` when the file fails as a whole.

        The documents already written for a rejected file are not removed here: the caller
        removes them (:meth:`purge`) once it has checked it still holds the file's claim, so
        that an instance that lost the file to another never removes what that one wrote.
        """
        counts = Counts()
        ctx = BatchContext(job.tenant, job.app.name, job.name, job.sha256, job.fmt)
        loop = asyncio.get_running_loop()
        # One thread per file: an app stuck in a loop holds only its own thread, never one
        # another file (or tenant) needs; every call of the app is made from this thread.
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{job.tenant}")
        session: AppSession | None = None
        healthy = False
        try:
            session = await loop.run_in_executor(executor, lease_session, self.runners, job)
            target = await loop.run_in_executor(executor, target_of, job, session)
            collection = await self._collection(job, target)
            try:
                evolved = await self._pipeline(job, ctx, collection, counts, session, executor)
                rate = counts.records_rejected / counts.records_in if counts.records_in else 0.0
                healthy = True
                if rate > job.max_error_rate:
                    raise FileRejected("error_rate", f"{counts.records_rejected} of {counts.records_in} records "
                                       f"({rate:.1%}) were malformed or rejected, over the tenant's max_error_rate "
                                       f"of {job.max_error_rate:.1%}; see the tenant's _rejects collection",
                                       **counts.as_dict())
                if evolved and self.schemas is not None and job.contract is not None:
                    await self.schemas.record(job.tenant, job.contract_scope, evolved, f"file {job.name}",
                                              job.contract.fields)
            except AppFailed as exc:
                raise FileRejected("app_failed", f"app {job.app.name!r} failed on the file: {exc}",
                                   **counts.as_dict()) from exc
            except FileRejected as exc:
                exc.details.update(counts.as_dict())
                raise
        finally:
            if session is not None:
                give_back(self.runners, session, healthy)
            executor.shutdown(wait=False)
        return counts


    async def purge(self, tenant: str, sha256: str, name: str) -> None:
        """Remove the documents of the file with this sha256 from every collection of the tenant.

        For a file whose load began but whose app cannot be asked for its target any more
        (uninstalled, say): its ``_id`` prefix finds its documents wherever they are.
        ``_rejects`` and system collections are left alone.
        """
        db = self.store.tenant_db(tenant)
        try:
            names = await db.list_collection_names()
        except (PyMongoError, OperationFailure) as exc:
            self.events.emit(BatchFileRollbackFailed(tenant=tenant, file=name, error=str(exc)[:300]))
            return
        for collection in sorted(names):
            if not collection.startswith(("_", "system.")):
                await self._delete_file(tenant, name, sha256, db[collection])

    async def _collection(self, job: FileJob, target: Target) -> Any:
        """The target collection, checked against the platform's rules, with the app's indexes."""
        try:
            return await ensure_target(self.store.tenant_db(job.tenant), target.collection, target.indexes,
                                       policy=self._policy, on_retry=self._log_retry)
        except TargetRefused as exc:
            glue = " declares an " if exc.index is None else ": "
            raise FileRejected("app_failed", f"app {job.app.name!r}{glue}{exc}") from None

    async def _pipeline(self, job: FileJob, ctx: BatchContext, collection: Any, counts: Counts,
                        session: AppSession, executor: ThreadPoolExecutor) -> dict[str, set[str]]:
        """Prepare (in the file's thread) and write every batch; the fields the contract evolved."""
        loop = asyncio.get_running_loop()
        producer = BatchProducer(job, ctx, self.write_batch_size, session)
        db = self.store.tenant_db(job.tenant)
        pending: asyncio.Task[None] | None = None
        future: Future[Prepared | None] | None = None
        progress = _Progress(job, counts, self.progress_interval_s, self.events)
        try:
            iterator = await loop.run_in_executor(executor, guarded, producer.batches)
            while True:
                future = executor.submit(guarded, next, iterator, None)
                prepared = await asyncio.wrap_future(future)
                if pending is not None:
                    await pending
                    progress.maybe_log()
                if prepared is None:
                    break
                pending = asyncio.create_task(self._write(producer, collection, db, prepared, counts))
            pending = None
        finally:
            if pending is not None:
                # let the batch in flight land (bounded) so a rollback after a timeout sees it
                await asyncio.wait({pending}, timeout=_SETTLE_S)
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            if future is not None and not future.done():
                session.kill()  # interrupted (time limit): a worker's call ends at once, a thread's is abandoned
            if await self._thread_finished(job, future):
                producer.close()  # never while the thread still reads: a generator is not shareable
        return producer.evolved

    async def _thread_finished(self, job: FileJob, future: Future[Prepared | None] | None) -> bool:
        """Wait (bounded) for the batch the worker thread is preparing; False if the app is stuck."""
        if future is None or future.done():
            return True
        waiter = asyncio.wrap_future(future)
        done, _ = await asyncio.wait({waiter}, timeout=_SETTLE_S)
        if done:
            return True
        self.events.emit(BatchAppStuck(tenant=job.tenant, file=job.name, waited_s=_SETTLE_S))
        return False

    async def _write(self, producer: BatchProducer, collection: Any, db: Any, prepared: Prepared, counts: Counts) -> None:
        result = await write(collection, prepared.docs, self._policy, self._log_retry)
        for index, reason in result.failed:
            raw = prepared.raws[index] if 0 <= index < len(prepared.raws) else None
            doc = prepared.docs[index] if 0 <= index < len(prepared.docs) else {}
            number = str(doc.get("_id", "")).rsplit(":", 1)[-1]
            prepared.rejects.append(producer.reject(int(number) if number.isdigit() else None, "write", reason,
                                                    raw if raw is not None else {k: str(v)[:200] for k, v in doc.items()},
                                                    document_id=str(doc.get("_id"))))
        if prepared.rejects:
            await write_rejects(db, prepared.rejects, self._policy, self._log_retry)
        counts.records_in += prepared.records_in
        counts.records_written += result.written
        counts.duplicates += result.duplicates
        counts.records_skipped += prepared.skipped
        counts.records_rejected += len(prepared.rejects)

    async def _delete_file(self, tenant: str, name: str, sha256: str, collection: Any) -> None:
        started = time.monotonic()
        try:
            result = await collection.delete_many(id_range(sha256))
        except (PyMongoError, OperationFailure) as exc:
            self.events.emit(BatchFileRollbackFailed(tenant=tenant, file=name, error=str(exc)[:300]))
            return
        if result.deleted_count:
            self.events.emit(BatchFileRolledBack(tenant=tenant, file=name, documents=result.deleted_count,
                                                 seconds=round(time.monotonic() - started, 3)))


class _Progress:
    """Logs ``batch.file.progress`` at most every ``interval_s`` while a file loads, so that
    operators (and the benchmarks) can follow a long load without asking the store."""

    def __init__(self, job: FileJob, counts: Counts, interval_s: float, events: Emitter) -> None:
        self.job, self.counts, self.interval_s, self.events = job, counts, interval_s, events
        self.started = self.last = time.monotonic()

    def maybe_log(self) -> None:
        """Log the counts so far if the interval has passed since the last event."""
        now = time.monotonic()
        if now - self.last < self.interval_s:
            return
        self.last = now
        job = self.job
        self.events.emit(BatchFileProgress(tenant=job.tenant, file=job.name, ledger_id=job.ledger_id,
                                           seconds=round(now - self.started, 3), **self.counts.as_dict(),
                                           bytes=job.size, bytes_read=job.staged.content_bytes if job.staged else 0,
                                           compressed=job.fmt.endswith(".gz")))




def lease_session(runners: Runners, job: FileJob) -> AppSession:
    """The app's session for this file (in the file's thread: a worker may have to start)."""
    try:
        return runners.lease(job.tenant, job.app.name, job.app.mode, "batch")
    except PluginError as exc:
        raise FileRejected("no_app", str(exc)) from None
    except AppError as exc:
        raise FileRejected("app_failed", f"app {job.app.name!r} cannot start: {exc}") from None


def give_back(runners: Runners, session: AppSession, healthy: bool) -> None:
    """Return the session (on the event loop); one interrupted mid-call (time limit, failure) is killed first."""
    if not healthy:
        session.kill()
    asyncio.get_running_loop().run_in_executor(None, runners.release, session)


def target_of(job: FileJob, session: AppSession) -> Target:
    """The app's target (in the file's thread, never on the event loop)."""
    try:
        return session.target("batch")
    except AppError as exc:
        raise FileRejected("app_failed", f"app {job.app.name!r}: {exc}") from None


def guarded(fn: Any, *args: Any) -> Any:
    """Run app code in the worker thread; even ``SystemExit`` from an app only fails the file."""
    try:
        return fn(*args)
    except (FileRejected, AppFailed):
        raise
    except AppError as exc:
        raise AppFailed(str(exc)) from None
    except Exception as exc:  # the app's own errors are wrapped already: this is the reader
        raise FileRejected("content", f"the file cannot be read: {_reason(exc)}"[:1000]) from exc
    except BaseException as exc:  # e.g. sys.exit() in an app: never let it stop the daemon
        raise AppFailed(f"the app raised {type(exc).__name__}") from None
