"""A hostile publisher against the stream path (issue 14, attacks 10-14): odd headers, clocks
and sizes fail only the message that carries them, and stream ids never meet batch ids.

Against the real RabbitMQ and store, like the other stream tests.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import bson
import orjson
import pytest
from pamqp import common as amqp_common
from pamqp import encode
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from mysimbdp.config import Settings
from mysimbdp.monitor.reports import MAX_MS, ReportWindow
from mysimbdp.stream.records import RAW_LIMIT, Incoming, Route, plain_headers, process_message
from tests.harness.wait import await_until
from tests.plugins.stream_support import (
    ECHO_APPS,
    publish_raw,
    wait_consumers,
    write_profile,
)

Db = AsyncMongoClient[dict[str, Any]]


async def _publish(amqp_url: str, key: str, messages: Iterable[aio_pika.Message]) -> None:
    """Publish prepared messages (headers, timestamps) with confirms."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("mysimbdp.ingest", ensure=False)
        for message in messages:
            await exchange.publish(message, key)
    finally:
        await connection.close()


def _msg(body: Any, message_id: str, **kw: Any) -> aio_pika.Message:
    return aio_pika.Message(body if isinstance(body, bytes) else orjson.dumps(body), message_id=message_id, **kw)


async def _settled(rd: Any, tenant: str) -> bool:
    status = await rd.daemon.stream.status(tenant)
    return bool(status["queue_depth"] == 0 and status["buffered"] == 0)


def _events(events: Sequence[Mapping[str, Any]], name: str, tenant: str | None = None) -> list[Mapping[str, Any]]:
    return [e for e in events if e["event"] == name and (tenant is None or e.get("tenant") == tenant)]


# ----------------------------------------------------------------------------- attack 10

