"""A consumer's batch of messages through the tenant's stream apps, wherever they run.

Runs in the consumer's app thread. Consecutive messages for the same app go to that app's
session in one request (:meth:`AppSession.stream`), and each message's outcome comes back
as soon as it is known, so ``progress`` always says which message the app is on: the
consumer uses it to find a message the app is stuck on (``app_timeout_s``), kills the
session and returns that message to the queue.

Everything a session answers is checked before it becomes an :class:`Outcome`: documents
go only to the collection the platform resolved for the app's route, a message may not
turn into more records than the tenant's ``max_records_per_message``, and a worker that
dies on a message (it exited, or ran out of memory or CPU) rejects that message with the
reason instead of failing the batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mysimbdp.apps.contract import Index
from mysimbdp.apps.runner import AppSession, WorkerFailed
from mysimbdp.store.contracts import Contract, check_document
from mysimbdp.store.rejects import conform
from mysimbdp.stream.records import (
    Incoming,
    Outcome,
    document_id,
    message_id_of,
    raw_fields,
    stream_reject,
)

__all__ = ["AppRoute", "AppRun", "failed_outcome", "incoming_doc", "PER_FRAME"]

#: Messages a worker answers for in one frame (at most 20 ms apart): fewer frames, less CPU.
PER_FRAME = 64
_MAX_EVOLVED = 500  # new fields one batch of messages may add to the tenant's schema history
_UNKNOWN = object()


def _record_index(doc: dict[str, Any], msg_id: str) -> int | None | object:
    """The index in its message's body of the record a document came from, from its default
    ``_id`` (None: a one-object body); ``_UNKNOWN`` when the app set another ``_id``."""
    base = document_id(msg_id, None)
    doc_id = doc.get("_id")
    if doc_id == base:
        return None
    tail = doc_id[len(base) + 1:] if isinstance(doc_id, str) and doc_id.startswith(base + ":") else ""
    return int(tail) if tail.isascii() and tail.isdigit() and len(tail) < 10 else _UNKNOWN


def _decoded(body: bytes) -> Any:
    """A message body as JSON (None if it is not)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _input_record(value: Any, index: int | None) -> Any:
    """The record at ``index`` of a decoded body (the body itself for None); None if not there."""
    if index is None:
        return value if isinstance(value, dict) else None
    return value[index] if isinstance(value, list) and index < len(value) else None


@dataclass(frozen=True)
class AppRoute:
    """The app that handles one routing-key type, and where its documents go."""

    app: str
    collection: str
    indexes: Sequence[Index] = ()


_INCOMING_FIELDS = tuple(f.name for f in dataclasses.fields(Incoming))


def incoming_doc(incoming: Incoming) -> dict[str, Any]:
    """A message as plain data for the app's session."""
    return {name: getattr(incoming, name) for name in _INCOMING_FIELDS}


def failed_outcome(incoming: Incoming, app: str, kind: str, reason: str) -> Outcome:
    """The outcome of a message the app could not handle at all: one reject with the raw message."""
    reject = stream_reject(incoming, message_id_of(incoming), app, kind, reason)
    reject.update(raw_fields(incoming.body, incoming.body_bytes))
    return Outcome(rejects=[reject])


