"""The platform under load, and the ceilings: the same servers under a client doing no platform work.

:class:`BenchDaemon` is the harness's :class:`~tests.harness.daemon.Daemon` with the
benchmarks' settings in a folder of the run. :func:`load_file` drops a file and waits for its
outcome; :func:`wait_stream_ready` waits for a stream tenant's consumers; :class:`LatencyProbe`
finds published messages in the store (how latency is measured: ``bench/methods/stream.md``).
The ceilings are :func:`insert_many_rate`, the store's bulk intake of already-built BSON
documents, and :class:`BareConsumer`, the broker's delivery to a consumer that only acknowledges.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from bench.data import DataFile
from bench.env import BenchEnv
from mysimbdp.config import load_settings
from mysimbdp.stream.records import document_id
from mysimbdp.tenants import write_profile
from tests.harness.daemon import Daemon, status_mb
from tests.harness.wait import await_until

__all__ = ["BenchDaemon", "BenchError", "BenchSkipped", "batch_profile", "stream_profile", "BATCH_SETTINGS",
           "FLIGHTS_COLLECTION", "STREAM_COLLECTION", "RUNNERS", "LoadRun", "load_file", "event_time",
           "PeakSampler", "wait_stream_ready", "LatencyProbe", "platform_reports", "read_documents", "copy_indexes",
           "insert_many_rate", "BareConsumer", "timing"]

FLIGHTS_COLLECTION = "flights"
STREAM_COLLECTION = "readings"
#: Platform settings of the benchmark daemons. A file dropped by rename is complete at once,
#: so the watcher's stability wait is shortened from 1 s to 0.2 s (it would otherwise add a
#: constant second to every drop-to-committed time).
BATCH_SETTINGS: dict[str, Any] = {"stable_after_s": 0.2, "rescan_interval_s": 1.0}
#: Where a tenant's apps run (the profile's ``runner``): the platform's default first.
RUNNERS: tuple[str, ...] = ("process", "thread")


class BenchSkipped(Exception):
    """The benchmark cannot run here (e.g. the pipeline it measures is not installed)."""


class BenchError(Exception):
    """The platform did not do what the benchmark needs; the message says what and where to look."""


def batch_profile(tenant: str, runner: str | None = None) -> dict[str, Any]:
    """A tenant of the flights app whose limits let 1 GB files through; ``runner`` None keeps
    the platform's default (a worker process)."""
    batch = {"app": "flights", "formats": ["csv", "csv.gz", "jsonl"], "max_file_bytes": 4 * 1024**3,
             "max_staged_files": 100, "max_concurrent_files": 2, "storage_quota_bytes": 1024**4, "timeout_s": 7200.0}
    return {"id": tenant, "name": f"benchmark tenant {tenant}", "batch": batch, **({"runner": runner} if runner else {})}


def stream_profile(tenant: str, app: str = "weather_stream", stream: dict[str, Any] | None = None,
                   monitor: dict[str, Any] | None = None, runner: str | None = None) -> dict[str, Any]:
    """A stream tenant: the example weather tenant's ``[stream]`` values unless overridden."""
    section = {"app": app, "min_consumers": 1, "max_consumers": 8, "prefetch": 500,
               "batch_max_messages": 1000, "batch_max_wait_ms": 200, **(stream or {})}
    return {"id": tenant, "name": f"benchmark tenant {tenant}", "stream": section,
            **({"runner": runner} if runner else {}), **({"monitor": monitor} if monitor else {})}


def event_time(event: dict[str, Any]) -> float:
    """An event's ``ts`` as seconds since the epoch."""
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