async def test_a_header_timestamp_out_of_range_fails_no_message(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Db, amqp_url: str, tenant_id: str) -> None:
    """Attack 10: ``timestamp_ms = 10**17`` (and other odd headers) in one message of a batch
    of 21 made the whole batch nack until it was dead-lettered. Now the odd header counts as
    absent and all 21 are written, none dead-lettered."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, batch_max_messages=50, batch_max_wait_ms=500, delivery_limit=2)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    deep: dict[str, Any] = {"l2": {"l3": {"l4": {"l5": "too deep"}}}}
    odd = _msg({"n": 99, "headers": True}, "odd", headers={
        "timestamp_ms": 10**17, "price": Decimal("1.25"), "deep": deep, "blob": bytearray(b"\x00\xff" * 5000),
        "long": "é" * 10_000, "list": [1, "two", 3.5, None, True], "zz_many": {f"k{i}": i for i in range(300)}})
    messages = [_msg({"n": i}, f"g{i}") for i in range(20)]
    messages.insert(10, odd)
    with capture_logs() as events:
        await _publish(amqp_url, tenant_id, messages)

        async def all_written() -> bool:
            return await mongo[f"tenant_{tenant_id}"]["events"].count_documents({}) == 21
        await await_until(all_written, timeout=20, what="the 20 good messages and the odd one written")
        await await_until(lambda: _settled(rd, tenant_id), what="every message acknowledged")
    assert not _events(events, "stream.batch.failed")
    assert (await rd.daemon.stream.status(tenant_id))["dead_letter_depth"] in (0, None)
    doc = await mongo[f"tenant_{tenant_id}"]["events"].find_one({"_id": "m:odd"})
    assert doc is not None and doc["message_timestamp"] is None  # the impossible time counts as absent
    headers = doc["message_headers"]  # plain and bounded: the store took them as they are
    assert headers["timestamp_ms"] == 10**17 and headers["price"] == "1.25"
    assert headers["list"] == [1, "two", 3.5, None, True]
    assert isinstance(headers["deep"]["l2"]["l3"]["l4"], str)  # a fifth level of tables is cut to text
    assert len(headers["blob"]) == 4096 and len(headers["long"].encode()) <= 4096


def test_plain_headers_are_bounded_and_always_bson() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    hostile: dict[Any, Any] = {
        "int": 2**63 - 1, "too_big": 2**64, "huge": 10**5000, "nan": math.nan, "inf": -math.inf,
        "dec": Decimal("3.14"), "obj": Unprintable(), "surrogate": "a\ud800b", "nul\0key": 1, 7: "int key",
        "when": datetime(2024, 1, 2, tzinfo=UTC), "naive": datetime(2024, 1, 2), "bytes": b"\xff" * 10,
        "set": {1, 2}, "tuple": (1, 2), "bool": True, "none": None, "float": 1.5,
    }
    plain = plain_headers(hostile)
    bson.encode(plain)  # always encodable
    assert plain["int"] == 2**63 - 1 and plain["too_big"] == str(2**64) and plain["huge"] == "<int>"
    assert plain["nan"] == "nan" and plain["inf"] == "-inf" and plain["dec"] == "3.14"
    assert plain["obj"] == "<Unprintable>" and plain["surrogate"] == "a?b"
    assert plain["nul\ufffdkey"] == 1 and plain["7"] == "int key" and plain["tuple"] == [1, 2]
    assert plain["when"] == hostile["when"] and plain["naive"] == hostile["naive"] and plain["bytes"] == b"\xff" * 10
    assert plain["set"] in ("{1, 2}", "{2, 1}") and plain["bool"] is True and plain["none"] is None
    # bounds: values in all, bytes in all, depth
    many = plain_headers({f"k{i}": [i] * 50 for i in range(100)})
    assert sum(1 + len(v) for v in many.values()) <= 256
    wide = plain_headers({f"k{i}": "x" * 4000 for i in range(100)})
    assert sum(len(k) + len(v) for k, v in wide.items()) <= 64 * 1024
    deep: Any = "bottom"
    for _ in range(50):
        deep = {"d": deep}
    out = plain_headers(deep)
    assert isinstance(out["d"]["d"]["d"]["d"], str) and len(bson.encode(out)) < 8192
    assert plain_headers(None) == {} and plain_headers(["not", "a", "table"]) == {}


async def test_properties_no_python_type_holds_do_not_stall_the_shared_connection(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Db, amqp_url: str, tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside attack 10, one level down: an AMQP timestamp past the year 9999, or a
    ``message_id`` or header name that is not UTF-8, made pamqp raise while the daemon's
    connection read the frame: the connection every tenant shares closed, and the message
    came back after each reconnection, for ever. Now such values decode (None, U+FFFD) and
    the message is ingested like any other; another tenant is served meanwhile."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    other = tenant_id + "o"
    write_profile(settings, tenant_id)
    write_profile(settings, other)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    await wait_consumers(rd.daemon, other, 1)

    def short(value: str) -> bytes:  # a message_id "bad-utf8" leaves as bytes that are not UTF-8
        data = b"\xff\xfe-id" if value == "bad-utf8" else value.encode()
        return struct.pack("B", len(data)) + data

    # what any AMQP client may send, which pamqp itself would not encode
    with monkeypatch.context() as m:
        m.setitem(encode.METHODS, "timestamp", lambda value: amqp_common.Struct.timestamp.pack(2**62))
        m.setitem(encode.METHODS, "shortstr", short)
        m.setattr(encode, "timestamp", lambda value: amqp_common.Struct.timestamp.pack(2**62))
        await _publish(amqp_url, tenant_id, [
            _msg({"n": 1, "headers": True}, "far", timestamp=datetime.now(UTC),
                 headers={"when": datetime.now(UTC)}),
            _msg({"n": 2}, "bad-utf8")])
    with capture_logs() as events:
        await publish_raw(amqp_url, other, [{"n": 3}], ["other"])

        async def written() -> bool:
            return (await mongo[f"tenant_{tenant_id}"]["events"].count_documents({}) == 2
                    and await mongo[f"tenant_{other}"]["events"].count_documents({}) == 1)
        await await_until(written, timeout=20, what="both tenants' messages written")
        await await_until(lambda: _settled(rd, tenant_id), what="every message acknowledged")
    assert not _events(events, "broker.disconnected")
    far = await mongo[f"tenant_{tenant_id}"]["events"].find_one({"_id": "m:far"})
    assert far is not None and far["message_timestamp"] is None and far["message_headers"] == {"when": None}
    assert await mongo[f"tenant_{tenant_id}"]["events"].find_one({"_id": "m:\ufffd\ufffd-id"}) is not None


# ----------------------------------------------------------------------------- attack 11

async def test_a_future_or_ancient_publish_time_keeps_the_reports_coming(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Db, amqp_url: str, tenant_id: str) -> None:
    """Attack 11: a ``timestamp_ms`` in the future made a negative latency, the report failed
    validation and the consumer's tick loop died silently. The consumer now clamps each
    message's latency (0 to a day) where it computes it, so its summaries
    (``stream.batch.committed``) and reports stay within bounds, and reports go on."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, report_interval_s=0.5)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    future = int(time.time() * 1000) + 3_600_000
    with capture_logs() as events:
        for n, (name, stamp) in enumerate([("future", future), ("ancient", 1)], start=1):
            await _publish(amqp_url, tenant_id, [_msg({"n": n}, name, headers={"timestamp_ms": stamp})])

            async def reported_after(n: int = n) -> bool:
                reports = _events(events, "stream.report", tenant_id)
                counted = [i for i, r in enumerate(reports) if r["messages"]]
                return sum(r["messages"] for r in reports) == n and len(reports) - counted[-1] >= 3
            await await_until(reported_after, timeout=15, what=f"the {name} message reported, then two more reports")
    for report in _events(events, "stream.report", tenant_id):
        assert 0 <= report["avg_ingest_ms"] <= MAX_MS and 0 <= report["p95_ingest_ms"] <= MAX_MS
    summaries = _events(events, "stream.batch.committed", tenant_id)
    assert sum(e["messages"] for e in summaries) == 2
    assert all(0 <= e["oldest_latency_ms"] <= MAX_MS for e in summaries), summaries
    assert not _events(events, "stream.tick.failed")
    assert await mongo[f"tenant_{tenant_id}"]["events"].count_documents({}) == 2


