"""The one write path of batch and stream (``mysimbdp.store.writes``), against the real store:
which errors are retried, how long, what is refused for good, and the target check."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DocumentTooLarge,
    InvalidName,
    InvalidOperation,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from mysimbdp.apps import Index
from mysimbdp.store.mongo import EmbeddedMongo
from mysimbdp.store.writes import (
    RetryPolicy,
    TargetRefused,
    WriteRefused,
    ensure_target,
    is_transient,
    write,
)

Db = AsyncMongoClient[dict[str, Any]]
#: NX-27017 takes only letters, digits and ``_`` in collection names; MongoDB takes ``-`` too.
embedded_only = pytest.mark.skipif(bool(os.environ.get("MYSIMBDP_TEST_MONGO_URI")),
                                   reason="a collection name only the embedded store refuses")


@pytest.mark.parametrize(("error", "transient"), [
    (AutoReconnect("connection closed"), True),
    (NotPrimaryError("not primary"), True),
    (NetworkTimeout("timed out"), True),
    (ServerSelectionTimeoutError("no servers"), True),
    (OperationFailure("primary stepped down", code=189), True),
    (OperationFailure("interrupted at shutdown", code=11600), True),
    (OperationFailure("not writable primary", code=10107), True),
    (OperationFailure("anything", details={"errorLabels": ["RetryableWriteError"]}), True),
    (InvalidOperation("cannot use the client after close"), True),  # unknown kind: retrying loses nothing
    (OperationFailure("Invalid identifier 'bad-name'"), False),  # the embedded store's refusal has no code
    (OperationFailure("database is locked"), True),  # nor has its busy database file
    (OperationFailure("Cannot operate on a closed database."), True),
    (OperationFailure("Document failed validation", code=121), False),
    (OperationFailure("not authorized", code=13), False),
    (InvalidName("collection names must not contain '$'"), False),
    (DocumentTooLarge("over 16 MiB"), False),
])
def test_transient_and_permanent_errors(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_the_waits_double_up_to_the_cap() -> None:
    policy = RetryPolicy(first_delay_s=0.5, max_delay_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow however long the outage


@embedded_only
async def test_a_write_the_store_refuses_for_good_is_not_retried(mongo: Db, tenant_id: str) -> None:
    """Every document of a refused command comes back with the store's reason, at once."""
    retries: list[int] = []
    docs = [{"_id": f"m:{i}"} for i in range(5)]
    result = await asyncio.wait_for(
        write(mongo[f"tenant_{tenant_id}"]["bad-name"], docs, RetryPolicy(deadline_s=None),
              lambda attempt, delay, exc: retries.append(attempt)), 10)
    assert retries == []
    assert [i for i, _ in result.failed] == [0, 1, 2, 3, 4] and result.written == 0
    assert all("Invalid identifier" in reason for _, reason in result.failed)


async def test_a_transient_error_is_retried_until_the_store_is_back(tmp_path: Path) -> None:
    """The store stopped mid-write: the write waits (logging each retry) and completes once it
    is back, each document once."""
    server = EmbeddedMongo(tmp_path / "store", tmp_path / "store.log")
    await server.start()
    client: Db = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=300)
    try:
        coll = client["tenant_w"]["items"]
        docs = [{"_id": f"f:{i}", "n": i} for i in range(20)]
        assert (await write(coll, docs[:10], RetryPolicy())).written == 10
        await server.stop()
        retries: list[tuple[int, float, str]] = []
        task = asyncio.create_task(write(coll, docs, RetryPolicy(first_delay_s=0.1, max_delay_s=0.4, deadline_s=None),
                                         lambda attempt, delay, exc: retries.append((attempt, delay, type(exc).__name__))))
        for _ in range(100):
            if len(retries) >= 3:
                break
            await asyncio.sleep(0.1)
        assert len(retries) >= 3 and not task.done()
        assert [delay for _, delay, _ in retries[:3]] == [0.1, 0.2, 0.4]
        await server.start()
        result = await asyncio.wait_for(task, 30)
        assert (result.written, result.duplicates, result.failed) == (10, 10, [])
        assert await coll.count_documents({}) == 20
    finally:
        await client.close()
        await server.stop()


