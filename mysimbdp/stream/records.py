"""From one message to documents and rejects: decoding, the tenant's app, ids, quality.

Runs in a worker thread (the consumer hands it a whole batch), so it only touches plain
data. The rules (see ``docs/stream.md``):

* the body is JSON: one object, or an array of objects (one record each);
* ``_id`` is ``m:<message_id>`` (``m:<message_id>:<index>`` for an array body) unless the app
  set one, so a redelivered message writes nothing twice; the ``m:`` prefix keeps stream ids
  apart from batch ids (``<sha256[:20]>:<n>``, which start with a hex digit) in a collection
  both write to;
* a body the consumer refused unread (over ``max_message_bytes``), a body that is not JSON or
  holds more than ``max_records`` records, a record the app rejects (:class:`mysimbdp.Reject`)
  or fails on, and a record scored below ``min_quality`` become reject documents for
  ``_rejects``; a record the app returns None for is skipped on purpose (no document, no reject);
* the first reject document of a message keeps the raw message (:func:`raw_fields`), the
  others of the same message point to it (``raw_in``): an array body of many rejected
  records is stored once, not once per record. Only messages with rejects pay for this.
  Reject documents have the schema of every reject, batch or stream
  (:func:`mysimbdp.store.rejects.reject_document`).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from typing import Any, NamedTuple

import orjson

from mysimbdp.apps.contract import Index, MessageContext
from mysimbdp.errors import Reject
from mysimbdp.store.rejects import reject_document

__all__ = [
    "Route", "Incoming", "Outcome", "process_message", "message_id_of", "document_id", "raw_fields",
    "plain_headers", "too_large_reason", "stream_reject", "write_failed_reject", "RAW_LIMIT", "TIMESTAMP_MS_HEADER", "STREAM_ID_PREFIX",
    "DEFAULT_MAX_RECORDS",
]

TIMESTAMP_MS_HEADER = "timestamp_ms"  # publish time in epoch milliseconds (AMQP timestamps are seconds)
RAW_LIMIT = 256 * 1024  # bytes of a message body kept in its reject document
#: Before every stream document's default ``_id``: batch ids start with a hex digit, so the
#: two can never be equal, whatever the ``message_id``.
STREAM_ID_PREFIX = "m:"
#: ``stream.max_records_per_message`` of a profile that does not set it (see ``tenants.py``).
DEFAULT_MAX_RECORDS = 10_000


@dataclass(frozen=True)
class Route:
    """The app that handles one routing-key type, and where its documents go."""

    app: str
    collection: str
    wrangle: Callable[..., Any]
    quality: Callable[..., Any] | None = None
    indexes: Sequence[Index] = ()


@dataclass(frozen=True)
class Incoming:
    """The plain data of one delivered message."""

    tenant: str
    routing_key: str
    body: bytes
    message_id: str | None
    timestamp: datetime | None
    headers: Mapping[str, Any]
    #: why the consumer refused the body unread (over ``max_message_bytes``, see
    #: :func:`too_large_reason`): the message becomes one ``too_large`` reject without being
    #: decoded, and ``body`` holds at most its first :data:`RAW_LIMIT` bytes
    too_large: str | None = None
    #: the whole body's length when ``body`` holds only its beginning
    body_bytes: int | None = None


@dataclass
class Outcome:
    """What one message turned into: documents by collection, reject documents, and how many
    records the app skipped on purpose (returned None for)."""

    documents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def message_id_of(incoming: Incoming) -> str:
    """The publisher's ``message_id``, or a digest of routing key and body when it has none."""
    if incoming.message_id:
        return incoming.message_id
    digest = hashlib.sha256(incoming.routing_key.encode() + b"\0" + incoming.body).hexdigest()
    return f"sha256-{digest[:40]}"


def document_id(msg_id: str, index: int | None) -> str:
    """The default ``_id`` of a stream document: ``m:<message_id>``, ``m:<message_id>:<index>``
    for the record at ``index`` of an array body."""
    return f"{STREAM_ID_PREFIX}{msg_id}" + ("" if index is None else f":{index}")


def too_large_reason(size: int, limit: int) -> str:
    """The reject reason of a body over the tenant's ``stream.max_message_bytes``."""
    return (f"the message body is {size:,} bytes, over the tenant's limit stream.max_message_bytes = "
            f"{limit:,}; it was not decoded (publish smaller messages, e.g. fewer records each)")


