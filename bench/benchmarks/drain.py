"""(11) The stream's own capacity: a pre-filled queue drained, against a bare consumer and ``insert_many``.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/drain.md``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import aiohttp

from bench.benchmarks.stream import TENANT_STREAM
from bench.cli import Session
from bench.data import weather_repeated
from bench.loads import (
    STREAM_COLLECTION,
    BenchDaemon,
    BenchError,
    copy_indexes,
    insert_many_rate,
    read_documents,
    stream_profile,
    wait_stream_ready,
)
from bench.profile import profiled
from bench.results import Result, Target, metric_from_runs
from mysimbdp.client.publisher import publish_records, read_records
from tests.harness.wait import wait_documents

__all__ = ["NAME", "TITLE", "run", "DrainConsumer"]

NAME = "drain"
TITLE = "Stream drain of a pre-filled queue"
#: Issue 19: the platform drains at least 0.8 of the lower of its two ceilings.
TARGET = Target(">=", 0.8)
RECORDS_PER_MESSAGE = (1, 50)
EXCHANGE = "mysimbdp.ingest"
ADMIN_TOKEN = "bench-admin-token"


class DrainConsumer:
    """A bare aio-pika consumer of a pre-filled quorum queue: the tenant's prefetch, one
    acknowledgement (``multiple``) per ``ack_every`` messages, nothing else."""

    def __init__(self, amqp_url: str, queue: str, routing_key: str, prefetch: int, ack_every: int) -> None:
        self.amqp_url, self.queue, self.routing_key = amqp_url, queue, routing_key
        self.prefetch, self.ack_every = prefetch, ack_every
        self.count = 0
        self._done = asyncio.Event()
        self._expected = 0
        self._connection: Any = None
        self._queue: Any = None

    async def declare(self) -> None:
        """The queue, bound to the routing key (before it is filled)."""
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        self._queue = await channel.declare_queue(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        await self._queue.bind(exchange, routing_key=self.routing_key)

    async def drain(self, expected: int, timeout: float) -> tuple[float, float]:
        """Consume ``expected`` messages; the seconds from the first delivery asked to the last
        ack, and this process's CPU seconds meanwhile (it does nothing else: the AMQP client's
        own cost of taking and acknowledging the messages)."""
        self._expected = expected
        t0, cpu0 = time.perf_counter(), time.process_time()
        tag = await self._queue.consume(self._on_message)
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
            return time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            await self._queue.cancel(tag)
            await self._queue.delete(if_unused=False, if_empty=False)
            await self._connection.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.count += 1
        if self.count % self.ack_every == 0 or self.count >= self._expected:
            await message.ack(multiple=True)
        if self.count >= self._expected:
            self._done.set()


async def _fill(session: Session, key: str, records_per_message: int) -> tuple[int, int]:
    """Publish the weather records to ``key`` (before any clock starts); messages and records."""
    weather = weather_repeated(session.scale.stream_messages, session.env.data_dir)
    result = await publish_records(session.env.amqp_url, EXCHANGE, key, read_records(weather.path),
                                   batch=records_per_message, id_prefix=f"{key}-")
    if result.confirmed != result.sent:
        raise BenchError(f"{result.sent - result.confirmed} of {result.sent} messages were not confirmed")
    return result.confirmed, result.records


async def _platform(session: Session, daemon: BenchDaemon, records_per_message: int) -> dict[str, Any]:
    """The tenant's consumers start on a full queue: from that request to the last document."""
    env = session.env
    tenant = env.new_tenant(f"dr{records_per_message}")
    daemon.write_tenant(stream_profile(tenant, stream={**TENANT_STREAM, "autostart": False, "min_consumers": 1}))
    await wait_stream_ready(daemon, tenant, consumers=0)
    messages, records = await _fill(session, tenant, records_per_message)
    collection = env.db(f"tenant_{tenant}")[STREAM_COLLECTION]
    cpu0, t0 = daemon.cpu(), time.time()
    async with aiohttp.ClientSession() as http, http.post(
            f"{daemon.url}/tenants/{tenant}/stream/start", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        if resp.status != 200:
            raise BenchError(f"starting {tenant}'s stream: HTTP {resp.status} {await resp.text()}")
    done = await wait_documents(collection, records, session.scale.timeout_s, daemon.alive)
    cpu, seconds = daemon.cpu() - cpu0, done - t0
    ceiling = await _insert_many(session, collection)
    daemon.remove_tenant(tenant)
    await env.drop(f"tenant_{tenant}")
    return {"records_per_message": records_per_message, "messages": messages, "records": records,
            "seconds": round(seconds, 3), "messages_per_s": round(messages / seconds, 1),
            "records_per_s": round(records / seconds, 1),
            "cpu_us_per_message": round(cpu.total / messages * 1e6, 2),
            "cpu_us_per_record": round(cpu.total / records * 1e6, 2),
            "daemon_cpu_us_per_record": round(cpu.daemon / records * 1e6, 2),
            "worker_cpu_us_per_record": round(cpu.workers / records * 1e6, 2),
            "insert_many": ceiling}


async def _insert_many(session: Session, written: Any) -> dict[str, Any]:
    """``insert_many`` of the same documents into a collection indexed the same: the store's ceiling."""
    env = session.env
    documents = await read_documents(written)
    target = env.db(f"drain_ceiling_{env.run_id}")["readings"]
    await copy_indexes(written, target)
    try:
        return await insert_many_rate(target, documents, int(TENANT_STREAM["batch_max_messages"]), env.store_cpu)
    finally:
        await env.drop(f"drain_ceiling_{env.run_id}")


async def _bare(session: Session, i: int, records_per_message: int) -> dict[str, Any]:
    key = f"drain{session.env.run_id}{i}{records_per_message}"
    consumer = DrainConsumer(session.env.amqp_url, f"bench.drain.{key}", key, int(TENANT_STREAM["prefetch"]),
                             int(TENANT_STREAM["batch_max_messages"]))
    await consumer.declare()
    messages, records = await _fill(session, key, records_per_message)
    seconds, cpu = await consumer.drain(messages, session.scale.timeout_s)
    return {"messages": messages, "records": records, "seconds": round(seconds, 3),
            "messages_per_s": round(messages / seconds, 1), "records_per_s": round(records / seconds, 1),
            "cpu_us_per_message": round(cpu / messages * 1e6, 2)}


async def run(session: Session, result: Result) -> None:
    """For 1 and 50 records per message: ``repeat`` rounds of the platform's drain, the bare
    consumer's and ``insert_many``'s, interleaved."""
    runs: list[dict[str, Any]] = []
    async with BenchDaemon(session.env, "drain") as daemon:
        for i in range(session.repeat):
            for per in RECORDS_PER_MESSAGE:
                session.say(f"{NAME}: round {i + 1}/{session.repeat}, {per} record(s) per message")
                bare = await _bare(session, i, per)
                platform = await _platform(session, daemon, per)
                lower = min(bare["records_per_s"], platform["insert_many"]["rate"])
                runs.append({**platform, "bare_consumer": bare, "lower_ceiling_records_per_s": lower,
                             "ratio": round(platform["records_per_s"] / lower, 3)})
        session.say(f"{NAME}: one more drain at 1 record per message, profiled (not counted)")
        await profiled(result, daemon.pid, daemon.base, _platform(session, daemon, 1),
                       f"a pre-filled queue of {session.scale.stream_messages:,} messages of 1 record drained, "
                       "daemon and app worker")
    result.settings = {"messages_at_1_record": session.scale.stream_messages, "tenant_stream": TENANT_STREAM,
                       "ack_every": TENANT_STREAM["batch_max_messages"]}
    for per in RECORDS_PER_MESSAGE:
        of = [r for r in runs if r["records_per_message"] == per]
        suffix = "" if per == 1 else f"_{per}"
        label = f"{per} record{'s' if per > 1 else ''} per message"
        for key, text, values, unit, target in [
            (f"ratio{suffix}", f"drain rate / the lower ceiling, {label}", [r["ratio"] for r in of], "", TARGET),
            (f"messages_per_s{suffix}", f"messages/s drained by the platform, {label}",
             [r["messages_per_s"] for r in of], "msg/s", None),
            (f"records_per_s{suffix}", f"records/s written by the platform, {label}",
             [r["records_per_s"] for r in of], "records/s", None),
            (f"bare_records_per_s{suffix}", f"bare consumer, records/s, {label}",
             [r["bare_consumer"]["records_per_s"] for r in of], "records/s", None),
            (f"insert_many_records_per_s{suffix}", f"insert_many of the same documents, records/s, {label}",
             [r["insert_many"]["rate"] for r in of], "records/s", None),
            (f"cpu_us_per_message{suffix}", f"daemon + worker CPU per message, {label}",
             [r["cpu_us_per_message"] for r in of], "µs", None),
            (f"cpu_us_per_record{suffix}", f"daemon + worker CPU per record, {label}",
             [r["cpu_us_per_record"] for r in of], "µs", None),
            (f"bare_cpu_us_per_message{suffix}", f"the bare consumer's own CPU per message (aio-pika), {label}",
             [r["bare_consumer"]["cpu_us_per_message"] for r in of], "µs", None),
        ]:
            result.add(metric_from_runs(key, text, values, unit, target, ""))
    result.runs = runs