class BenchDaemon(Daemon):
    """``mysimbdpd`` with the benchmarks' settings in its own folder of the run; ``async with``
    starts it (until ``/health`` says ok) and stops it, keeping its logs if the block failed."""

    def __init__(self, env: BenchEnv, name: str, *, tenants: Sequence[Mapping[str, Any]] = (),
                 batch: dict[str, Any] | None = None, extra_apps: dict[str, str] | None = None,
                 kill: bool = False) -> None:
        # kill: end with SIGKILL, not a graceful stop, when a load left running is not measured
        self.env, self.base, self.kill_at_exit = env, env.tmp(name), kill
        super().__init__(load_settings(
            self.base / "config", staging_dir=self.base / "staging", var_dir=self.base / "var",
            mongo_uri=env.mongo_uri, amqp_url=env.amqp_url, admin_token="bench-admin-token", log_level="info",
            log_max_bytes=2 * 1024**3,  # no rotation under the log follower
            drain_timeout_s=5.0, batch=batch or {}, stream={"management_url": env.management_url},
            extra_apps=extra_apps or {}))
        for profile in tenants:
            self.write_tenant(profile)

    def write_tenant(self, profile: Mapping[str, Any]) -> Path:
        """Write (or rewrite) a tenant profile; a running daemon picks it up by itself."""
        return write_profile(self.settings.tenants_dir, profile)

    def remove_tenant(self, tenant: str) -> None:
        """Delete a tenant's profile (the daemon offboards it)."""
        (self.settings.tenants_dir / f"{tenant}.toml").unlink(missing_ok=True)

    def peak_rss_mb(self) -> float:
        """The daemon's peak RSS so far (``VmHWM``), in MiB."""
        return status_mb(self.pid, "VmHWM")

    def drop_file(self, tenant: str, source: Path, name: str | None = None) -> float:
        """Put a copy of ``source`` into the tenant's staging folder at once (copied under a
        hidden name the watcher ignores, then renamed); returns the wall-clock time. A copy,
        not a hard link: the platform rejects a staged file with two names."""
        folder = self.settings.staging_dir / tenant
        folder.mkdir(parents=True, exist_ok=True)
        hidden = folder / f".{name or source.name}.bench"
        shutil.copyfile(source, hidden)
        t = time.time()
        os.rename(hidden, folder / (name or source.name))
        return t

    async def __aenter__(self) -> BenchDaemon:
        try:
            await asyncio.to_thread(self.start, 90.0, (200,))
        except BaseException:
            self.keep_logs()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await asyncio.to_thread(self.kill if self.kill_at_exit else self.stop)
        if exc_type is not None and exc_type is not asyncio.CancelledError:
            self.keep_logs()

    def keep_logs(self) -> None:
        """Copy the daemon's logs to ``<data>/failures/`` (the run's folder is removed at its end)."""
        keep_logs(self, self.env, self.base.name, "the failed daemon's")


def keep_logs(daemon: Daemon, env: BenchEnv, folder: str, whose: str) -> None:
    """Copy ``daemon``'s logs to ``<data>/failures/<folder>-<run id>/`` and say where (``whose``
    logs), so that they outlive the run's folder."""
    target = env.data_dir / "failures" / f"{folder}-{env.run_id}"
    with contextlib.suppress(OSError):
        target.mkdir(parents=True, exist_ok=True)
        for source in (daemon.log.path, *daemon.logs):
            if source.exists():
                shutil.copy2(source, target / source.name)
        print(f"[bench] {whose} logs are kept in {target}", file=sys.stderr, flush=True)


@dataclass
class LoadRun:
    """One file dropped and committed. CPU is the platform's (the daemon's and its app workers')."""

    tenant: str
    file: str
    records: int
    bytes: int
    seconds: float  # drop (rename into staging) -> batch.file.committed
    platform_seconds: float  # the platform's own timing: loading start -> committed
    cpu_seconds: float
    peak_rss_mb: float  # the daemon's VmHWM after the load
    store_cpu_seconds: float | None = None  # the embedded store's CPU over the interval, if known
    peak_anon_mb: float | None = None  # the highest RssAnon sampled during the load
    worker_cpu_seconds: float = 0.0  # the app workers' part of cpu_seconds
    runner: str = "process"

    @property
    def rate(self) -> float:
        """Records per second, drop to committed."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def daemon_cpu_seconds(self) -> float:
        """The daemon's own part of :attr:`cpu_seconds`."""
        return self.cpu_seconds - self.worker_cpu_seconds

    def us_per_record(self, seconds: float) -> float:
        """``seconds`` of CPU in microseconds per record of this load."""
        return seconds / self.records * 1e6 if self.records else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        """Platform CPU microseconds per record."""
        return self.us_per_record(self.cpu_seconds)

    def to_json(self) -> dict[str, Any]:
        """The raw repetition as written to the results file."""
        def share(cpu: float | None) -> float | None:
            return round(cpu / self.seconds, 3) if cpu is not None and self.seconds > 0 else None

        return {"tenant": self.tenant, "runner": self.runner, "file": self.file, "records": self.records,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "platform_seconds": round(self.platform_seconds, 3),
                "records_per_s": round(self.rate, 1), "cpu_seconds": round(self.cpu_seconds, 3),
                "daemon_cpu_seconds": round(self.daemon_cpu_seconds, 3),
                "worker_cpu_seconds": round(self.worker_cpu_seconds, 3),
                "cpu_us_per_record": round(self.cpu_us_per_record, 3),
                "daemon_cpu_us_per_record": round(self.us_per_record(self.daemon_cpu_seconds), 3),
                "worker_cpu_us_per_record": round(self.us_per_record(self.worker_cpu_seconds), 3),
                "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_anon_mb": round(self.peak_anon_mb, 1) if self.peak_anon_mb is not None else None,
                "daemon_cpu_share": share(self.cpu_seconds), "store_cpu_share": share(self.store_cpu_seconds)}


