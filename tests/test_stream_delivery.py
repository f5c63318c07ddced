"""Delivery guarantees: no duplicate after a redelivery, nothing lost in a store outage, poison to the DLQ."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from mysimbdp.config import Settings
from mysimbdp.logs import log_only
from mysimbdp.store.mongo import EmbeddedMongo
from mysimbdp.stream.consumer import Consumer
from mysimbdp.stream.topology import dead_name
from tests.harness.wait import await_until
from tests.plugins.stream_support import (
    ECHO_APPS,
    publish_raw,
    wait_consumers,
    write_profile,
)


async def _count(mongo: AsyncMongoClient[dict[str, Any]], tenant: str) -> int:
    return await mongo[f"tenant_{tenant}"]["events"].count_documents({})


async def test_consumer_killed_between_write_and_ack_leaves_no_duplicate(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, batch_max_messages=40, batch_max_wait_ms=300)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    killed: list[int] = []
    original = Consumer._settle

    async def crash_before_ack(self: Consumer, batch: list[Any], poison: list[int]) -> None:
        if not killed:  # the first batch is written, then the consumer dies before acknowledging
            killed.append(len(batch))
            assert self._channel is not None
            await self._channel.close()
            return
        await original(self, batch, poison)

    monkeypatch.setattr(Consumer, "_settle", crash_before_ack)
    await publish_raw(amqp_url, tenant_id, [{"n": i} for i in range(100)], [f"r{i}" for i in range(100)])
    await await_until(lambda: _true(bool(killed)), what="the first batch")
    await asyncio.sleep(0.5)
    # The dead consumer's messages went back to the queue; a fresh consumer takes them again.
    with capture_logs() as events:
        await rd.daemon.stream.stop_tenant(tenant_id, "test: replace the dead consumer")
        await rd.daemon.stream.start_tenant(tenant_id, "test: replace the dead consumer")

        async def settled() -> bool:
            return (await _count(mongo, tenant_id) == 100
                    and await rd.daemon.stream.queue_depth(tenant_id) == 0
                    and sum(e.get("duplicates", 0) for e in events if e["event"] == "stream.batch.committed")
                    >= killed[0])
        await await_until(settled, what="all 100 documents, the redelivered ones counted as duplicates")
    ids = [d["_id"] async for d in mongo[f"tenant_{tenant_id}"]["events"].find({}, {"_id": 1})]
    assert sorted(ids) == sorted(f"m:r{i}" for i in range(100))


async def _true(value: bool) -> bool:
    return value


async def test_store_outage_mid_stream_loses_nothing(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        amqp_url: str, tenant_id: str, tmp_path: Path) -> None:
    server = EmbeddedMongo(tmp_path / "store", tmp_path / "store.log")
    await server.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=1000)
    try:
        settings = settings_factory(extra_apps=ECHO_APPS, mongo_uri=server.uri, retry_max_s=0.5)
        write_profile(settings, tenant_id)
        rd = await start_daemon(settings)
        await wait_consumers(rd.daemon, tenant_id, 1)
        await publish_raw(amqp_url, tenant_id, [{"n": i} for i in range(50)], [f"a{i}" for i in range(50)])
        await await_until(lambda: _count_is(client, tenant_id, 50), what="the first 50 documents")

        await server.stop()
        with capture_logs() as events:
            await publish_raw(amqp_url, tenant_id, [{"n": i} for i in range(50, 120)],
                              [f"a{i}" for i in range(50, 120)])

            async def retrying() -> bool:
                return any(e["event"] == "stream.batch.retry" for e in events)
            await await_until(retrying, what="the consumer to retry the write")
        status = await rd.daemon.stream.status(tenant_id)
        assert status["buffered"] + (status["queue_depth"] or 0) == 70  # held, not acknowledged

        await server.start()
        await await_until(lambda: _count_is(client, tenant_id, 120), timeout=60, what="all 120 documents")
        await await_until(lambda: _depth_is(rd.daemon, tenant_id, 0), what="every message acknowledged")
    finally:
        await client.close()
        await server.stop()


async def _count_is(client: AsyncMongoClient[dict[str, Any]], tenant: str, n: int) -> bool:
    try:
        return await _count(client, tenant) == n
    except Exception:
        return False


async def _depth_is(daemon: Any, tenant: str, n: int) -> bool:
    status = await daemon.stream.status(tenant)
    return bool(status["queue_depth"] == n and status["buffered"] == 0)


@pytest.mark.parametrize("runner", ["process", "thread"])
async def test_poison_message_goes_to_the_dead_letter_queue_after_the_delivery_limit(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str, runner: str) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, runner=runner, delivery_limit=1, app_timeout_s=0.3)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    with capture_logs() as events:
        await publish_raw(amqp_url, tenant_id, [{"n": 1}, {"hang": 1.0}, {"n": 2}], ["ok1", "poison", "ok2"])
        await await_until(lambda: _dead_depth_is(amqp_url, tenant_id, 1), what="the poison message dead-lettered")
    assert await _count(mongo, tenant_id) == 2
    timeouts = [e for e in events if e["event"] == "stream.app.timeout"]
    assert len(timeouts) == 2 and all(e["message_id"] == "poison" for e in timeouts)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(dead_name(tenant_id), passive=True)
        message = await queue.get(fail=True)
        assert message is not None and message.message_id == "poison"
        await message.ack()
    finally:
        await connection.close()
    assert await rd.daemon.stream.queue_depth(tenant_id) == 0


async def _dead_depth_is(amqp_url: str, tenant: str, n: int) -> bool:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(dead_name(tenant), passive=True)
        return (queue.declaration_result.message_count or 0) == n
    finally:
        await connection.close()


async def test_a_record_clashing_on_an_apps_unique_index_goes_to_rejects_with_its_message(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str) -> None:
    """A taken ``code`` is a write failure with the raw message, not a duplicate; the same
    message published again is a duplicate (its ``_id`` is present), not a reject."""
    settings = settings_factory(extra_apps={"stream_unique": "tests.plugins.stream_unique"})
    write_profile(settings, tenant_id, app="stream_unique")
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    db = mongo[f"tenant_{tenant_id}"]

    async def index_there() -> bool:
        return any(i.get("unique") for i in (await db["codes"].index_information()).values())
    await await_until(index_there, what="the app's unique index")
    with capture_logs() as events:
        await publish_raw(amqp_url, tenant_id, [{"code": "A", "n": 1}], ["u1"])

        async def first() -> bool:
            return await db["codes"].count_documents({}) == 1
        await await_until(first, what="the first document")
        await publish_raw(amqp_url, tenant_id, [{"code": "A", "n": 2}, {"code": "A", "n": 1}], ["u2", "u1"])

        async def settled() -> bool:
            return (await db["_rejects"].count_documents({}) == 1
                    and sum(e.get("duplicates", 0) for e in events if e["event"] == "stream.batch.committed") == 1
                    and await rd.daemon.stream.queue_depth(tenant_id) == 0)
        await await_until(settled, what="one reject and one duplicate")
    reject = await db["_rejects"].find_one({})
    assert reject is not None and reject["_id"] == "stream-write:m:u2" and reject["kind"] == "write_failed"
    assert "unique index" in reject["reason"] and reject["message_id"] == "u2"
    assert reject["raw"] == '{"code":"A","n":2}' and reject["raw_bytes"] == len(reject["raw"])
    assert [d async for d in db["codes"].find({})] == [{"_id": "m:u1", "code": "A", "n": 1}]
    # a message whose records all clash: its body is stored once, the other reject points to it
    await publish_raw(amqp_url, tenant_id, [[{"code": "A", "n": 3}, {"code": "A", "n": 4}]], ["u3"])

    async def both() -> bool:
        return await db["_rejects"].count_documents({"message_id": "u3"}) == 2
    await await_until(both, what="two rejects of one message")
    first, second = [d async for d in db["_rejects"].find({"message_id": "u3"}).sort("_id", 1)]
    assert first["raw"] == '[{"code":"A","n":3},{"code":"A","n":4}]' and first["raw_in"] is None
    assert second["raw_in"] == first["_id"] and second["raw"] is None


async def test_a_stop_step_that_ignores_cancellation_is_left_behind() -> None:
    """A broker call that does not end when cancelled must not hold up a consumer's stop
    (and with it a scale-down): the step is left behind after the timeout, and logged."""
    from types import SimpleNamespace

    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # ignores the cancellation, as a call waiting on a silent peer may

    owner = SimpleNamespace(tenant="t", instance="t-c1", events=log_only("stream"))
    loop = asyncio.get_running_loop()
    with capture_logs() as events:
        t0 = loop.time()
        await Consumer._bounded(owner, "channel close", stubborn(), 0.2)  # type: ignore[arg-type]
        elapsed = loop.time() - t0
        await Consumer._bounded(owner, "consumer tag cancel", _fails(), 0.2)  # type: ignore[arg-type]
    release.set()
    assert elapsed < 1.0
    left = [e for e in events if e["event"] == "stream.consumer.stop_step_left"]
    assert [(e["step"], e["consumer"]) for e in left] == [("channel close", "t-c1")]
    failed = [e for e in events if e["event"] == "stream.consumer.cancel_failed"]
    assert [(e["step"], e["error"]) for e in failed] == [("consumer tag cancel", "channel is closed")]


async def _fails() -> None:
    raise RuntimeError("channel is closed")


TARGET_APPS = {"stream_targets": "tests.plugins.stream_targets"}


@pytest.mark.skipif(bool(os.environ.get("MYSIMBDP_TEST_MONGO_URI")),
                    reason="only the embedded store refuses the collection name 'bad-name'")
async def test_a_write_the_store_refuses_for_good_is_rejected_with_the_reason_not_retried(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str) -> None:
    """The app's target ``bad-name`` passes the platform's check, but the embedded store refuses
    every insert into it (MongoDB would accept it). Each message becomes a ``write_failed``
    reject with the store's reason and is acknowledged; the consumer does not retry for ever."""
    tenant = f"{tenant_id}-dash"
    settings = settings_factory(extra_apps=TARGET_APPS)
    write_profile(settings, tenant, app="stream_targets")
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant, 1)
    db = mongo[f"tenant_{tenant}"]
    with capture_logs() as events:
        await publish_raw(amqp_url, tenant, [{"n": i} for i in range(3)], [f"p{i}" for i in range(3)])

        async def rejected() -> bool:
            return await db["_rejects"].count_documents({"kind": "write_failed"}) == 3
        await await_until(rejected, what="three write_failed rejects")
        await await_until(lambda: _depth_is(rd.daemon, tenant, 0), what="every message acknowledged")
    assert not [e for e in events if e["event"] == "stream.batch.retry"]
    async for reject in db["_rejects"].find({}):
        assert reject["_id"] == f"stream-write:m:{reject['message_id']}" and reject["document_id"].startswith("m:p")
        assert "Invalid identifier" in reject["reason"] and reject["raw"] == f'{{"n":{reject["message_id"][1:]}}}'
        assert reject["app"] == "stream_targets" and reject["source"] == "stream"