class AppRun:
    """The apps over a list of messages, in the consumer's app thread.

    ``progress`` is ``(index, started)``: the message the app is on and since when
    (``started`` is ``inf`` while a session is being leased: starting a worker is not the
    app's time). ``results`` grows by one :class:`Outcome` per message, in order.
    """

    def __init__(self, items: list[tuple[Incoming, AppRoute]], min_quality: float, max_records: int,
                 session_of: Callable[[str], AppSession], per_frame: int = 1,
                 contract: Contract | None = None) -> None:
        self.items = items
        self.contract = contract
        #: fields (and types) the contract's ``evolve`` accepted in these messages
        self.evolved: dict[str, set[str]] = {}
        self.min_quality = min_quality
        self.max_records = max_records
        self._session_of = session_of
        self.results: list[Outcome] = []
        self.progress: tuple[int, float] = (0, math.inf)  # assigned at once: read atomically
        self.current: AppSession | None = None
        self.abandoned = False
        self._per_frame = per_frame
        self._exact = per_frame == 1

    @property
    def exact(self) -> bool:
        """Whether answers come one per message (``progress`` then names the message the app is on)."""
        return self._exact

    def __call__(self) -> None:
        start = 0
        while start < len(self.items) and not self.abandoned:
            route = self.items[start][1]
            end = start
            while end < len(self.items) and self.items[end][1] == route:
                end += 1
            self._group(start, end, route)
            start = end

    def _group(self, start: int, end: int, route: AppRoute) -> None:
        """Messages ``start .. end - 1``, all for ``route``'s app."""
        while start < end and not self.abandoned:
            start = self._attempt(start, end, route)

    def _attempt(self, start: int, end: int, route: AppRoute) -> int:
        """Send messages from ``start`` to the app; returns where to go on from."""
        incoming = self.items[start][0]
        if incoming.too_large is not None:  # rejected here, unread: never sent to the app
            self._done(failed_outcome(incoming, route.app, "too_large", incoming.too_large))
            return start + 1
        end = next((i for i in range(start, end) if self.items[i][0].too_large is not None), end)
        self.progress = (start, math.inf)
        session = self._session_of(route.app)
        self.current = session
        self._exact = self._per_frame == 1 or session.answers_each_message
        self.progress = (start, time.monotonic())

        def on_message(offset: int, docs: list[dict[str, Any]], rejects: list[dict[str, Any]],
                       error: str | None) -> None:
            incoming = self.items[start + offset][0]
            self._done(self._outcome(incoming, route, docs, rejects) if error is None
                       else failed_outcome(incoming, route.app, "app_error", error))

        try:
            session.stream([incoming_doc(inc) for inc, _ in self.items[start:end]], self.min_quality,
                           self.max_records, on_message, self._per_frame)
        except WorkerFailed as exc:
            failed = len(self.results)
            if self.abandoned or failed >= end:
                return end
            if self._per_frame > 1 and end - failed > 1:
                # answers came several at a time: which message the worker died on is not known;
                # go on one answer per message, so that the next death names its message
                self._per_frame = 1
                return failed
            # the worker died on this message (exit, memory, CPU): reject it, go on with the others
            self._done(failed_outcome(self.items[failed][0], route.app, "app_failed", f"the app failed: {exc}"))
            return failed + 1
        finally:
            self.current = None
        return end

    def _done(self, outcome: Outcome) -> None:
        self.results.append(outcome)
        self.progress = (len(self.results), time.monotonic())

    def _outcome(self, incoming: Incoming, route: AppRoute, docs: list[dict[str, Any]],
                 rejects: list[dict[str, Any]]) -> Outcome:
        """An answer as an outcome, within the platform's rules (the answer may come from a hostile worker)."""
        if len(docs) + len(rejects) > self.max_records + 1:
            return failed_outcome(incoming, route.app, "too_many_records",
                                  f"the app made {len(docs) + len(rejects)} records of one message, over the "
                                  f"tenant's max_records_per_message of {self.max_records}")
        msg_id = message_id_of(incoming)
        for doc in docs:
            doc.setdefault("_id", document_id(msg_id, None))
        # the one schema of rejects, whose and from where set here, not by the worker
        rejects = [conform(r, source="stream", tenant=incoming.tenant, app=route.app,
                           routing_key=incoming.routing_key, message_id=msg_id) for r in rejects]
        if self.contract is not None and docs:
            docs, whole = self._contracted(incoming, route, msg_id, docs, rejects)
            if whole is not None:
                return failed_outcome(incoming, route.app, "contract", whole)
        return Outcome(documents={route.collection: docs} if docs else {}, rejects=rejects)

    def _contracted(self, incoming: Incoming, route: AppRoute, msg_id: str, docs: list[dict[str, Any]],
                    rejects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """The documents the contract lets through, its rejects added to ``rejects`` (the
        message's raw body kept once); or why the whole message is rejected (``reject_file``)."""
        assert self.contract is not None
        kept: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        body: list[Any] = []  # the decoded body, once, when a reject needs its record
        for k, doc in enumerate(docs):
            checked = check_document(self.contract, doc)
            if checked.reject_file:
                return [], f"a record of the message violates the contract (on_violation = reject_file): " \
                           f"{checked.reason}"
            for name, kind in checked.evolved.items():
                if name in self.evolved or len(self.evolved) < _MAX_EVOLVED:
                    self.evolved.setdefault(name, set()).add(kind)
            if checked.document is not None:
                kept.append(checked.document)
                continue
            where = _record_index(doc, msg_id)
            if where is _UNKNOWN:  # the app chose the _id: which record it came from is not known
                reject = stream_reject(incoming, msg_id, route.app, "contract", checked.reason)
                reject["_id"] = f"stream:{msg_id}:contract:{k}"
            else:  # the record as published, as in every other reject of one record (a replay's input)
                index = where if isinstance(where, int) else None
                if not body:
                    body.append(_decoded(incoming.body))
                reject = stream_reject(incoming, msg_id, route.app, "contract", checked.reason, index,
                                       _input_record(body[0], index))
            refused.append(reject)
        if refused:
            holder = next((r for r in rejects if r.get("raw") is not None), None)
            if holder is None:
                refused[0].update(raw_fields(incoming.body, incoming.body_bytes))
                holder = refused[0]
            for reject in refused:
                if reject is not holder:
                    reject["raw_in"] = holder["_id"]
            rejects.extend(refused)
        return kept, None