async def load_file(daemon: BenchDaemon, tenant: str, data: DataFile, timeout: float,
                    runner: str = "process") -> LoadRun:
    """Drop ``data`` into the tenant's staging folder and wait until it is committed; the
    flights collection is counted afterwards as a cross-check of the event. Raises
    :class:`BenchError` if the file is rejected or fewer records than it holds were written."""
    name = f"{data.path.stem}-{uuid.uuid4().hex[:6]}{''.join(data.path.suffixes)}"
    env = daemon.env
    cpu0, store0 = daemon.cpu(), env.store_cpu()
    dropped = daemon.drop_file(tenant, data.path, name)
    pid = daemon.pid
    async with PeakSampler(lambda: status_mb(pid, "RssAnon")) as anon:
        event = await await_until(lambda: daemon.log.first(("batch.file.committed", "batch.file.rejected"),
                                                           tenant=tenant, file=name),
                                  timeout, f"the outcome of {name}", 0.02, daemon.alive, f"; see {daemon.log.path}")
    cpu, store1 = daemon.cpu() - cpu0, env.store_cpu()
    if event["event"] != "batch.file.committed":
        raise BenchError(f"{name} was rejected: {event.get('code')}: {event.get('reason')}")
    written = int(event.get("records_written", 0)) + int(event.get("duplicates", 0))
    if written != data.rows:
        raise BenchError(f"{name}: {written} of {data.rows} records written "
                         f"({event.get('records_rejected')} rejected); see {daemon.log.path}")
    count = await env.db(f"tenant_{tenant}")[FLIGHTS_COLLECTION].estimated_document_count()
    if count < written:
        raise BenchError(f"{name}: the event says {written} records but the collection holds {count}")
    store = store1 - store0 if store0 is not None and store1 is not None else None
    return LoadRun(tenant, name, data.rows, data.bytes, event_time(event) - dropped, float(event.get("seconds", 0.0)),
                   cpu.total, daemon.peak_rss_mb(), store, anon.peak, cpu.workers, runner)


class PeakSampler:
    """Calls ``read`` every ``every_s`` while the ``async with`` block runs, and once at its end;
    ``peak``: the highest value read, ``samples``: how many reads succeeded."""

    def __init__(self, read: Callable[[], float], every_s: float = 0.1) -> None:
        self.read, self.every_s = read, every_s
        self.peak: float | None = None
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def _take(self) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.peak = max(self.peak or 0.0, self.read())
            self.samples += 1

    async def _sample(self) -> None:
        while True:
            self._take()
            await asyncio.sleep(self.every_s)

    async def __aenter__(self) -> PeakSampler:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._take()  # the state at the block's end, however short it was


async def wait_stream_ready(daemon: BenchDaemon, tenant: str, consumers: int = 1, timeout: float = 60.0) -> None:
    """Wait until the tenant's queue is declared and ``consumers`` consumers have started."""
    await await_until(lambda: daemon.log.first("stream.topology.declared", tenant=tenant)
                      and len(daemon.log.find("stream.consumer.started", tenant=tenant)) >= consumers,
                      timeout, f"the stream topology and consumers of {tenant}", 0.05, daemon.alive,
                      f"; see {daemon.log.path}")


def platform_reports(daemon: BenchDaemon, tenant: str) -> dict[str, Any]:
    """The platform's own view from its ``stream.report`` events: weighted mean and worst p95."""
    reports = [r for r in daemon.log.find("stream.report", tenant=tenant) if r.get("messages")]
    messages = sum(int(r["messages"]) for r in reports)
    if not messages:
        return {"reports": 0}
    avg = sum(float(r["avg_ingest_ms"]) * int(r["messages"]) for r in reports) / messages
    return {"reports": len(reports), "messages": messages, "avg_ingest_ms": round(avg, 1),
            "max_p95_ingest_ms": round(max(float(r["p95_ingest_ms"]) for r in reports), 1)}