def raw_fields(body: bytes, total: int | None = None) -> dict[str, Any]:
    """The raw message for a reject document: ``raw``, ``raw_bytes`` and, for a body that is
    not UTF-8, ``raw_encoding: "base64"``.

    ``raw`` holds at most :data:`RAW_LIMIT` bytes of the body (a UTF-8 character cut by the
    limit is left out); ``raw_bytes`` is the whole body's length: ``total`` when ``body``
    is only its beginning.
    """
    cut = body[:RAW_LIMIT]
    whole = max(len(body), total or 0)
    fields: dict[str, Any] = {"raw_bytes": whole}
    try:
        fields["raw"] = cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(cut) < whole and exc.reason == "unexpected end of data":
            fields["raw"] = cut[: exc.start].decode("utf-8")
        else:
            fields["raw"] = base64.b64encode(cut).decode("ascii")
            fields["raw_encoding"] = "base64"
    return fields


# Bounds of plain_headers: AMQP lets a publisher send up to a frame (128 KiB) of headers
_HEADER_DEPTH = 4  # levels of tables and lists, the headers themselves being the first
_HEADER_ITEMS = 256  # values in all (each key of a table and each element of a list counts one)
_HEADER_TEXT = 4096  # bytes of one str or bytes value (keys: _HEADER_KEY)
_HEADER_KEY = 256
_HEADER_BYTES = 64 * 1024  # bytes of str and bytes values and keys together
_INT64 = (-(2**63), 2**63 - 1)


def plain_headers(headers: Any) -> dict[str, Any]:
    """AMQP headers as plain, bounded values that BSON can always encode; never raises.

    Kept as they are: ``str`` (made valid UTF-8), ``bool``, ``None``, ``int`` within int64,
    finite ``float``, ``bytes``, ``datetime`` (naive or with a fixed offset), and lists and
    tables (dicts with ``str`` keys) of those. Anything else — a ``Decimal``, a larger int,
    ``nan``, a subclass, a table nested deeper than 4 levels — becomes its ``str()`` cut short.
    Bounded: 4 levels deep, 256 values in all, 4 KiB per string or bytes value (256 bytes per
    key, NUL characters replaced), 64 KiB of text and bytes in all; what lies past a bound is
    cut (strings, bytes) or left out (further values). Not a mapping: ``{}``.
    """
    if not isinstance(headers, Mapping):
        return {}
    try:
        return _Bounded().table(headers, 1)
    except Exception:  # a mapping whose iteration fails: nothing of it is trusted
        return {}


