"""Writing documents into the store: one write path and one retry policy for batch and stream.

Every write of the platform — a file's documents, a message batch's documents, their
``_rejects`` — goes through :func:`write`:

* documents are inserted with MongoDB's own unordered ``insert`` command
  (:func:`insert_idempotent`); an ``_id`` already present counts as a duplicate, not an
  error, which is what makes re-runs and redeliveries exactly-once;
* a **transient** error (:func:`is_transient`: the connection lost or refused, a network
  timeout, no primary or a primary stepping down, a server shutting down, anything labelled
  ``RetryableWriteError``) is retried with capped exponential backoff — the whole batch
  again, which the ``_id``s make harmless — until the store answers or the policy's deadline
  passes; then the last error propagates and the caller decides (a file is deferred and
  resumes later; a stream consumer keeps its batch unacknowledged and tries again);
* a **permanent** error (the server answered "no" and would answer it again: a document too
  large or not encodable, a value taken in an app's unique index, a collection name the
  server refuses, a validation error…) is never retried: the documents concerned come back
  in :attr:`InsertResult.failed` with the server's reason, for the caller to send to
  ``_rejects``. A refusal of a whole ``insert`` command fails the documents of that command;
  a permanent error anywhere else raises :class:`WriteRefused` (which documents were written
  is then unknown: the caller fails the file, or returns the messages to the queue).

An error pymongo raises that is neither (an unknown kind) counts as transient: retrying
never loses data, refusing it for good would.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import bson
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from bson.son import SON
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConnectionFailure,
    DocumentTooLarge,
    InvalidDocument,
    InvalidName,
    OperationFailure,
    PyMongoError,
)

from mysimbdp.apps.contract import Index
from mysimbdp.apps.runner.calls import collection_problem
from mysimbdp.errors import MysimbdpError
from mysimbdp.store.rejects import REJECTS, slim

__all__ = [
    "InsertResult", "RetryPolicy", "RetryHook", "ONCE", "insert_idempotent", "write", "is_transient",
    "ensure_target", "TargetRefused", "write_rejects", "RejectsRefused", "WriteRefused", "MAX_DOCUMENT_BYTES",
    "TRANSIENT_CODES", "DEFAULT_DEADLINE_S",
]

DUPLICATE_KEY = 11000
#: MongoDB's limit on one document; enforced here so the embedded store behaves like a real one.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: Documents per ``insert`` command at most: MongoDB's ``maxWriteBatchSize``.
COMMAND_MAX_DOCUMENTS = 100_000
#: Bytes of documents per ``insert`` command at most (one larger document goes alone): a
#: third of MongoDB's 48 MB message limit, so the command's own fields always fit beside them.
COMMAND_MAX_BYTES = 16 * 1024 * 1024
#: Server error codes that say "try again": the retryable-writes specification's list
#: (HostUnreachable 6, HostNotFound 7, NetworkTimeout 89, ShutdownInProgress 91,
#: PrimarySteppedDown 189, ExceededTimeLimit 262, SocketException 9001, NotWritablePrimary
#: 10107, InterruptedAtShutdown 11600, InterruptedDueToReplStateChange 11602,
#: NotPrimaryNoSecondaryOk 13435, NotPrimaryOrSecondary 13436, ReadConcernMajorityNotAvailableYet
#: 134, 10058 (legacy not primary)), plus a few that pass on their own: WriteConcernFailed 64,
#: Interrupted 11601, WriteConflict 112, LockTimeout 24, MaxTimeMSExpired 50.
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436,
                             64, 11601, 112, 24, 50})
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError", "NetworkError")
#: The embedded store (NX-27017) answers errors without a code; these SQLite conditions of
#: its own pass with time (a busy or closing database file), unlike, say, a name it refuses.
_TRANSIENT_MESSAGES = ("database is locked", "database table is locked", "closed database",
                       "disk i/o error", "unable to open database file", "interrupted")
#: Default of :attr:`RetryPolicy.deadline_s` (``batch.write_retry_deadline_s``): long enough to
#: ride out a replica set's election or a restart of the store, short enough that a longer
#: outage defers a file (it resumes later) rather than hold its slot until its timeout.
DEFAULT_DEADLINE_S = 300.0

#: Called before each retry with ``(attempt, retry_in_s, error)``: the caller logs its own event.
RetryHook = Callable[[int, float, BaseException], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a write is retried after transient errors.

    The waits double from ``first_delay_s`` up to ``max_delay_s``; ``deadline_s`` bounds the
    whole (None: until the store answers).
    """

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    deadline_s: float | None = DEFAULT_DEADLINE_S

    def delay(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1-based)."""
        return min(self.first_delay_s * 2 ** min(attempt - 1, 60), self.max_delay_s)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the write may succeed: the store was not reached, or answered "not now".

    Permanent are only errors where the server (or the driver, before sending) refused what
    was asked for a reason that holds next time: a server error with any other code (or none,
    as the embedded store's), a bad name, a document too large or not encodable.
    """
    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NotPrimaryError, NetworkTimeout, server selection
        return True
    if isinstance(exc, PyMongoError) and any(exc.has_error_label(label) for label in _TRANSIENT_LABELS):
        return True
    if isinstance(exc, OperationFailure):
        if exc.code is None:
            return any(text in str(exc).lower() for text in _TRANSIENT_MESSAGES)
        return exc.code in TRANSIENT_CODES
    if isinstance(exc, InvalidName | DocumentTooLarge | InvalidDocument | BSONError):
        return False
    return isinstance(exc, PyMongoError)  # an unknown kind: retrying loses nothing


