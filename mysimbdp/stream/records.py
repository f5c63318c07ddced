"""From one message to documents and rejects: decoding, the tenant's app, ids, quality.

Runs in a worker thread (the consumer hands it a whole batch), so it only touches plain
data. The rules (see ``docs/stream.md``):

* the body is JSON: one object, or an array of objects (one record each);
* ``_id`` is the message's ``message_id`` (``<message_id>:<index>`` for an array body) unless
  the app set one, so a redelivered message writes nothing twice;
* a body that is not JSON, a record the app rejects (:class:`mysimbdp.Reject`) or fails on,
  and a record scored below ``min_quality`` become reject documents for ``_rejects``;
* the first reject document of a message keeps the raw message (:func:`raw_fields`), the
  others of the same message point to it (``raw_in``): an array body of many rejected
  records is stored once, not once per record. Only messages with rejects pay for this.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from mysimbdp.apps import Index, MessageContext
from mysimbdp.errors import Reject

__all__ = [
    "Route", "Incoming", "Outcome", "process_message", "message_id_of", "raw_fields", "RAW_LIMIT",
    "TIMESTAMP_MS_HEADER",
]

TIMESTAMP_MS_HEADER = "timestamp_ms"  # publish time in epoch milliseconds (AMQP timestamps are seconds)
RAW_LIMIT = 256 * 1024  # bytes of a message body kept in its reject document


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


@dataclass
class Outcome:
    """What one message turned into: documents by collection, and reject documents."""

    documents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def document_count(self) -> int:
        """Documents to write, all collections together."""
        return sum(len(d) for d in self.documents.values())


def message_id_of(incoming: Incoming) -> str:
    """The publisher's ``message_id``, or a digest of routing key and body when it has none."""
    if incoming.message_id:
        return incoming.message_id
    digest = hashlib.sha256(incoming.routing_key.encode() + b"\0" + incoming.body).hexdigest()
    return f"sha256-{digest[:40]}"


def raw_fields(body: bytes) -> dict[str, Any]:
    """The raw message for a reject document: ``raw``, ``raw_bytes`` and, for a body that is
    not UTF-8, ``raw_encoding: "base64"``.

    ``raw`` holds at most :data:`RAW_LIMIT` bytes of the body (a UTF-8 character cut by the
    limit is left out); ``raw_bytes`` is the whole body's length.
    """
    cut = body[:RAW_LIMIT]
    fields: dict[str, Any] = {"raw_bytes": len(body)}
    try:
        fields["raw"] = cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(cut) < len(body) and exc.reason == "unexpected end of data":
            fields["raw"] = cut[: exc.start].decode("utf-8")
        else:
            fields["raw"] = base64.b64encode(cut).decode("ascii")
            fields["raw_encoding"] = "base64"
    return fields


def _attach_raw(rejects: list[dict[str, Any]], body: bytes) -> None:
    """The raw body in the first reject document of a message, a reference in the others."""
    first = rejects[0]
    first.update(raw_fields(body))
    for doc in rejects[1:]:
        doc["raw_in"] = first["_id"]


def _reject(incoming: Incoming, msg_id: str, app: str, kind: str, reason: str,
            index: int | None = None, record: Any = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": f"stream:{msg_id}" + ("" if index is None else f":{index}"),
        "source": "stream", "kind": kind, "reason": reason[:2000], "tenant": incoming.tenant,
        "app": app, "routing_key": incoming.routing_key, "message_id": msg_id,
        "at": datetime.now(UTC),
    }
    if index is not None:
        doc["index"] = index
    if record is not None:
        doc["record"] = record
    return doc


def _records(incoming: Incoming) -> tuple[list[Any], bool] | str:
    """The body's records and whether it was an array; or the reason it is unusable."""
    try:
        body = orjson.loads(incoming.body)
    except orjson.JSONDecodeError as exc:
        return f"the message body is not valid JSON: {exc}"
    if isinstance(body, dict):
        return [body], False
    if isinstance(body, list):
        return body, True
    return f"the message body must be a JSON object or an array of objects, not {type(body).__name__}"


def process_message(incoming: Incoming, route: Route, min_quality: float) -> Outcome:
    """Decode one message and run the tenant's app on each of its records."""
    outcome = Outcome()
    msg_id = message_id_of(incoming)
    decoded = _records(incoming)
    if isinstance(decoded, str):
        outcome.rejects.append(_reject(incoming, msg_id, route.app, "malformed", decoded))
        _attach_raw(outcome.rejects, incoming.body)
        return outcome
    records, is_array = decoded
    docs = outcome.documents.setdefault(route.collection, [])
    for index, record in enumerate(records):
        where = index if is_array else None
        if not isinstance(record, dict):
            outcome.rejects.append(_reject(
                incoming, msg_id, route.app, "malformed",
                f"record {index} is a {type(record).__name__}, not a JSON object", where, record))
            continue
        ctx = MessageContext(tenant=incoming.tenant, app=route.app, routing_key=incoming.routing_key,
                             message_id=msg_id, timestamp=incoming.timestamp, index=index,
                             headers=dict(incoming.headers))
        doc = _wrangle(outcome, incoming, msg_id, route, record, ctx, where, min_quality)
        if doc is not None:
            doc.setdefault("_id", msg_id if where is None else f"{msg_id}:{index}")
            docs.append(doc)
    if outcome.rejects:
        _attach_raw(outcome.rejects, incoming.body)
    return outcome


def _wrangle(outcome: Outcome, incoming: Incoming, msg_id: str, route: Route,
             record: dict[str, Any], ctx: MessageContext, where: int | None,
             min_quality: float) -> dict[str, Any] | None:
    """One record through the app; a failure becomes a reject document."""
    try:
        doc = route.wrangle(record=record, message=ctx)
        if doc is None:
            raise Reject("the app returned no document")
        if not isinstance(doc, dict):
            raise TypeError(f"the app returned a {type(doc).__name__}, not a dict")
        if route.quality is not None:
            score = route.quality(document=doc, message=ctx)
            if score is not None:
                score = min(1.0, max(0.0, float(score)))
                doc["_quality"] = score
                if score < min_quality:
                    outcome.rejects.append(_reject(
                        incoming, msg_id, route.app, "quality",
                        f"quality {score:.3f} is below the tenant's min_quality {min_quality}",
                        where, record))
                    return None
    except Reject as exc:
        outcome.rejects.append(_reject(incoming, msg_id, route.app, "rejected",
                                       str(exc) or "rejected by the app", where, record))
        return None
    except Exception as exc:  # an app bug on one record must not stop the stream
        outcome.rejects.append(_reject(incoming, msg_id, route.app, "app_error",
                                       f"the app failed: {type(exc).__name__}: {exc}", where, record))
        return None
    return doc