class _Bounded:
    """The budget of one :func:`plain_headers` call."""

    def __init__(self) -> None:
        self.items = _HEADER_ITEMS
        self.bytes = _HEADER_BYTES

    def table(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if self.items <= 0:
                break
            self.items -= 1
            name = self.text(key if type(key) is str else _short_str(key), _HEADER_KEY).replace("\0", "\ufffd")
            if name not in out:
                out[name] = self.value(item, depth)
        return out

    def array(self, value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        out = []
        for item in value:
            if self.items <= 0:
                break
            self.items -= 1
            out.append(self.value(item, depth))
        return out

    def value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is int:
            return value if _INT64[0] <= value <= _INT64[1] else self.text(_short_str(value))
        if kind is float:
            return value if math.isfinite(value) else self.text(_short_str(value))
        if kind is str:
            return self.text(value)
        if kind is bytes or kind is bytearray:
            cut = bytes(value[: max(0, min(_HEADER_TEXT, self.bytes))])
            self.bytes -= len(cut)
            return cut
        if kind is datetime and (value.tzinfo is None or type(value.tzinfo) is timezone):
            return value
        if depth < _HEADER_DEPTH and isinstance(value, Mapping):
            return self.table(value, depth + 1)
        if depth < _HEADER_DEPTH and kind in (list, tuple):
            return self.array(value, depth + 1)
        return self.text(_short_str(value))

    def text(self, value: str, limit: int = _HEADER_TEXT) -> str:
        """``value`` as valid UTF-8 (lone surrogates replaced), cut to the limit and the budget."""
        data = value[:limit].encode("utf-8", "replace")[: max(0, min(limit, self.bytes))]
        self.bytes -= len(data)
        return data.decode("utf-8", "ignore")  # "ignore": a character cut in two is left out


def _short_str(value: Any) -> str:
    """``str(value)`` cut short; its type's name when even that fails."""
    try:
        return str(value)[:_HEADER_TEXT]
    except Exception:  # e.g. an int too long to print, a __str__ that raises
        return f"<{type(value).__name__}>"


def _attach_raw(rejects: list[dict[str, Any]], incoming: Incoming) -> None:
    """The raw body in the first reject document of a message, a reference in the others."""
    first = rejects[0]
    first.update(raw_fields(incoming.body, incoming.body_bytes))
    for doc in rejects[1:]:
        doc["raw_in"] = first["_id"]


def write_failed_reject(tenant: str, app: str, doc: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The reject of a stream document the store refused (``reason`` says why)."""
    return reject_document(id=f"stream-write:{doc.get('_id')}", source="stream", kind="write_failed", reason=reason,
                           tenant=tenant, app=app, at=datetime.now(UTC), document_id=str(doc.get("_id")))


def stream_reject(incoming: Incoming, msg_id: str, app: str, kind: str, reason: str,
                  index: int | None = None, record: Any = None) -> dict[str, Any]:
    """The reject document of a message (``index``: of one record of its array body)."""
    return reject_document(id=f"stream:{msg_id}" + ("" if index is None else f":{index}"), source="stream",
                           kind=kind, reason=reason, tenant=incoming.tenant, app=app, at=datetime.now(UTC),
                           routing_key=incoming.routing_key, message_id=msg_id, index=index, record=record)


class _Unusable(NamedTuple):
    """Why a message is rejected whole: the reject's ``kind`` and ``reason``."""

    kind: str
    reason: str


def _records(incoming: Incoming, max_records: int) -> tuple[list[Any], bool] | _Unusable:
    """The body's records and whether it was an array; or why the message is unusable."""
    try:
        body = orjson.loads(incoming.body)
    except orjson.JSONDecodeError as exc:
        return _Unusable("malformed", f"the message body is not valid JSON: {exc}")
    if isinstance(body, dict):
        return [body], False
    if isinstance(body, list):
        if len(body) > max_records:
            return _Unusable("too_many_records", (
                f"the message holds {len(body):,} records, over the tenant's limit "
                f"stream.max_records_per_message = {max_records:,}; none was ingested "
                f"(publish at most {max_records:,} records per message)"))
        return body, True
    return _Unusable("malformed", "the message body must be a JSON object or an array of objects, "
                     f"not {type(body).__name__}")


def process_message(incoming: Incoming, route: Route, min_quality: float,
                    max_records: int = DEFAULT_MAX_RECORDS) -> Outcome:
    """Decode one message and run the tenant's app on each of its records.

    A body the consumer refused unread (``incoming.too_large``) and a body holding more than
    ``max_records`` records (the tenant's ``stream.max_records_per_message``) are rejected
    whole, without reaching the app.
    """
    outcome = Outcome()
    msg_id = message_id_of(incoming)
    decoded = (_Unusable("too_large", incoming.too_large) if incoming.too_large is not None
               else _records(incoming, max_records))
    if isinstance(decoded, _Unusable):
        outcome.rejects.append(stream_reject(incoming, msg_id, route.app, decoded.kind, decoded.reason))
        _attach_raw(outcome.rejects, incoming)
        return outcome
    records, is_array = decoded
    docs = outcome.documents.setdefault(route.collection, [])
    for index, record in enumerate(records):
        where = index if is_array else None
        if not isinstance(record, dict):
            outcome.rejects.append(stream_reject(
                incoming, msg_id, route.app, "malformed",
                f"record {index} is a {type(record).__name__}, not a JSON object", where, record))
            continue
        ctx = MessageContext(tenant=incoming.tenant, app=route.app, routing_key=incoming.routing_key,
                             message_id=msg_id, timestamp=incoming.timestamp, index=index,
                             headers=dict(incoming.headers))
        doc = _wrangle(outcome, incoming, msg_id, route, record, ctx, where, min_quality)
        if doc is not None:
            doc.setdefault("_id", document_id(msg_id, where))
            docs.append(doc)
    if outcome.rejects:
        _attach_raw(outcome.rejects, incoming)
    return outcome


def _wrangle(outcome: Outcome, incoming: Incoming, msg_id: str, route: Route,
             record: dict[str, Any], ctx: MessageContext, where: int | None,
             min_quality: float) -> dict[str, Any] | None:
    """One record through the app; a failure becomes a reject document."""
    try:
        doc = route.wrangle(record=record, message=ctx)
        if doc is None:  # skipped on purpose, as a batch app's None
            outcome.skipped += 1
            return None
        if not isinstance(doc, dict):
            raise TypeError(f"the app returned a {type(doc).__name__}, not a dict")
        if route.quality is not None:
            score = route.quality(document=doc, message=ctx)
            if score is not None:
                score = min(1.0, max(0.0, float(score)))
                doc["_quality"] = score
                if score < min_quality:
                    outcome.rejects.append(stream_reject(
                        incoming, msg_id, route.app, "quality",
                        f"quality {score:.3f} is below the tenant's min_quality {min_quality}",
                        where, record))
                    return None
    except Reject as exc:
        outcome.rejects.append(stream_reject(incoming, msg_id, route.app, "rejected",
                                       str(exc) or "rejected by the app", where, record))
        return None
    except BaseException as exc:  # an app bug on one record (even SystemExit) must not stop the stream
        outcome.rejects.append(stream_reject(incoming, msg_id, route.app, "app_error",
                                       f"the app failed: {type(exc).__name__}: {exc}", where, record))
        return None
    return doc
