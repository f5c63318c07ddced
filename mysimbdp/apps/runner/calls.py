"""What happens where a tenant app runs: its hooks called on plain data, one error policy.

The same functions serve the worker process (``runner = "process"``) and the daemon's own
threads (``runner = "thread"``), so both runners give an app the same arguments and treat
what it returns and raises the same way:

* a record-level hook (``mysimbdp_batch_wrangle``, ``mysimbdp_batch_check``,
  ``mysimbdp_stream_wrangle``, ``mysimbdp_stream_quality``) that raises anything — even
  ``SystemExit`` — sends that record to ``_rejects`` with the reason; the others go on;
* ``None`` from a wrangle hook skips the record on purpose (no document, no reject);
* a batch-level hook (target, columns, ``mysimbdp_batch_wrangle_table``) that raises fails
  the whole call with :class:`AppError` (the file is rejected ``app_failed``).

Hooks are called through the app's own plugin manager (:class:`mysimbdp.apps.app.App`), so
the platform's defaults answer the target and columns hooks when the app does not; per-record
hooks are resolved once per call of these functions (a batch of records or messages), not
per record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mysimbdp.apps.app import App
from mysimbdp.apps.contract import BatchContext, Index, Target
from mysimbdp.errors import Reject

__all__ = ["AppError", "RecordOut", "reason_of", "target_of", "target_to_doc", "collection_problem", "target_from_doc", "columns_of",
           "wrangle_table", "wrangle_records", "check_documents", "as_batch", "TARGET_HOOKS", "StreamCalls"]

TARGET_HOOKS = {"batch": "mysimbdp_batch_target", "stream": "mysimbdp_stream_target"}


class AppError(Exception):
    """The app failed on a call as a whole; the message says how."""


@dataclass
class RecordOut:
    """One record's fate: a document to write, a reject (``stage``, ``reason``), or neither (skipped)."""

    doc: dict[str, Any] | None = None
    stage: str | None = None
    reason: str | None = None


def reason_of(exc: BaseException) -> str:
    """What a record's reject says of what the app raised."""
    return str(exc) if isinstance(exc, Reject) else f"{type(exc).__name__}: {exc}"[:2000]


def target_of(app: App, kind: str, tenant: str) -> Target | None:
    """The app's target for ``kind`` (``batch`` or ``stream``): its own or the platform's default
    (None only if a hookwrapper of the app forced it; it then means the default too)."""
    try:
        target = app.call(TARGET_HOOKS[kind], tenant=tenant)
    except BaseException as exc:
        raise AppError(f"{TARGET_HOOKS[kind]} raised {reason_of(exc)}") from None
    if target is not None and not isinstance(target, Target):
        raise AppError(f"{TARGET_HOOKS[kind]} returned a {type(target).__name__}, not a mysimbdp.Target")
    return target


def target_to_doc(target: Target | None) -> dict[str, Any] | None:
    """A target as plain data (what crosses the wire)."""
    if target is None:
        return None
    return {"collection": target.collection,
            "indexes": [{"keys": [[str(k), d] for k, d in index.keys], "unique": bool(index.unique),
                         "name": index.name} for index in target.indexes]}


def target_from_doc(doc: Any) -> Target:
    """Rebuild a target from plain data, checking every part (the data came from an app).

    The collection name itself is checked by whoever writes (it knows the platform's rules).
    """
    if doc is None:
        return Target()
    try:
        collection = doc["collection"]
        indexes = []
        for index in doc.get("indexes") or []:
            keys = [(str(k), int(d)) for k, d in index["keys"]]
            if not keys or len(keys) > 32 or any(d not in (1, -1) for _, d in keys):
                raise ValueError("an index needs 1 to 32 keys, each with direction 1 or -1")
            name = index.get("name")
            indexes.append(Index(keys, bool(index.get("unique", False)), str(name)[:120] if name else None))
        if len(indexes) > 32:
            raise ValueError("at most 32 indexes")
    except (KeyError, TypeError, ValueError) as exc:
        raise AppError(f"the app's target is not valid: {exc}") from None
    if not isinstance(collection, str):
        raise AppError(f"the app's target collection is a {type(collection).__name__}, not a string")
    return Target(collection, tuple(indexes))


def collection_problem(name: Any) -> str | None:
    """What is wrong with an app's target collection name, or None: apps write only into
    collections of their own (never ``_rejects``, ``system.*`` or a dotted sub-name)."""
    if not isinstance(name, str) or not name or len(name) > 120:
        return "it must be a string of 1 to 120 characters"
    if name.startswith(("_", "system")) or any(c in name for c in ".$\0"):
        return "use letters, digits, '-' or '_' (not first), without '.' or '$', not starting with 'system'"
    return None