async def test_a_failing_report_does_not_end_the_tick_loop(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        amqp_url: str, tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, report_interval_s=0.5)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    failed: list[bool] = []
    close = ReportWindow.close

    def close_once_badly(self: ReportWindow, *args: Any, **kwargs: Any) -> Any:
        if self.tenant == tenant_id and not failed:
            failed.append(True)
            raise ValueError("a window that cannot make a report")
        return close(self, *args, **kwargs)

    monkeypatch.setattr(ReportWindow, "close", close_once_badly)
    with capture_logs() as events:
        async def recovered() -> bool:
            return bool(failed) and len(_events(events, "stream.report", tenant_id)) >= 2
        await await_until(recovered, timeout=15, what="reports after a failed one")
        await publish_raw(amqp_url, tenant_id, [{"n": 1}], ["after"])

        async def counted() -> bool:
            return sum(r["messages"] for r in _events(events, "stream.report", tenant_id)) == 1
        await await_until(counted, timeout=15, what="the next message reported")
    failures = _events(events, "stream.tick.failed", tenant_id)
    assert len(failures) == 1 and failures[0]["step"] == "report" and "cannot make a report" in failures[0]["error"]


# ----------------------------------------------------------------------------- attack 12

async def test_a_profile_edit_keeps_a_running_stream_running_and_a_stopped_one_stopped(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Db, amqp_url: str, tenant_id: str) -> None:
    """Attack 12: editing any key of ``[stream]`` left the stream stopped."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, prefetch=100)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    await rd.daemon.stream.scale(tenant_id, 2, "test: two consumers")
    with capture_logs() as events:
        write_profile(settings, tenant_id, prefetch=37)
        await rd.daemon.tenants.reload()
        await wait_consumers(rd.daemon, tenant_id, 2)
    status = await rd.daemon.stream.status(tenant_id)
    assert status["state"] == "running" and status["prefetch"] == 37 and status["consumers"] == 2
    assert [(e["from"], e["to"], e["reason"]) for e in _events(events, "stream.consumers.changed", tenant_id)] \
        == [(2, 0, "profile changed"), (0, 2, "profile changed")]
    await publish_raw(amqp_url, tenant_id, [{"n": 1}], ["after-edit"])

    async def written() -> bool:
        return await mongo[f"tenant_{tenant_id}"]["events"].count_documents({}) == 1
    await await_until(written, what="a message consumed with the new settings")

    await rd.daemon.stream.stop_tenant(tenant_id, "test: stop")
    write_profile(settings, tenant_id, prefetch=41)
    await rd.daemon.tenants.reload()
    status = await rd.daemon.stream.status(tenant_id)
    assert status["state"] == "stopped" and status["consumers"] == 0 and status["prefetch"] == 41
    await rd.daemon.stream.start_tenant(tenant_id, "test: start")
    assert rd.daemon.stream.consumer_count(tenant_id) == 1


# ----------------------------------------------------------------------------- attack 13

async def test_a_message_over_the_size_limit_is_rejected_unread_and_the_consumer_goes_on(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Db, amqp_url: str, tenant_id: str) -> None:
    """Attack 13: nothing bounded a message's size: a 2.4 MB body of 300k records was decoded
    whole. A body over ``max_message_bytes`` is now a ``too_large`` reject, never decoded."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, max_message_bytes=100_000)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    big = orjson.dumps([{"n": i, "pad": "x" * 20} for i in range(12_000)])
    assert len(big) > RAW_LIMIT
    db = mongo[f"tenant_{tenant_id}"]
    with capture_logs() as events:
        await publish_raw(amqp_url, tenant_id, [big, {"n": "after"}], ["big", "after"])

        async def done() -> bool:
            return await db["_rejects"].count_documents({}) == 1 and await db["events"].count_documents({}) == 1
        await await_until(done, what="the big message rejected, the next one written")
        await await_until(lambda: _settled(rd, tenant_id), what="both acknowledged")
    reject = await db["_rejects"].find_one({"_id": "stream:big"})
    assert reject is not None and reject["kind"] == "too_large"
    assert "max_message_bytes" in reject["reason"] and f"{len(big):,} bytes" in reject["reason"]
    assert reject["raw_bytes"] == len(big) and len(reject["raw"]) == RAW_LIMIT and reject["raw_encoding"] is None
    assert await db["events"].find_one({"_id": "m:after"}) is not None
    assert not _events(events, "stream.batch.failed")


