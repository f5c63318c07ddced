"""Stream ingestion end to end: the real RabbitMQ, the real store, the stream manager in a daemon."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from mysimbdp.config import Settings
from tests.harness.wait import await_until
from tests.plugins.stream_support import (
    ECHO_APPS,
    publish_raw,
    wait_consumers,
    write_profile,
)


async def _count(mongo: AsyncMongoClient[dict[str, Any]], tenant: str, collection: str = "events") -> int:
    return await mongo[f"tenant_{tenant}"][collection].count_documents({})


async def test_two_tenants_publish_at_once_each_to_its_own_database(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str) -> None:
    a, b = tenant_id + "a", tenant_id + "b"
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, a)
    write_profile(settings, b, min_consumers=2)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, a, 1)
    await wait_consumers(rd.daemon, b, 2)

    import asyncio
    await asyncio.gather(
        publish_raw(amqp_url, a, [{"n": i, "who": "a"} for i in range(300)], [f"a{i}" for i in range(300)]),
        publish_raw(amqp_url, b, [[{"n": i, "who": "b"}, {"n": i + 1000, "who": "b"}] for i in range(200)],
                    [f"b{i}" for i in range(200)]),
    )

    async def done() -> bool:
        return await _count(mongo, a) == 300 and await _count(mongo, b) == 400
    await await_until(done, what="both tenants' documents")
    assert await mongo[f"tenant_{a}"]["events"].count_documents({"who": "b"}) == 0
    assert await mongo[f"tenant_{b}"]["events"].count_documents({"who": "a"}) == 0
    doc = await mongo[f"tenant_{b}"]["events"].find_one({"_id": "m:b7:1"})
    assert doc is not None and doc["n"] == 1007 and doc["seen_by"] == "stream_echo"
    assert (await mongo[f"tenant_{a}"]["events"].find_one({"_id": "m:a5"}) or {}).get("n") == 5

    async def drained() -> bool:
        return await rd.daemon.stream.queue_depth(a) == 0 and rd.daemon.stream.consumer_count(a) == 1
    await await_until(drained, what="queue a empty")


async def test_malformed_rejected_and_low_quality_records_go_to_rejects_and_are_acked(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, min_quality=0.5)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    bodies: list[Any] = [b"{not json", {"ok": 1}, {"bad": True, "city": "Zürich"}, {"boom": True}, {"q": 0.1},
                         {"q": 0.9}, [{"ok": 2}, {"bad": True}, 7], b"42", b"\xff{"]
    with capture_logs() as events:
        await publish_raw(amqp_url, tenant_id, bodies, [f"x{i}" for i in range(len(bodies))])
        rejects = f"tenant_{tenant_id}"

        async def all_there() -> bool:
            return await mongo[rejects]["_rejects"].count_documents({}) == 8 and await _count(mongo, tenant_id) == 3
        await await_until(all_there, what="rejects and documents")

        def committed(field: str) -> int:
            return sum(e[field] for e in events if e["event"] == "stream.batch.committed")

        async def summarised() -> bool:  # committed events are aggregated per consumer per second
            return committed("messages") == len(bodies)
        await await_until(summarised, what="stream.batch.committed events")
    assert committed("rejected") == 8

    by_id = {d["_id"]: d async for d in mongo[rejects]["_rejects"].find({})}
    assert by_id["stream:x0"]["kind"] == "malformed" and by_id["stream:x0"]["raw"] == "{not json"
    assert by_id["stream:x2"]["kind"] == "rejected" and "marked bad" in by_id["stream:x2"]["reason"]
    assert by_id["stream:x3"]["kind"] == "app_error" and "boom" in by_id["stream:x3"]["reason"]
    assert by_id["stream:x4"]["kind"] == "quality" and by_id["stream:x4"]["record"] == {"q": 0.1}
    assert by_id["stream:x6:1"]["kind"] == "rejected" and by_id["stream:x6:1"]["index"] == 1
    assert by_id["stream:x6:2"]["kind"] == "malformed"
    assert by_id["stream:x7"]["kind"] == "malformed"
    # every reject keeps the raw message: the body as published, once per message
    assert by_id["stream:x0"]["raw_bytes"] == len(b"{not json")
    assert by_id["stream:x2"]["raw"] == '{"bad":true,"city":"Zürich"}'
    assert by_id["stream:x3"]["raw"] == '{"boom":true}'
    assert by_id["stream:x4"]["raw"] == '{"q":0.1}'
    assert by_id["stream:x6:1"]["raw"] == '[{"ok":2},{"bad":true},7]'
    assert by_id["stream:x6:2"]["raw_in"] == "stream:x6:1" and by_id["stream:x6:2"]["raw"] is None
    assert by_id["stream:x8"]["raw"] == "/3s=" and by_id["stream:x8"]["raw_encoding"] == "base64"
    assert all(d["raw_encoding"] is None for k, d in by_id.items() if k != "stream:x8")
    good = await mongo[rejects]["events"].find_one({"_id": "m:x5"})
    assert good is not None and good["_quality"] == 0.9

    async def acked() -> bool:
        return await rd.daemon.stream.queue_depth(tenant_id) == 0
    await await_until(acked, what="every message acknowledged")
    status = await rd.daemon.stream.status(tenant_id)
    assert status["buffered"] == 0


async def test_routing_key_type_selects_the_app_and_reports_are_emitted(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str) -> None:
    settings = settings_factory(extra_apps={**ECHO_APPS, "stream_upper": "tests.plugins.stream_upper"})
    write_profile(settings, tenant_id, report_interval_s=0.5, apps={"loud": "stream_upper"})
    rd = await start_daemon(settings)  # (it configures logging: capture after)
    await wait_consumers(rd.daemon, tenant_id, 1)
    with capture_logs() as events:
        await publish_raw(amqp_url, tenant_id, [{"v": "a"}], ["plain"])
        await publish_raw(amqp_url, f"{tenant_id}.loud", [{"v": "b"}], ["loud"])
        await publish_raw(amqp_url, f"{tenant_id}.other", [{"v": "c"}], ["other"])
        db = mongo[f"tenant_{tenant_id}"]

        async def there() -> bool:
            return await db["events"].count_documents({}) == 2 and await db["shouting"].count_documents({}) == 1
        await await_until(there, what="documents routed by type")

        async def reported() -> bool:
            return sum(e["messages"] for e in events
                       if e["event"] == "stream.report" and e.get("tenant") == tenant_id) == 3
        await await_until(reported, what="a report counting the messages")
    assert (await db["shouting"].find_one({"_id": "m:loud"}) or {}).get("v") == "B"
    reports = [e for e in events if e["event"] == "stream.report" and e.get("tenant") == tenant_id]
    expected = {"tenant", "app", "instance", "window_start", "window_end", "messages", "documents", "bytes",
                "rejected", "avg_ingest_ms", "p95_ingest_ms", "avg_processing_ms", "queue_depth"}
    assert expected <= set(reports[0])
    assert reports[0]["instance"] == f"{tenant_id}-c1" and reports[0]["app"] == "stream_echo"
    assert all(isinstance(r["window_start"], str) and r["window_start"].endswith("Z") for r in reports)


async def test_a_batch_is_full_at_the_prefetch_window(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str) -> None:
    """prefetch < batch_max_messages: the broker sends no more before an ack, so the consumer
    writes at `prefetch` messages instead of waiting out batch_max_wait_ms (a minute here)."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, prefetch=20, batch_max_messages=1000, batch_max_wait_ms=60_000)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    await publish_raw(amqp_url, tenant_id, [{"n": i} for i in range(100)], [f"m{i}" for i in range(100)])

    async def written() -> bool:
        return await _count(mongo, tenant_id) == 100
    await await_until(written, timeout=30.0, what="100 documents in batches of 20")
