"""The file ledger in ``mysimbdp.files``: staging, transitions, look-ups, committed bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient

from mysimbdp.batch.intake import _view
from mysimbdp.batch.ledger import FileState, Ledger
from mysimbdp.http.server import json_response
from mysimbdp.store.mongo import Store


@pytest.fixture
async def ledger(mongo_uri: str, tmp_path: Path) -> AsyncIterator[Ledger]:
    store = Store(mongo_uri, tmp_path)
    await store.start()
    ledger = Ledger(store)
    await ledger.ensure_indexes()
    yield ledger
    await store.stop()


async def test_lifecycle_and_lookups(ledger: Ledger, tenant_id: str) -> None:
    a = await ledger.stage(tenant_id, "a.csv", "aa" * 32, 100, source="upload")
    # staged_at is stored with BSON's millisecond precision: two stages in one millisecond
    # would tie in the newest-first listing below
    await asyncio.sleep(0.005)
    b = await ledger.stage(tenant_id, "b.csv", "bb" * 32, 250)
    assert isinstance(a, str) and a != b
    entry = await ledger.get(a)
    assert entry is not None and entry["state"] == "staged" and entry["source"] == "upload"
    assert await ledger.get(a, tenant="someone-else") is None

    loading = await ledger.transition(a, FileState.LOADING, app="x")
    assert loading is not None and loading["state"] == "loading" and loading["app"] == "x" and loading["loading_at"]
    committed = await ledger.transition(a, FileState.COMMITTED, records_written=7)
    assert committed is not None and committed["records_written"] == 7
    await ledger.transition(b, FileState.REJECTED, code="too_big", reason="too big")

    assert [e["_id"] for e in await ledger.find(tenant_id, sha256="aa" * 32)] == [a]
    assert [e["_id"] for e in await ledger.find(tenant_id, states=[FileState.REJECTED])] == [b]
    assert await ledger.find(tenant_id, name="a.csv", states=[FileState.STAGED, FileState.LOADING]) == []
    assert [e["_id"] for e in await ledger.list(tenant_id)] == [b, a]
    assert await ledger.committed_bytes(tenant_id) == 100


async def test_every_timestamp_is_a_bson_date(ledger: Ledger, mongo_uri: str, tenant_id: str) -> None:
    """``staged_at`` and each ``<state>_at`` are stored as BSON dates (read back as datetimes), not strings."""
    before = datetime.now(UTC) - timedelta(seconds=60)
    a = await ledger.stage(tenant_id, "a.csv", "aa" * 32, 1)
    b = await ledger.stage(tenant_id, "b.csv", "bb" * 32, 1)
    await ledger.transition(a, FileState.LOADING, app="x")
    await ledger.transition(a, FileState.COMMITTED, records_written=1)
    await ledger.transition(b, FileState.LOADING, app="x")
    await ledger.transition(b, FileState.REJECTED, code="format", reason="bad")
    after = datetime.now(UTC) + timedelta(seconds=60)

    # the raw documents, through a client of its own (as any reader of the store sees them)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        raw = {doc["_id"]: doc async for doc in client["mysimbdp"]["files"].find({"tenant": tenant_id})}
    finally:
        await client.close()
    stamps = {(entry_id, key): value for entry_id, doc in raw.items() for key, value in doc.items()
              if key.endswith("_at")}
    assert set(stamps) == {(a, "staged_at"), (a, "loading_at"), (a, "committed_at"),
                           (b, "staged_at"), (b, "loading_at"), (b, "rejected_at")}
    for key, value in stamps.items():
        assert isinstance(value, datetime), (key, value)
        assert value.utcoffset() == timedelta(0) and before <= value <= after, (key, value)
    assert stamps[(a, "loading_at")] <= stamps[(a, "committed_at")]  # (staged_at is the daemon's clock)

    # what a tenant sees: GET /tenants/{id}/files/{id} renders every timestamp as ISO 8601 UTC
    entry = await ledger.get(a)
    assert entry is not None
    rendered = orjson.loads(json_response(_view(entry)).body)  # type: ignore[arg-type]
    for field in ("staged_at", "loading_at", "committed_at"):
        assert datetime.fromisoformat(rendered[field]).utcoffset() == timedelta(0), rendered[field]
