"""Stream loads through a running daemon: profiles, publishing with ``mysimbdp publish``,
waiting for committed documents, and a latency probe.

Latency is measured from outside the daemon: the publish tool stamps each message with its
publish time (header ``timestamp_ms``), the weather stream app stores it in each reading as
``received_at``, and a probe polls the store every ``interval`` seconds for a sample of the
messages by ``_id`` (the platform's id of message ``<id-prefix>-<n>``). A message's latency
is the end of the poll that first finds its document minus ``received_at``: an upper bound,
late by at most one poll.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika

from bench.daemon import BenchDaemon
from bench.env import BenchEnv
from bench.session import BenchError
from mysimbdp.stream.records import document_id

__all__ = ["stream_profile", "STREAM_APP", "STREAM_COLLECTION", "EXCHANGE", "wait_stream_ready",
           "Publisher", "wait_documents", "LatencyProbe", "platform_reports", "declare_ceiling_queue",
           "delete_queue"]

STREAM_APP = "weather_stream"
STREAM_COLLECTION = "readings"
EXCHANGE = "mysimbdp.ingest"


def stream_profile(tenant: str, app: str = STREAM_APP, stream: dict[str, Any] | None = None,
                   monitor: dict[str, Any] | None = None, runner: str | None = None) -> dict[str, Any]:
    """A stream tenant: the example weather tenant's ``[stream]`` values unless overridden;
    ``runner`` None keeps the platform's default (the app in a worker process)."""
    section = {"app": app, "min_consumers": 1, "max_consumers": 8, "prefetch": 500,
               "batch_max_messages": 1000, "batch_max_wait_ms": 200, **(stream or {})}
    profile: dict[str, Any] = {"id": tenant, "name": f"benchmark tenant {tenant}", "stream": section}
    if runner is not None:
        profile["runner"] = runner
    if monitor:
        profile["monitor"] = monitor
    return profile


async def wait_stream_ready(daemon: BenchDaemon, tenant: str, consumers: int = 1, timeout: float = 60.0) -> None:
    """Wait until the tenant's queue is declared and ``consumers`` consumers have started."""
    await daemon.log.wait_for(lambda e: e.get("event") == "stream.topology.declared" and e.get("tenant") == tenant,
                              timeout, what=f"stream topology of {tenant}", alive=daemon.alive)
    deadline = time.monotonic() + timeout
    while len(daemon.log.find(lambda e: e.get("event") == "stream.consumer.started"
                              and e.get("tenant") == tenant)) < consumers:
        if time.monotonic() > deadline:
            raise BenchError(f"{tenant}'s consumers did not start within {timeout:.0f}s; see {daemon.log.path}")
        await asyncio.sleep(0.05)