def columns_of(app: App, ctx: BatchContext) -> dict[str, pa.DataType]:
    """``mysimbdp_batch_columns``: declared column types (the default plugin's ``{}`` when the app
    declares none)."""
    try:
        declared = app.call("mysimbdp_batch_columns", context=ctx)
    except BaseException as exc:
        raise AppError(f"mysimbdp_batch_columns raised {reason_of(exc)}") from None
    if not isinstance(declared, dict) or not all(isinstance(k, str) and isinstance(v, pa.DataType)
                                                 for k, v in declared.items()):
        raise AppError("mysimbdp_batch_columns must return {column name: pyarrow type}")
    return declared


def wrangle_table(app: App, batch: pa.RecordBatch, ctx: BatchContext) -> pa.RecordBatch:
    """``mysimbdp_batch_wrangle_table`` on one batch; its result as one RecordBatch of as many rows."""
    wrangle = app.caller("mysimbdp_batch_wrangle_table")
    if wrangle is None:
        raise AppError("the app does not implement mysimbdp_batch_wrangle_table")
    try:
        out = wrangle(table=batch, context=ctx)
    except BaseException as exc:
        raise AppError(f"mysimbdp_batch_wrangle_table raised {reason_of(exc)}") from None
    return as_batch(out, batch.num_rows)


def as_batch(out: Any, rows: int) -> pa.RecordBatch:
    """The app's result as one RecordBatch of ``rows`` rows, or :class:`AppError`."""
    if isinstance(out, pa.Table):
        out = out.combine_chunks()
        out = out.to_batches()[0] if out.num_rows else pa.RecordBatch.from_pylist([], schema=out.schema)
    if not isinstance(out, pa.RecordBatch) or out.num_rows != rows:
        got = out.num_rows if isinstance(out, pa.RecordBatch) else type(out).__name__
        raise AppError(f"mysimbdp_batch_wrangle_table must return {rows} rows, got {got}")
    return out


def wrangle_records(app: App, records: Sequence[dict[str, Any]], ctx: BatchContext) -> list[RecordOut]:
    """``mysimbdp_batch_wrangle`` (then ``mysimbdp_batch_check``) on each record; both hooks are
    resolved once for all the records."""
    wrangle = app.caller("mysimbdp_batch_wrangle")
    if wrangle is None:
        raise AppError("the app implements only mysimbdp_batch_wrangle_table, which handles CSV; "
                       f"it cannot load {ctx.format} files")
    check = app.caller("mysimbdp_batch_check")
    return [_one_record(wrangle, check, record, ctx) for record in records]


def _one_record(wrangle: Callable[..., Any], check: Callable[..., Any] | None, record: dict[str, Any],
                ctx: BatchContext) -> RecordOut:
    try:
        doc = wrangle(record=record, context=ctx)
        if doc is None:
            return RecordOut()
        if not isinstance(doc, dict):
            return RecordOut(stage="wrangle", reason=f"the app returned a {type(doc).__name__}, not a dict")
        if check is not None:
            problem = check(document=doc, context=ctx)
            if problem is not None:
                return RecordOut(stage="check", reason=str(problem)[:2000])
    except BaseException as exc:  # even SystemExit only rejects this record
        return RecordOut(stage="wrangle", reason=reason_of(exc))
    return RecordOut(doc=doc)


def check_documents(app: App, docs: Sequence[dict[str, Any]], ctx: BatchContext) -> list[str | None]:
    """``mysimbdp_batch_check`` on each document: None where valid, else the reason."""
    check = app.caller("mysimbdp_batch_check")
    if check is None:
        return [None] * len(docs)
    problems: list[str | None] = []
    for doc in docs:
        try:
            problem = check(document=doc, context=ctx)
        except BaseException as exc:
            problem = reason_of(exc)
        problems.append(None if problem is None else str(problem)[:2000])
    return problems


class StreamCalls:
    """The stream hooks of one app over the messages of one request (set up once per request)."""

    def __init__(self, app: App, options: dict[str, Any]) -> None:
        from mysimbdp.stream.records import Incoming, Route

        wrangle = app.caller("mysimbdp_stream_wrangle")
        if wrangle is None:
            raise AppError("the app does not implement mysimbdp_stream_wrangle")
        self.route = Route(app=app.name, collection="records", wrangle=wrangle,
                           quality=app.caller("mysimbdp_stream_quality"))
        self.min_quality = float(options.get("min_quality", 0.0))
        self.max_records = int(options.get("max_records", 10_000))
        self._fields = [f.name for f in dataclasses.fields(Incoming)]
        self._incoming = Incoming

    def message(self, item: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One message (as plain data) through the app: ``(documents, reject documents)``."""
        from mysimbdp.stream.records import process_message

        fields: dict[str, Any] = {name: item.get(name) for name in self._fields}
        fields["body"] = bytes(fields["body"] or b"")
        fields["headers"] = dict(fields["headers"] or {})
        outcome = process_message(self._incoming(**fields), self.route, self.min_quality, self.max_records)
        return outcome.documents.get(self.route.collection, []), outcome.rejects