@pytest.mark.parametrize("kind", ["rejects", "system"])
async def test_a_stream_app_targeting_rejects_or_system_collections_is_refused(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str, kind: str) -> None:
    tenant = f"{tenant_id}-{kind}"
    settings = settings_factory(extra_apps=TARGET_APPS)
    write_profile(settings, tenant, app="stream_targets")
    rd = await start_daemon(settings)
    name = {"rejects": "_rejects", "system": "system.x"}[kind]

    async def failed() -> bool:
        status = await rd.daemon.stream.status(tenant)
        return status["state"] == "failed" and f"invalid target collection {name!r}" in status.get("error", "")
    await await_until(failed, what="the tenant's stream refused")
    assert rd.daemon.stream.consumer_count(tenant) == 0


async def test_a_consumer_never_writes_documents_into_rejects_even_past_the_managers_check(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer checks each collection it writes to (``ensure_target``): with the manager's
    check switched off, an app's documents for ``_rejects`` become ``write_failed`` rejects."""
    monkeypatch.setattr("mysimbdp.stream.manager.collection_problem", lambda name: None)
    tenant = f"{tenant_id}-rejects"
    settings = settings_factory(extra_apps=TARGET_APPS)
    write_profile(settings, tenant, app="stream_targets")
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant, 1)
    db = mongo[f"tenant_{tenant}"]
    await publish_raw(amqp_url, tenant, [{"n": 1}, {"n": 2}], ["q1", "q2"])

    async def rejected() -> bool:
        return await db["_rejects"].count_documents({"kind": "write_failed"}) == 2
    await await_until(rejected, what="two write_failed rejects")
    await await_until(lambda: _depth_is(rd.daemon, tenant, 0), what="every message acknowledged")
    assert await db["_rejects"].count_documents({"_id": {"$regex": "^m:"}}) == 0  # no app document in it
    reject = await db["_rejects"].find_one({"message_id": "q1"})
    assert reject is not None and "invalid target collection '_rejects'" in reject["reason"]