@dataclass
class Publisher:
    """``mysimbdp publish`` as a child process (the tenants' own tool)."""

    env: BenchEnv
    tenant: str
    file: Path
    id_prefix: str
    rate: float | None = None
    started: float = 0.0
    proc: asyncio.subprocess.Process | None = None
    output: str = ""
    extra: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        """The command line."""
        exe = Path(sys.executable).parent / "mysimbdp"
        base = [str(exe)] if exe.exists() else [sys.executable, "-c", "from mysimbdp.cli import main; main()"]
        cmd = [*base, "publish", "--tenant", self.tenant, "--amqp-url", self.env.amqp_url,
               "--id-prefix", self.id_prefix, *self.extra]
        if self.rate:
            cmd += ["--rate", f"{self.rate:g}"]
        return [*cmd, str(self.file)]

    async def start(self) -> None:
        """Launch the tool."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYSIMBDP_")}
        env["MYSIMBDP_CONFIG_DIR"] = str(self.env.root)  # no platform config needed to publish
        self.started = time.time()
        self.proc = await asyncio.create_subprocess_exec(*self.command(), env=env, stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.STDOUT)

    async def wait(self, timeout: float) -> str:
        """Wait for the tool to finish; returns its summary; raises if it failed."""
        assert self.proc is not None
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            raise BenchError(f"mysimbdp publish did not finish within {timeout:.0f}s") from None
        self.output = out.decode(errors="replace").strip()
        if self.proc.returncode != 0:
            raise BenchError(f"mysimbdp publish exited with {self.proc.returncode}: {self.output[-500:]}")
        return self.output.splitlines()[-1] if self.output else ""


async def wait_documents(collection: Any, expected: int, timeout: float, interval: float = 0.05,
                         alive: Any = None) -> float:
    """Poll until ``collection`` holds ``expected`` documents; returns the wall-clock time seen."""
    deadline = time.monotonic() + timeout
    while True:
        count = await collection.estimated_document_count()
        if count >= expected:
            return time.time()
        if alive is not None and not alive():
            raise BenchError("the daemon exited while documents were awaited")
        if time.monotonic() > deadline:
            raise BenchError(f"{count} of {expected} documents after {timeout:.0f}s")
        await asyncio.sleep(interval)


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    raise BenchError(f"a reading without received_at ({value!r}): is the weather stream app installed?")


class LatencyProbe:
    """Finds a sample of the published messages in the store as soon as they are committed."""

    def __init__(self, collection: Any, id_prefix: str, total: int, rate: float, samples: int = 2000,
                 interval: float = 0.02, batch: int = 300) -> None:
        self.collection = collection
        self.prefix = id_prefix
        self.rate = rate
        self.step = max(1, total // samples)
        self.pending = list(range(0, total, self.step))
        self.latencies_ms: list[float] = []
        self.interval = interval
        self.batch = batch
        self.poll_seconds: list[float] = []

    def doc_id(self, n: int) -> str:
        """The ``_id`` of the reading of message ``n`` (the publisher's ``message_id`` is ``<prefix>-<n>``)."""
        return document_id(f"{self.prefix}-{n}", None)

    async def run(self, started: float, timeout: float) -> None:
        """Poll until every sampled message is found (or ``timeout`` after ``started``)."""
        deadline = started + timeout
        while self.pending and time.time() < deadline:
            published = (time.time() - started) * self.rate + self.rate  # a generous upper bound
            ids = [self.doc_id(n) for n in self.pending[: self.batch] if n <= published]
            if ids:
                t0 = time.time()
                found = {d["_id"]: d.get("received_at")
                         async for d in self.collection.find({"_id": {"$in": ids}}, {"received_at": 1})}
                seen = time.time()
                self.poll_seconds.append(seen - t0)
                if found:
                    for received in found.values():
                        self.latencies_ms.append((seen - _epoch(received)) * 1000.0)
                    keep = set(ids) - set(found)
                    head = [n for n in self.pending[: self.batch] if self.doc_id(n) in keep or n > published]
                    self.pending = head + self.pending[self.batch:]
            await asyncio.sleep(self.interval)
        if self.pending:
            raise BenchError(f"{len(self.pending)} sampled messages not committed {timeout:.0f}s after publishing began")


def platform_reports(daemon: BenchDaemon, tenant: str) -> dict[str, Any]:
    """The platform's own view from its ``stream.report`` events: weighted mean and worst p95."""
    reports = daemon.log.find(lambda e: e.get("event") == "stream.report" and e.get("tenant") == tenant
                              and bool(e.get("messages")))
    messages = sum(int(r["messages"]) for r in reports)
    if not messages:
        return {"reports": 0}
    avg = sum(float(r["avg_ingest_ms"]) * int(r["messages"]) for r in reports) / messages
    return {"reports": len(reports), "messages": messages, "avg_ingest_ms": round(avg, 1),
            "max_p95_ingest_ms": round(max(float(r["p95_ingest_ms"]) for r in reports), 1)}


async def declare_ceiling_queue(amqp_url: str, queue: str, routing_key: str) -> None:
    """A quorum queue like a tenant's, bound to ``routing_key`` on the ingest exchange."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await q.bind(exchange, routing_key=routing_key)
    finally:
        await connection.close()


async def delete_queue(amqp_url: str, queue: str) -> None:
    """Delete a queue (the vhost goes at the end of the run anyway)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
    finally:
        await connection.close()
