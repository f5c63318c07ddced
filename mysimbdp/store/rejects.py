"""The ``_rejects`` collection: one schema for batch and stream, built by one function.

Plain data only (it runs in app workers too, which build stream rejects): writing rejects is
:func:`mysimbdp.store.writes.write_rejects`.

Every reject document — a malformed line of a file, a record an app turned down, a message
that is not JSON, a document the store refused — has the same keys (:data:`FIELDS`); a key
that does not apply to its source is ``None``:

======================  ==========================================================================
``_id``                 deterministic, so a re-loaded file or a redelivered message does not
                        repeat its rejects: ``<sha256[:20]>:<record_number>`` (files),
                        ``stream:<message_id>[:<index>]``, ``stream-write:<document _id>``
``source``              ``"file"`` or ``"stream"``
``kind``                why, as a word: files ``parse``, ``wrangle``, ``check``, ``write``; stream
                        ``malformed``, ``too_large``, ``too_many_records``, ``rejected``,
                        ``app_error``, ``app_failed``, ``quality``, ``write_failed``
``reason``              why, for a person (at most 2,000 characters)
``tenant``, ``app``     whose
``at``                  when (files: when the load began; stream: when the batch was handled)
``file``, ``ledger_id``, ``sha256``  the file (stream: ``None``)
``record_number``       the record's number in its file, from 1 (stream: ``None``)
``routing_key``, ``message_id``      the message (files: ``None``)
``index``               the record's index in an array body (otherwise ``None``)
``document_id``         the ``_id`` of a document the store refused (``write``/``write_failed``)
``record``              the decoded record the reject is about (stream: the JSON object an app
                        refused); files: ``None``, the record is in ``raw``
``raw``                 the raw input kept: a file's record as read (its text, or the values
                        the reader parsed), a message's body (text, or base64)
``raw_bytes``           the whole body's length (stream; ``raw`` holds at most 256 KiB)
``raw_encoding``        ``"base64"`` for a body that is not UTF-8
``raw_in``              the ``_id`` of the reject of the same message that holds ``raw``
``dropped``             why ``record`` and ``raw`` were left out (the store refused them)
======================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

__all__ = ["REJECTS", "FIELDS", "Source", "reject_document", "conform", "slim"]

#: The collection of every tenant database that holds its rejects.
REJECTS = "_rejects"
#: The keys of every reject document, in order.
FIELDS = ("_id", "source", "kind", "reason", "tenant", "app", "at", "file", "ledger_id", "sha256",
          "record_number", "routing_key", "message_id", "index", "document_id", "record", "raw",
          "raw_bytes", "raw_encoding", "raw_in", "dropped")
REASON_LIMIT = 2000
KIND_LIMIT = 64
Source = Literal["file", "stream"]
_EMPTY = dict.fromkeys(FIELDS)
_KNOWN = frozenset(FIELDS)


def reject_document(*, id: str, source: Source, kind: str, reason: str, tenant: str, app: str, at: datetime,
                    **fields: Any) -> dict[str, Any]:
    """A reject document with every key of :data:`FIELDS` (those not given are ``None``)."""
    unknown = fields.keys() - _KNOWN
    if unknown:
        raise TypeError(f"not fields of a reject document: {sorted(unknown)}")
    doc = dict(_EMPTY)
    doc.update(fields)
    doc.update({"_id": id, "source": source, "kind": kind, "reason": reason[:REASON_LIMIT], "tenant": tenant,
                "app": app, "at": at})
    return doc


def conform(reject: Mapping[str, Any], **fixed: Any) -> dict[str, Any]:
    """``reject`` (made elsewhere: an app's worker) in the schema: its known keys only, every
    key present, ``fixed`` ones set by the platform whatever it said, the reason cut to size."""
    doc = dict(_EMPTY)
    doc.update((key, value) for key, value in reject.items() if key in _KNOWN)
    doc.update(fixed)
    doc["reason"] = str(doc["reason"] or "")[:REASON_LIMIT]
    doc["kind"] = str(doc["kind"] or "")[:KIND_LIMIT]
    return doc


def slim(reject: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """A reject document the store refused, without its record and raw input, saying why."""
    doc = {**reject, "record": None, "raw": None, "raw_encoding": None}
    doc["dropped"] = f"record and raw input left out: the store refused the reject document: {reason}"[:1000]
    return doc