#: Try once, never wait: for best-effort work that must not hold its caller up.
ONCE = RetryPolicy(deadline_s=0.0)
_T = TypeVar("_T")


async def _retrying(operation: Callable[[], Awaitable[_T]], policy: RetryPolicy, on_retry: RetryHook | None) -> _T:
    """``operation()``, again after each transient error, within ``policy``; other errors propagate."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return await operation()
        except PyMongoError as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            delay = policy.delay(attempt)
            if policy.deadline_s is not None and time.monotonic() - started + delay > policy.deadline_s:
                raise
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            await asyncio.sleep(delay)


async def write(collection: AsyncCollection[Any], documents: Sequence[Mapping[str, Any]],
                policy: RetryPolicy, on_retry: RetryHook | None = None) -> InsertResult:
    """Insert ``documents`` exactly once (:func:`insert_idempotent`), retrying transient errors.

    Returns the result (refused documents in ``failed`` with the reason); after
    ``policy.deadline_s`` of transient errors the last one is raised. Any other permanent
    error raises :class:`WriteRefused`.
    """
    try:
        return await _retrying(lambda: insert_idempotent(collection, documents), policy, on_retry)
    except PyMongoError as exc:
        if is_transient(exc):
            raise
        # not an insert command's answer (those are in ``failed``), so which documents were
        # written is not known: the caller fails the file or returns the messages, with the reason
        raise WriteRefused(_reason(exc)) from exc


class WriteRefused(MysimbdpError):
    """The store refused a write for good, and not document by document: its message says why."""


class RejectsRefused(MysimbdpError):
    """The store refused reject documents even without their records: they cannot be kept.

    The caller fails the batch (a stream batch goes back to the queue) rather than drop them.
    """


async def write_rejects(db: AsyncDatabase[Any], rejects: Sequence[Mapping[str, Any]], policy: RetryPolicy,
                        on_retry: RetryHook | None = None) -> None:
    """Write reject documents (with :func:`mysimbdp.store.writes.write`: exactly once, retried
    while the store is unreachable); one the store refuses goes again slimmed (:func:`slim`).

    Raises :class:`RejectsRefused` if even that is refused: a reject is never dropped silently.
    """
    collection = db[REJECTS]
    result = await write(collection, rejects, policy, on_retry)
    if not result.failed:
        return
    again = [slim(rejects[i], reason) for i, reason in result.failed if 0 <= i < len(rejects)]
    retried = await write(collection, again, policy, on_retry)
    if retried.failed:
        raise RejectsRefused(f"the store refused {len(retried.failed)} reject documents even without their records: "
                             f"{retried.failed[0][1]}")


class TargetRefused(MysimbdpError):
    """A target collection that cannot be written: its name breaks the platform's rules
    (never ``_rejects``, ``system.*`` or a dotted name) or the store refused one of its indexes.

    ``index`` names the refused index (None: the name is the problem).
    """

    def __init__(self, collection: str, problem: str, index: str | None = None) -> None:
        self.collection, self.problem, self.index = collection, problem, index
        what = (f"invalid target collection {collection!r}" if index is None
                else f"index {index!r} of target collection {collection!r} cannot be created")
        super().__init__(f"{what}: {problem}")


#: Per client: the (database, collection, indexes) whose indexes exist, so each is made once.
_ENSURED: weakref.WeakKeyDictionary[Any, set[tuple[str, str, tuple[Any, ...]]]] = weakref.WeakKeyDictionary()


async def ensure_target(db: AsyncDatabase[Any], collection: str, indexes: Sequence[Index] = (), *,
                        policy: RetryPolicy = ONCE, on_retry: RetryHook | None = None) -> AsyncCollection[Any]:
    """The app's target collection, its name checked and its indexes created (once per process).

    Raises :class:`TargetRefused` for a name an app may not write to, or an index the store
    refuses for good; transient errors are retried within ``policy`` (by default not at all),
    then propagate.
    """
    problem = collection_problem(collection)
    if problem is not None:
        raise TargetRefused(str(collection), problem)
    target = db[collection]
    key = (db.name, collection, tuple((tuple(i.keys), i.unique, i.name) for i in indexes))
    done = _ENSURED.setdefault(db.client, set())
    if key in done:
        return target
    refused: TargetRefused | None = None
    for index in indexes:  # each one tried: one the store refuses does not keep the others away
        try:
            await _retrying(partial(_create_index, target, index), policy, on_retry)
        except PyMongoError as exc:
            if is_transient(exc):
                raise
            refused = refused or TargetRefused(collection, f"{type(exc).__name__}: {exc}"[:500],
                                               index.name or str(list(index.keys)))
    if refused is not None:
        raise refused
    await _ensure_rejects_indexes(db, done)
    done.add(key)
    return target


#: What a tenant filters its rejects by (``GET /tenants/{id}/rejects``): indexed, so that a
#: filter that matches little does not read the whole collection.
REJECTS_INDEXES = (Index([("ledger_id", 1)]), Index([("kind", 1)]), Index([("at", 1)]))


async def _ensure_rejects_indexes(db: AsyncDatabase[Any], done: set[tuple[str, str, tuple[Any, ...]]]) -> None:
    """The indexes of the tenant's ``_rejects`` (once per process; best effort: they only speed
    up the tenant's reads)."""
    key = (db.name, REJECTS, ())
    if key in done:
        return
    try:
        for index in REJECTS_INDEXES:
            await _create_index(db[REJECTS], index)
    except PyMongoError:
        return  # tried again with the next target
    done.add(key)


