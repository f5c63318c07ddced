"""The private APIs of other libraries in ``mysimbdp.compat``: each test fails loudly when an
upgrade changes one (the platform would otherwise fall back silently, or lose a fix)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument

from mysimbdp import compat
from mysimbdp.store.writes import TRANSIENT_CODES


def test_raw_bson_documents_skip_the_check_with_this_pymongo() -> None:
    """``RawBSONDocument``'s private slots are those compat fills (else every columnar document
    takes the slower checked constructor)."""
    assert compat.RAW_DOCUMENTS_UNCHECKED, "pymongo's RawBSONDocument slots changed: update compat._Unchecked"
    raw = bson.encode({"_id": "a", "n": 1})
    doc = compat.raw_document(raw)
    assert isinstance(doc, RawBSONDocument) and doc.raw is raw and dict(doc) == {"_id": "a", "n": 1}
    assert set(RawBSONDocument.__slots__) == {"__raw", "__inflated_doc", "__codec_options"}


def test_pymongos_retryable_codes_are_all_transient() -> None:
    """Every code the driver itself retries is retried by the platform's writes too."""
    codes = compat.pymongo_retryable_codes()
    assert codes is not None, "pymongo.helpers_shared._RETRYABLE_ERROR_CODES is gone: check TRANSIENT_CODES by hand"
    assert codes <= TRANSIENT_CODES, f"codes pymongo retries and the platform does not: {sorted(codes - TRANSIENT_CODES)}"


def test_neosqlite_connections_can_be_extended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """neosqlite still sets up each connection in ``Connection._configure_connection(self)``."""
    from neosqlite import Connection

    assert callable(getattr(Connection, "_configure_connection", None)), \
        "neosqlite.Connection._configure_connection is gone: the embedded store's page cache cannot be set"
    monkeypatch.setattr(Connection, "_configure_connection", Connection._configure_connection)
    seen: list[Any] = []
    assert compat.extend_neosqlite_connection_setup(seen.append, "__test_marker__")
    assert compat.extend_neosqlite_connection_setup(seen.append, "__test_marker__")  # once only
    connection = Connection(str(tmp_path / "x.db"))
    try:
        assert seen == [connection]
    finally:
        connection.close()


def test_pamqp_decoders_are_where_compat_installs_them() -> None:
    """pamqp looks decoders up in ``decode.METHODS`` and ``decode.TABLE_MAPPING``; the consumer's
    total decoders are installed there (importing it installs them)."""
    from pamqp import decode

    import mysimbdp.stream.consumer  # noqa: F401

    assert {"timestamp", "shortstr", "table"} <= set(decode.METHODS)
    assert {b"T", b"F"} <= set(decode.TABLE_MAPPING)
    # a timestamp no datetime holds, and a short string that is not UTF-8: decoded, not raised
    assert decode.METHODS["timestamp"](struct.pack(">Q", 2**63)) == (8, None)
    assert decode.METHODS["shortstr"](b"\x02\xff\xfe") == (3, "\ufffd\ufffd")
    assert decode.TABLE_MAPPING[b"T"] is decode.METHODS["timestamp"]


# -- where the embedded store differs from MongoDB: pinned, and what the platform does instead --

_EMBEDDED_ONLY = pytest.mark.skipif(bool(os.environ.get("MYSIMBDP_TEST_MONGO_URI")),
                                    reason="pins a behaviour of the embedded store, not of MongoDB")


@_EMBEDDED_ONLY
async def test_embedded_store_ignores_conditions_beside_an_or(mongo: Any, tenant_id: str) -> None:
    """MongoDB ANDs ``$or`` with the other top-level conditions; the embedded store's
    ``find_one_and_update`` drops them when an ``$exists: false`` is among the ``$or``'s branches.
    So the ledger's claim tries its cases as separate conditional updates, never one ``$or``."""
    col = mongo["pins"][tenant_id]
    await col.insert_many([{"_id": "a", "state": "staged"}, {"_id": "b", "state": "loading", "until": 50.0}])
    staged_or_no_lease = {"_id": "b", "$or": [{"state": "staged"}, {"until": {"$exists": False}}]}
    assert [d["_id"] async for d in col.find(staged_or_no_lease)] == []  # find is right
    updated = await col.find_one_and_update(staged_or_no_lease, {"$set": {"state": "taken"}})
    assert updated is not None and updated["_id"] == "a"  # MongoDB: None (b is loading, with a lease)


@_EMBEDDED_ONLY
async def test_embedded_store_upsert_on_another_documents_id_returns_none(mongo: Any, tenant_id: str) -> None:
    """MongoDB raises DuplicateKeyError when an upsert's filter misses an existing ``_id``; the
    embedded store returns None. So the leases insert explicitly and treat both as 'taken'."""
    col = mongo["pins"][tenant_id]
    await col.insert_one({"_id": "lease", "until": 10.0})
    assert await col.find_one_and_update({"_id": "lease", "until": {"$lt": 5.0}}, {"$set": {"holder": "x"}},
                                         upsert=True) is None
    assert await col.find_one({"_id": "lease"}) == {"_id": "lease", "until": 10.0}
