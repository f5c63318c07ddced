"""The file ledger in ``mysimbdp.files``: staging, transitions, look-ups, committed bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mysimbdp.ledger import FileState, Ledger
from mysimbdp.store import Store


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