async def _create_index(target: AsyncCollection[Any], index: Index) -> None:
    options: dict[str, Any] = {"unique": index.unique}
    if index.name:
        options["name"] = index.name
    await target.create_index(list(index.keys), **options)


def _reason(exc: BaseException) -> str:
    """A permanent error as a reject's reason."""
    return f"the store refused the write: {type(exc).__name__}: {exc}"[:500]


class InsertResult:
    """How many documents a write added, how many were already present, and which failed.

    ``failed`` lists ``(index, reason)`` of documents the server refused for good (e.g. over
    the 16 MB document limit); the caller sends them to ``_rejects``.
    """

    __slots__ = ("written", "duplicates", "failed")

    def __init__(self, written: int = 0, duplicates: int = 0,
                 failed: list[tuple[int, str]] | None = None) -> None:
        self.written = written
        self.duplicates = duplicates
        self.failed = failed or []

    def __repr__(self) -> str:
        return f"InsertResult(written={self.written}, duplicates={self.duplicates}, failed={len(self.failed)})"


async def insert_idempotent(collection: AsyncCollection[Any], documents: Sequence[Mapping[str, Any]]) -> InsertResult:
    """Insert documents with deterministic ``_id``s; ones already present count as duplicates.

    This is what makes loading exactly-once: a retried batch re-inserts the same ``_id``s and
    MongoDB refuses them with duplicate-key errors, which are expected. Only a clash on
    ``_id`` is a duplicate: a document refused by another unique index (an app's
    ``Index(unique=True)``) whose ``_id`` is not in the collection is in ``failed``, so it
    is rejected with its reason, not acknowledged and lost. Each document is encoded here,
    once: one that BSON cannot represent or that is over MongoDB's 16 MiB limit is reported
    in ``failed`` (the same on every server, embedded or real) and the others are written.
    Documents the server refuses are in ``failed`` too, as are those of a command the server
    refuses whole for a permanent reason (:func:`is_transient`); transient errors propagate
    (retry the batch: :func:`write`).

    The documents go as MongoDB's own ``insert`` command (unordered), the encoded documents
    as the message's document sequence, in as few commands as the size limits allow: what
    ``insert_many`` sends, without its per-document Python work (validation, operation
    records, batching), which cost more CPU per document than the encoding itself.
    """
    raws, sizes, positions, failed = _encoded(documents, collection.codec_options)
    if not raws:
        return InsertResult(0, 0, failed)
    written = 0
    errors: list[dict[str, Any]] = []
    for lo, hi in _command_slices(sizes):
        try:
            inserted, refused = await _insert_command(collection, raws[lo:hi])
        except PyMongoError as exc:
            if is_transient(exc):
                raise  # the whole batch is retried: what was written counts as duplicates then
            # the server refused the whole command (e.g. a collection name it does not accept)
            failed.extend((positions[i], _reason(exc)) for i in range(lo, hi))
            continue
        written += inserted
        errors.extend({**e, "index": int(e.get("index", -1)) + lo} for e in refused)
    if not errors:
        return InsertResult(written, 0, sorted(failed))
    other = [e for e in errors if e.get("code") == DUPLICATE_KEY and not _clash_on_id(e)]
    present = await _ids_present(collection, [raws[i]["_id"] for i in _indexes(other, len(raws))])
    dups = 0
    for e in errors:
        if e.get("code") == DUPLICATE_KEY and (_clash_on_id(e) or _id_key(_op_id(e, raws)) in present):
            dups += 1
            continue
        reason = str(e.get("errmsg", "write refused"))
        if e.get("code") == DUPLICATE_KEY:
            reason = f"another document has the same value of a unique index: {reason}"
        i = int(e.get("index", -1))
        failed.append((positions[i] if 0 <= i < len(positions) else -1, reason[:500]))
    return InsertResult(written, dups, sorted(failed))