class LatencyProbe:
    """Finds a sample of the published messages in the store as soon as they are committed."""

    def __init__(self, collection: Any, id_prefix: str, total: int, rate: float, samples: int = 2000,
                 interval: float = 0.02, batch: int = 300) -> None:
        self.collection, self.prefix, self.rate = collection, id_prefix, rate
        self.pending = list(range(0, total, max(1, total // samples)))
        self.latencies_ms: list[float] = []
        self.poll_seconds: list[float] = []
        self.interval, self.batch = interval, batch

    def doc_id(self, n: int) -> str:
        """The ``_id`` of the reading of message ``n`` (the publisher's ``message_id`` is ``<prefix>-<n>``)."""
        return document_id(f"{self.prefix}-{n}", None)

    async def run(self, started: float, timeout: float) -> None:
        """Poll until every sampled message is found (or ``timeout`` after ``started``)."""
        while self.pending and time.time() < started + timeout:
            published = (time.time() - started) * self.rate + self.rate  # a generous upper bound
            ids = [self.doc_id(n) for n in self.pending[: self.batch] if n <= published]
            if ids:
                t0 = time.time()
                found = {d["_id"]: d.get("received_at")
                         async for d in self.collection.find({"_id": {"$in": ids}}, {"received_at": 1})}
                seen = time.time()
                self.poll_seconds.append(seen - t0)
                for received in found.values():
                    if not isinstance(received, datetime):
                        raise BenchError(f"a reading without received_at ({received!r}): "
                                         "is the weather stream app installed?")
                    self.latencies_ms.append((seen - received.timestamp()) * 1000.0)
                if found:
                    keep = set(ids) - set(found)
                    head = [n for n in self.pending[: self.batch] if self.doc_id(n) in keep or n > published]
                    self.pending = head + self.pending[self.batch:]
            await asyncio.sleep(self.interval)
        if self.pending:
            raise BenchError(f"{len(self.pending)} sampled messages not committed {timeout:.0f}s after publishing began")


def timing(records: int, seconds: float, store_cpu_seconds: float | None = None) -> dict[str, Any]:
    """``{"records", "seconds", "rate", "store_cpu_share"}`` of records written or messages handled."""
    return {"records": records, "seconds": round(seconds, 4), "rate": round(records / seconds if seconds > 0 else 0.0, 1),
            "store_cpu_share": (round(store_cpu_seconds / seconds, 3)
                                if store_cpu_seconds is not None and seconds > 0 else None)}


async def read_documents(collection: Any) -> list[RawBSONDocument]:
    """The documents of ``collection`` as the platform wrote them (``_id`` included), as the
    store's own BSON bytes: already built, nothing left to encode."""
    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return [doc async for doc in raw.find({}, batch_size=10_000)]


async def copy_indexes(source: Any, target: Any) -> list[str]:
    """Create on ``target`` the indexes ``source`` has (but ``_id``): the ceiling writes into a
    collection indexed like the platform's, so both pay the same index maintenance."""
    created = []
    for name, info in (await source.index_information()).items():
        if name != "_id_":
            options = {k: v for k, v in info.items() if k in ("unique", "sparse")}
            await target.create_index(list(info["key"]), name=name, **options)
            created.append(name)
    return created


async def insert_many_rate(collection: Any, documents: Sequence[RawBSONDocument], batch_size: int,
                           store_cpu: Callable[[], float | None]) -> dict[str, Any]:
    """Write ``documents`` with ``insert_many(ordered=False)`` in batches of ``batch_size``, one
    write at a time, every batch sliced off before the clock starts; only the writes are timed.
    ``store_cpu`` reads the store's CPU seconds, to report how busy the store was."""
    batches = [documents[start:start + batch_size] for start in range(0, len(documents), batch_size)]
    cpu0, t0 = store_cpu(), time.perf_counter()
    for batch in batches:
        await collection.insert_many(batch, ordered=False)
    seconds, cpu1 = time.perf_counter() - t0, store_cpu()
    return timing(len(documents), seconds, cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)


class BareConsumer:
    """An aio-pika consumer of a quorum queue like a tenant's, bound to ``routing_key`` on the
    ingest exchange, that acknowledges every message and does nothing else. It times the
    publish stamp (header ``timestamp_ms``) of the first message to its last acknowledgement."""

    def __init__(self, amqp_url: str, exchange: str, queue: str, routing_key: str, prefetch: int) -> None:
        self.amqp_url, self.exchange, self.queue, self.routing_key, self.prefetch = \
            amqp_url, exchange, queue, routing_key, prefetch
        self.count, self.first_published, self.last_ack = 0, 0.0, 0.0
        self._connection: Any = None
        self._queue: Any = None
        self._tag = ""
        self._expected = 0
        self._done = asyncio.Event()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if not self.first_published:
            stamp = (message.headers or {}).get("timestamp_ms")
            self.first_published = float(stamp) / 1000.0 if isinstance(stamp, int | float) else time.time()
        await message.ack()
        self.count += 1
        self.last_ack = time.time()
        if self.count >= self._expected:
            self._done.set()

    async def start(self, expected: int) -> None:
        """Declare the queue, connect and begin consuming; done after ``expected`` messages."""
        self._expected = expected
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(exchange, routing_key=self.routing_key)
        await channel.set_qos(prefetch_count=self.prefetch)
        self._queue, self._tag = queue, await queue.consume(self._on_message)

    async def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for every expected message, then delete the queue; the :func:`timing`."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
            await self._queue.cancel(self._tag)
            await self._queue.delete(if_unused=False, if_empty=False)
        finally:
            await self._connection.close()
        return timing(self.count, self.last_ack - self.first_published)
