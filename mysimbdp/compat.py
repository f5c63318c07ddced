"""Private APIs of other libraries that the platform relies on, gathered in one place.

Each is used for a reason stated beside it, each has a fallback or a check at import, and
each has a test in ``tests/test_compat.py`` that fails loudly when an upgrade of the
library changes it (rather than the platform silently losing speed or a fix):

* pymongo's ``RawBSONDocument`` slots (``_RawBSONDocument__raw`` …): documents built from
  BSON bytes the columnar path made itself skip the per-document size check
  (:func:`raw_document`); checked at import, else the public constructor is used;
* pymongo's ``helpers_shared._RETRYABLE_ERROR_CODES``: the server codes the driver itself
  retries; :data:`mysimbdp.store.writes.TRANSIENT_CODES` must hold them all (tested);
* neosqlite's ``Connection._configure_connection``: NX-27017 has no option for SQLite's
  page cache, so its connections' set-up is extended (:func:`extend_neosqlite_connection_setup`);
* pamqp's decoder tables ``decode.METHODS`` and ``decode.TABLE_MAPPING``: total decoders
  replace two that raise on a hostile publisher's properties (:func:`install_pamqp_decoders`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bson
from bson.raw_bson import DEFAULT_RAW_BSON_OPTIONS, RawBSONDocument

__all__ = [
    "raw_document", "RAW_DOCUMENTS_UNCHECKED", "pymongo_retryable_codes", "extend_neosqlite_connection_setup",
    "install_pamqp_decoders",
]


# ----------------------------------------------------------------------------- pymongo / bson

class _Unchecked(RawBSONDocument):
    """A ``RawBSONDocument`` of bytes known to be one valid document: the checked constructor's
    size check, a Python function run per document, is what the caller guarantees."""

    __slots__ = ()

    def __init__(self, raw: bytes) -> None:
        self._RawBSONDocument__raw = raw
        self._RawBSONDocument__inflated_doc = None
        self._RawBSONDocument__codec_options = DEFAULT_RAW_BSON_OPTIONS


def _unchecked_documents_work() -> bool:
    """Whether :class:`_Unchecked` gives what ``RawBSONDocument`` gives (its private slots are
    those of the installed pymongo)."""
    raw = bson.encode({"n": 1, "s": ""})
    try:
        fast = _Unchecked(raw)
        return fast.raw is raw and dict(fast) == dict(RawBSONDocument(raw)) == {"n": 1, "s": ""}
    except Exception:
        return False


#: Whether :func:`raw_document` skips the size check (False: the installed pymongo's slots differ).
RAW_DOCUMENTS_UNCHECKED = _unchecked_documents_work()
#: ``raw_document(raw)``: a ``RawBSONDocument`` of ``raw``, which must be one valid BSON document.
raw_document: Callable[[bytes], RawBSONDocument] = _Unchecked if RAW_DOCUMENTS_UNCHECKED else RawBSONDocument


def pymongo_retryable_codes() -> frozenset[int] | None:
    """The server error codes pymongo itself counts as retryable (None: no longer where it was)."""
    try:
        from pymongo import helpers_shared
    except ImportError:
        return None
    codes = getattr(helpers_shared, "_RETRYABLE_ERROR_CODES", None)
    return frozenset(codes) if codes is not None else None


# ----------------------------------------------------------------------------- neosqlite (NX-27017)

def extend_neosqlite_connection_setup(extra: Callable[[Any], None], marker: str) -> bool:
    """Run ``extra(connection)`` after neosqlite sets up each connection it opens.

    ``marker`` names the extension: asked again, it changes nothing (the first stays).
    Returns False, changing nothing, if the installed neosqlite sets up connections otherwise.
    """
    from neosqlite.connection import Connection

    configure = getattr(Connection, "_configure_connection", None)
    if configure is None:
        return False
    if getattr(configure, marker, None) is not None:
        return True

    def configured(self: Any) -> None:
        configure(self)
        extra(self)

    setattr(configured, marker, True)
    Connection._configure_connection = configured  # type: ignore[method-assign]
    return True


# ----------------------------------------------------------------------------- pamqp

def install_pamqp_decoders(*, timestamp: Callable[[bytes], tuple[int, Any]],
                           short_str: Callable[[bytes], tuple[int, str]],
                           table: Callable[[bytes], tuple[int, dict[str, Any]]]) -> None:
    """Make pamqp decode timestamps, short strings and field tables with these (idempotent).

    pamqp looks its decoders up in ``decode.METHODS`` (by name) and ``decode.TABLE_MAPPING``
    (by a field table's type byte); both are replaced where they are.
    """
    from pamqp import decode

    decode.METHODS["timestamp"] = decode.TABLE_MAPPING[b"T"] = timestamp
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["table"] = decode.TABLE_MAPPING[b"F"] = table