async def test_a_message_with_too_many_records_is_rejected_whole(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Db, amqp_url: str, tenant_id: str) -> None:
    """Attack 13: nothing bounded the records of one message. Past the profile's
    ``max_records_per_message`` (default 10,000) the message is one ``too_many_records``
    reject; nothing of it is written."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    many = [{"n": i} for i in range(10_001)]
    db = mongo[f"tenant_{tenant_id}"]
    await publish_raw(amqp_url, tenant_id, [many, {"n": "after"}, {"skip": True}], ["many", "after", "skip"])

    async def done() -> bool:
        return await db["_rejects"].count_documents({}) == 1 and await db["events"].count_documents({}) == 1
    await await_until(done, what="the message rejected whole, the next one written")
    await await_until(lambda: _settled(rd, tenant_id), what="every message acknowledged")
    reject = await db["_rejects"].find_one({"_id": "stream:many"})
    assert reject is not None and reject["kind"] == "too_many_records"
    assert "10,001 records" in reject["reason"] and "max_records_per_message = 10,000" in reject["reason"]
    assert reject["raw_bytes"] == len(orjson.dumps(many))
    # the app's None skipped its record on purpose: no document, no reject
    assert await db["events"].find_one({"_id": "m:skip"}) is None
    assert await db["_rejects"].find_one({"message_id": "skip"}) is None


def _route(wrangle: Callable[..., Any]) -> Route:
    return Route(app="t_app", collection="c", wrangle=wrangle)


def _incoming(body: bytes, message_id: str | None = "mid") -> Incoming:
    return Incoming(tenant="t", routing_key="t", body=body, message_id=message_id, timestamp=None, headers={})


def test_process_message_takes_the_record_limit_as_a_parameter() -> None:
    calls: list[int] = []

    def wrangle(record: dict[str, Any], message: Any) -> dict[str, Any]:
        calls.append(message.index)
        return dict(record)
    route = _route(wrangle)
    body = orjson.dumps([{"n": i} for i in range(4)])
    outcome = process_message(_incoming(body), route, 0.0, max_records=3)
    assert calls == [] and outcome.documents == {} and len(outcome.rejects) == 1
    assert outcome.rejects[0]["kind"] == "too_many_records" and outcome.rejects[0]["raw"] == body.decode()
    outcome = process_message(_incoming(body), route, 0.0, max_records=4)
    assert calls == [0, 1, 2, 3] and len(outcome.documents["c"]) == 4 and not outcome.rejects


def test_a_body_marked_too_large_never_reaches_the_decoder_or_the_app() -> None:
    route = _route(lambda record, message: pytest.fail("the app was called"))
    cut = b"[" + b'{"n":1},' * (RAW_LIMIT // 8)
    incoming = Incoming(tenant="t", routing_key="t", body=cut[:RAW_LIMIT], message_id="big", timestamp=None,
                        headers={}, too_large="over the limit", body_bytes=5_000_000)
    outcome = process_message(incoming, route, 0.0)
    (reject,) = outcome.rejects
    assert reject["kind"] == "too_large" and reject["reason"] == "over the limit"
    assert reject["raw_bytes"] == 5_000_000 and len(reject["raw"]) == RAW_LIMIT


# ----------------------------------------------------------------------------- attack 14

async def test_a_message_id_equal_to_a_batch_id_writes_its_own_document(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Db, amqp_url: str, tenant_id: str) -> None:
    """Attack 14: a ``message_id`` equal to a batch record's ``_id`` (``<sha256[:20]>:<n>``)
    in the same collection was taken for a duplicate and dropped. Stream ids are ``m:…``."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    events = mongo[f"tenant_{tenant_id}"]["events"]
    batch_id = hashlib.sha256(b"a tenant's file").hexdigest()[:20] + ":0"  # as the batch loader makes them
    await events.insert_one({"_id": batch_id, "from": "batch"})
    await publish_raw(amqp_url, tenant_id, [{"from": "stream"}, [{"i": 0}, {"i": 1}]], [batch_id, "arr"])

    async def written() -> bool:
        return await events.count_documents({}) == 4
    await await_until(written, what="the stream documents beside the batch one")
    assert (await events.find_one({"_id": batch_id}) or {}).get("from") == "batch"
    assert (await events.find_one({"_id": f"m:{batch_id}"}) or {}).get("from") == "stream"
    assert {d["_id"] async for d in events.find({"i": {"$exists": True}})} == {"m:arr:0", "m:arr:1"}


def test_stream_ids_never_look_like_batch_ids_and_an_app_may_set_its_own() -> None:
    outcome = process_message(_incoming(b'{"a": 1}', None), _route(lambda record, message: dict(record)), 0.0)
    (doc,) = outcome.documents["c"]
    assert doc["_id"].startswith("m:sha256-")
    own = process_message(_incoming(b'{"a": 1}'), _route(lambda record, message: {"_id": "mine"}), 0.0)
    assert own.documents["c"] == [{"_id": "mine"}]


# ----------------------------------------------------------------------------- None from a stream app

def test_none_from_a_stream_app_skips_the_record() -> None:
    route = _route(lambda record, message: None if record.get("skip") else dict(record))
    outcome = process_message(_incoming(orjson.dumps([{"skip": 1}, {"n": 2}])), route, 0.0)
    assert outcome.skipped == 1 and not outcome.rejects and outcome.documents["c"] == [{"n": 2, "_id": "m:mid:1"}]