def _encoded(documents: Sequence[Mapping[str, Any]], options: Any
             ) -> tuple[list[RawBSONDocument], list[int], list[int], list[tuple[int, str]]]:
    """The documents as BSON, their sizes, their positions in ``documents``, and those that cannot be stored."""
    raws: list[RawBSONDocument] = []
    sizes: list[int] = []
    positions: list[int] = []
    failed: list[tuple[int, str]] = []
    for index, doc in enumerate(documents):
        if isinstance(doc, RawBSONDocument):  # encoded already (the columnar path)
            encoded = doc
        else:
            try:
                encoded = RawBSONDocument(bson.encode(doc, codec_options=options))
                if _NAN in encoded.raw or _NEGATIVE_NAN in encoded.raw:  # rare: look closer
                    cleaned = without_nan(doc)
                    if cleaned is not doc:
                        encoded = RawBSONDocument(bson.encode(cleaned, codec_options=options))
            except (BSONError, OverflowError, TypeError, ValueError, RecursionError) as exc:
                failed.append((index, f"the document cannot be stored: {exc}"[:500]))
                continue
        size = len(encoded.raw)
        if size > MAX_DOCUMENT_BYTES:
            failed.append((index, f"the document is {size} bytes, over MongoDB's limit of {MAX_DOCUMENT_BYTES} bytes"))
            continue
        raws.append(encoded)
        sizes.append(size)
        positions.append(index)
    return raws, sizes, positions, failed