async def test_past_the_deadline_the_transient_error_propagates(tmp_path: Path) -> None:
    server = EmbeddedMongo(tmp_path / "store", tmp_path / "store.log")
    client: Db = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=200)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionFailure):
            await write(client["tenant_w"]["items"], [{"_id": 1}], RetryPolicy(first_delay_s=0.1, deadline_s=1.0))
        assert time.monotonic() - started < 5
    finally:
        await client.close()


@pytest.mark.parametrize("name", ["_rejects", "system.x", "system", "a.b", "a$b", "", "x" * 121])
async def test_ensure_target_refuses_collections_apps_may_not_write_to(mongo: Db, tenant_id: str, name: str) -> None:
    with pytest.raises(TargetRefused, match="invalid target collection") as refused:
        await ensure_target(mongo[f"tenant_{tenant_id}"], name)
    assert refused.value.collection == name and refused.value.index is None


async def _indexed_fields(target: Any) -> dict[tuple[str, ...], str]:
    """The collection's indexes: their fields (the embedded store names indexes its own way) -> name."""
    return {tuple(i["key"]): i["name"] async for i in await target.list_indexes()}


async def test_ensure_target_creates_the_indexes_once_per_process(mongo: Db, tenant_id: str) -> None:
    db = mongo[f"tenant_{tenant_id}"]
    indexes = [Index(keys=[("code", 1)], unique=True, name="code_unique"), Index(keys=[("a", 1), ("b", -1)])]
    target = await ensure_target(db, "things", indexes)
    fields = await _indexed_fields(target)
    assert {("code",), ("a", "b")} <= set(fields)
    await target.drop_index(fields[("code",)])
    await ensure_target(db, "things", indexes)  # made already in this process: not asked again
    assert ("code",) not in await _indexed_fields(target)
    await ensure_target(db, "things", indexes[:1])  # another set of indexes is made
    assert ("code",) in await _indexed_fields(target)


async def test_a_target_brings_the_indexes_tenants_filter_their_rejects_by(mongo: Db, tenant_id: str) -> None:
    db = mongo[f"tenant_{tenant_id}"]
    await ensure_target(db, "things")
    assert {("ledger_id",), ("kind",), ("at",)} <= set(await _indexed_fields(db["_rejects"]))


async def test_an_index_the_store_refuses_is_named_and_the_others_are_made(mongo: Db, tenant_id: str) -> None:
    db = mongo[f"tenant_{tenant_id}"]
    await db["things"].insert_many([{"code": "A"}, {"code": "A"}])
    indexes = [Index(keys=[("code", 1)], unique=True, name="code_unique"), Index(keys=[("n", 1)])]
    with pytest.raises(TargetRefused, match="index 'code_unique' of target collection 'things'") as refused:
        await asyncio.wait_for(ensure_target(db, "things", indexes, policy=RetryPolicy(deadline_s=None)), 10)
    assert refused.value.index == "code_unique"
    assert ("n",) in await _indexed_fields(db["things"])


async def test_a_permanent_error_outside_an_insert_command_is_raised_typed(
        mongo: Db, tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a unique-index clash the write asks the store which ``_id``s are present; refused
    for good there, the write cannot say which documents it wrote: :class:`WriteRefused`."""
    from mysimbdp.store import writes

    coll = mongo[f"tenant_{tenant_id}"]["things"]
    await coll.create_index([("code", 1)], unique=True)
    await coll.insert_one({"_id": "a", "code": "A"})

    async def refused(collection: Any, ids: list[Any]) -> set[bytes]:
        raise OperationFailure("not authorized on this collection", code=13)

    monkeypatch.setattr(writes, "_ids_present", refused)
    with pytest.raises(WriteRefused, match="not authorized"):
        await asyncio.wait_for(write(coll, [{"_id": "b", "code": "A"}], RetryPolicy(deadline_s=None)), 10)


def test_a_document_nested_too_deep_fails_alone() -> None:
    """Nested past Python's recursion limit, with the bytes of a NaN in it (an int64 holding them):
    that one document is reported, the others are encoded."""
    import bson

    from mysimbdp.store.writes import _encoded

    deep: dict[str, Any] = {"v": 9221120237041090560}  # the bytes of a NaN double, as an integer
    for _ in range(1200):
        deep = {"d": deep}
    raws, _, positions, failed = _encoded([{"_id": 1}, deep, {"_id": 3}], bson.DEFAULT_CODEC_OPTIONS)
    assert positions == [0, 2] and [i for i, _ in failed] == [1]
