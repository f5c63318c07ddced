"""The file ledger in ``mysimbdp.files``: staging, the state machine (claims, leases, fencing),
look-ups, committed bytes."""

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

    claim = await ledger.claim(a, "i1", 30, app="x")
    assert claim is not None and not claim.resumed
    loading = claim.entry
    assert loading["state"] == "loading" and loading["app"] == "x" and loading["loading_at"] and loading["owner"] == "i1"
    committed = await ledger.settle(claim, FileState.COMMITTED, records_written=7)
    assert committed is not None and committed["records_written"] == 7
    assert await ledger.reject_staged(b, code="too_big", reason="too big") is not None

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
    claim_a = await ledger.claim(a, "i1", 30, app="x")
    assert claim_a is not None and await ledger.settle(claim_a, FileState.COMMITTED, records_written=1)
    claim_b = await ledger.claim(b, "i1", 30, app="x")
    assert claim_b is not None and await ledger.settle(claim_b, FileState.REJECTED, code="format", reason="bad")
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


# -- the state machine across instances --------------------------------------------------


@pytest.fixture
async def other(mongo_uri: str, tmp_path: Path) -> AsyncIterator[Ledger]:
    """The same ledger through another client: a second daemon."""
    store = Store(mongo_uri, tmp_path / "other")
    await store.start()
    yield Ledger(store)
    await store.stop()


async def test_of_two_instances_claiming_one_entry_exactly_one_wins(ledger: Ledger, other: Ledger,
                                                                    tenant_id: str) -> None:
    for round_ in range(10):
        entry = await ledger.stage(tenant_id, f"r{round_}.csv", "aa" * 32, 10)
        claims = await asyncio.gather(*(lg.claim(entry, owner, 30) for lg, owner in
                                        [(ledger, "a"), (other, "b"), (ledger, "a2"), (other, "b2")]))
        won = [c for c in claims if c is not None]
        assert len(won) == 1, claims
        doc = await ledger.get(entry)
        assert doc is not None and doc["owner"] == won[0].owner and doc["lease"] == 1 and doc["attempts"] == 1


async def test_a_lapsed_lease_is_taken_over_and_fences_the_old_owner(ledger: Ledger, other: Ledger,
                                                                     tenant_id: str) -> None:
    entry = await ledger.stage(tenant_id, "f.csv", "aa" * 32, 10)
    first = await ledger.claim(entry, "a", 1.0)
    assert first is not None
    assert await other.claim(entry, "b", 30) is None  # a live claim is not taken
    await asyncio.sleep(1.2)
    second = await other.claim(entry, "b", 30)
    assert second is not None and second.resumed and second.lease == first.lease + 1
    # the old owner, back from a pause: it can neither renew, nor settle, nor release
    assert not await ledger.renew(first, 30)
    assert await ledger.settle(first, FileState.COMMITTED, records_written=1) is None
    assert not await ledger.release(first)
    assert await ledger.reject_staged(entry, code="x") is None  # not staged any more
    doc = await ledger.get(entry)
    assert doc is not None and doc["state"] == "loading" and doc["owner"] == "b" and doc["attempts"] == 2
    assert await ledger.owner_of(entry) == "b"
    done = await other.settle(second, FileState.COMMITTED, records_written=5)
    assert done is not None and done["records_written"] == 5 and done["state"] == "committed"
    assert await ledger.claim(entry, "a", 30) is None  # a settled entry is never claimed again
    assert await ledger.owner_of(entry) is None


async def test_an_instance_takes_back_its_own_claim_at_once_after_a_restart(ledger: Ledger, tenant_id: str) -> None:
    entry = await ledger.stage(tenant_id, "f.csv", "aa" * 32, 10)
    first = await ledger.claim(entry, "a", 300)
    again = await ledger.claim(entry, "a", 300)
    assert first is not None and again is not None and again.resumed and again.lease == first.lease + 1
    assert await ledger.settle(first, FileState.COMMITTED) is None  # the earlier incarnation's token is stale


async def test_an_entry_left_loading_without_a_lease_is_resumable(ledger: Ledger, tenant_id: str) -> None:
    """Entries written by a daemon before claims existed (state ``loading``, no ``lease_until``)."""
    entry = await ledger.stage(tenant_id, "old.csv", "aa" * 32, 10)
    await ledger.collection.update_one({"_id": entry}, {"$set": {"state": "loading"}})
    claim = await ledger.claim(entry, "b", 30)
    assert claim is not None and claim.resumed


async def test_release_hands_the_entry_over_at_once(ledger: Ledger, other: Ledger, tenant_id: str) -> None:
    entry = await ledger.stage(tenant_id, "f.csv", "aa" * 32, 10)
    claim = await ledger.claim(entry, "a", 300)
    assert claim is not None and await ledger.release(claim)
    taken = await other.claim(entry, "b", 300)
    assert taken is not None and taken.resumed  # it stays loading: documents may be partly written
    assert await other.release(taken, restage=True)
    doc = await ledger.get(entry)
    assert doc is not None and doc["state"] == "staged" and doc["attempts"] == 1


async def test_live_claims_count_every_instance_first_claimed_first(ledger: Ledger, other: Ledger,
                                                                    tenant_id: str) -> None:
    ids = [await ledger.stage(tenant_id, f"f{i}.csv", f"{i:02d}" * 32, 10 + i) for i in range(3)]
    assert await ledger.claim(ids[1], "a", 300) is not None
    await asyncio.sleep(0.01)
    assert await other.claim(ids[0], "b", 300) is not None
    await asyncio.sleep(0.01)
    lapsed = await other.claim(ids[2], "b", 0.001)
    await asyncio.sleep(0.05)
    assert lapsed is not None
    live = await ledger.live_claims(tenant_id)
    assert [d["_id"] for d in live] == [ids[1], ids[0]]
    assert [d["owner"] for d in live] == ["a", "b"]


async def test_stage_once_returns_the_entry_another_instance_staged(ledger: Ledger, other: Ledger,
                                                                    tenant_id: str) -> None:
    first, second = await asyncio.gather(ledger.stage_once("e" * 32, tenant_id, "f.csv", "aa" * 32, 10),
                                         other.stage_once("e" * 32, tenant_id, "f.csv", "aa" * 32, 10))
    assert first["_id"] == second["_id"] == "e" * 32
    assert await ledger.collection.count_documents({"_id": "e" * 32}) == 1