#: The bytes of a double NaN as Python, NumPy and pandas make it (little-endian): a document
#: whose BSON holds neither has no NaN of theirs, so most documents are never walked.
_NAN = struct.pack("<d", math.nan)
_NEGATIVE_NAN = struct.pack("<d", -math.nan)


def without_nan(value: Any) -> Any:
    """``value`` with every NaN float (in mappings and lists, at any depth) replaced by None:
    the platform stores NaN, which means "missing" to pandas and most apps, as null on every
    store (the embedded store refuses NaN; MongoDB would keep it). The same object when it
    holds none."""
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, Mapping):
        changed = {k: without_nan(v) for k, v in value.items()}
        return changed if any(changed[k] is not v for k, v in value.items()) else value
    if isinstance(value, list | tuple):
        items = [without_nan(v) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _command_slices(sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` bounds of the documents (of these sizes) each ``insert`` command carries:
    at most :data:`COMMAND_MAX_DOCUMENTS` and :data:`COMMAND_MAX_BYTES` of documents (or one
    larger document), so every command is within MongoDB's message and batch limits."""
    if sum(sizes) <= COMMAND_MAX_BYTES and len(sizes) <= COMMAND_MAX_DOCUMENTS:
        yield 0, len(sizes)  # the usual case: one command
        return
    lo, size = 0, 0
    for i, n in enumerate(sizes):
        if i > lo and (size + n > COMMAND_MAX_BYTES or i - lo >= COMMAND_MAX_DOCUMENTS):
            yield lo, i
            lo, size = i, 0
        size += n
    yield lo, len(sizes)


async def _insert_command(collection: AsyncCollection[Any], raws: Sequence[RawBSONDocument]
                          ) -> tuple[int, list[dict[str, Any]]]:
    """One unordered ``insert`` command: how many documents it wrote and its write errors."""
    reply = await collection.database.command(SON([
        ("insert", collection.name), ("documents", raws), ("ordered", False), ("bypassDocumentValidation", True)]))
    return int(reply.get("n", 0)), list(reply.get("writeErrors", []))


def _clash_on_id(error: Mapping[str, Any]) -> bool:
    """Whether a duplicate-key error names the ``_id`` index.

    MongoDB sets ``keyPattern`` (``{"_id": 1}``) and an errmsg ``"... index: _id_ dup key ..."``;
    NX-27017 only an errmsg, ``"UNIQUE constraint failed: <collection>._id"``. NX-27017 may
    name a secondary unique index for a document whose ``_id`` is present too: the caller
    looks those ``_id``s up before calling them anything but duplicates.
    """
    pattern = error.get("keyPattern")
    if isinstance(pattern, Mapping) and pattern:
        return list(pattern) == ["_id"]
    message = str(error.get("errmsg", ""))
    return " index: _id_ " in message or message.endswith("._id")


def _indexes(errors: Sequence[Mapping[str, Any]], count: int) -> list[int]:
    return [i for i in (int(e.get("index", -1)) for e in errors) if 0 <= i < count]


def _op_id(error: Mapping[str, Any], raws: Sequence[RawBSONDocument]) -> Any:
    i = int(error.get("index", -1))
    return raws[i]["_id"] if 0 <= i < len(raws) else None


def _id_key(value: Any) -> bytes:
    """A hashable key of an ``_id`` of any BSON type (documents included)."""
    return bson.encode({"": value})


async def _ids_present(collection: AsyncCollection[Any], ids: list[Any]) -> set[bytes]:
    """Which of ``ids`` the collection holds (keys of :func:`_id_key`); asked only after a clash."""
    if not ids:
        return set()
    cursor = collection.find({"_id": {"$in": ids}}, {"_id": 1})
    return {_id_key(doc["_id"]) async for doc in cursor}
