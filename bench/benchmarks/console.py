"""(10) What live console pages cost: 50 open pages during a batch load and a stream.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/console.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import orjson

from bench.benchmarks.batch import flights_data
from bench.cli import Session
from bench.data import weather_repeated
from bench.loads import (
    BATCH_SETTINGS,
    BenchDaemon,
    batch_profile,
    load_file,
    stream_profile,
    wait_stream_ready,
)
from bench.results import Result, Target, metric_from_runs
from tests.harness.publish import PublishTool
from tests.harness.wait import wait_documents

__all__ = ["NAME", "TITLE", "run", "Viewer"]

NAME = "console"
TITLE = "Console viewers' cost"
VIEWERS = 50
#: Issue 17: 50 live pages add at most 5 % to the daemon's CPU during a load and a stream.
TARGET = Target("<=", 5.0)
ADMIN_TOKEN = "bench-admin-token"
_FILE_EVENTS = {"batch.file.loading", "batch.file.resumed", "batch.file.committed", "batch.file.rejected",
                "upload.staged"}


class Viewer:
    """What one open console page does: sign in, read the tenant's files, follow the events and
    read the files again on every file event (as ``app.js`` does)."""

    def __init__(self, url: str, tenant: str) -> None:
        self.url, self.tenant = url, tenant
        self.events = 0
        self.requests = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with self._session.post(f"{self.url}/console/session", json={"token": ADMIN_TOKEN}) as resp:
            resp.raise_for_status()
        await self._files()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _files(self) -> None:
        assert self._session is not None
        async with self._session.get(f"{self.url}/tenants/{self.tenant}/files?limit=50") as resp:
            await resp.read()
        self.requests += 1

    async def _follow(self) -> None:
        assert self._session is not None
        with contextlib.suppress(aiohttp.ClientError):
            async with self._session.get(f"{self.url}/console/events",
                                         timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                name = ""
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.events += 1
                        data = orjson.loads(line[6:])
                        if name in _FILE_EVENTS and data.get("tenant") == self.tenant:
                            await self._files()


async def _round(session: Session, daemon: BenchDaemon, i: int, viewers: int) -> dict[str, Any]:
    """A batch load and a stream at once, with ``viewers`` pages open; the daemon's CPU and the rates."""
    env, data = session.env, flights_data(session)
    weather = weather_repeated(session.scale.stream_messages, env.data_dir)
    batch_tenant, stream_tenant = env.new_tenant("cb"), env.new_tenant("cs")
    daemon.write_tenant(batch_profile(batch_tenant))
    daemon.write_tenant(stream_profile(stream_tenant))
    await wait_stream_ready(daemon, stream_tenant)
    await asyncio.sleep(max(1.0, daemon.settings.batch.rescan_interval_s))  # the batch tenant is watched
    pages = [Viewer(daemon.url, batch_tenant) for _ in range(viewers)]
    await asyncio.gather(*(p.start() for p in pages))
    try:
        cpu0, started = daemon.cpu(), time.monotonic()
        publisher = PublishTool(env.amqp_url, stream_tenant, weather.path, f"cv{i}{viewers}")
        await publisher.start()
        load = await load_file(daemon, batch_tenant, data, session.scale.timeout_s)
        await wait_documents(env.db(f"tenant_{stream_tenant}")["readings"], weather.rows, session.scale.timeout_s,
                             daemon.alive)
        cpu, seconds = daemon.cpu() - cpu0, time.monotonic() - started
        await publisher.wait(60)
    finally:
        await asyncio.gather(*(p.stop() for p in pages))
    for tenant in (batch_tenant, stream_tenant):
        daemon.remove_tenant(tenant)
        await env.drop(f"tenant_{tenant}")
    return {"viewers": viewers, "records": data.rows, "messages": weather.rows, "seconds": round(seconds, 3),
            "records_per_s": round(load.rate, 1), "cpu_seconds": round(cpu.total, 3),
            "daemon_cpu_seconds": round(cpu.daemon, 3),
            "cpu_us_per_item": round(cpu.total / (data.rows + weather.rows) * 1e6, 3),
            "events_per_page": round(sum(p.events for p in pages) / viewers, 1) if viewers else 0,
            "requests_per_page": round(sum(p.requests for p in pages) / viewers, 1) if viewers else 0}


async def run(session: Session, result: Result) -> None:
    """Interleaved rounds without and with :data:`VIEWERS` pages, on one daemon."""
    rounds: list[dict[str, Any]] = []
    async with BenchDaemon(session.env, "console", batch=BATCH_SETTINGS) as daemon:
        for i in range(session.repeat):
            for viewers in (0, VIEWERS) if i % 2 == 0 else (VIEWERS, 0):
                session.say(f"{NAME}: round {i + 1}/{session.repeat}, {viewers} pages open")
                rounds.append(await _round(session, daemon, i, viewers))
    bare = [r for r in rounds if r["viewers"] == 0]
    watched = [r for r in rounds if r["viewers"] == VIEWERS]
    extra = [(w["cpu_us_per_item"] - b["cpu_us_per_item"]) / b["cpu_us_per_item"] * 100
             for b, w in zip(bare, watched, strict=True)]
    result.settings = {"viewers": VIEWERS, "flights_rows": flights_data(session).rows,
                       "stream_messages": session.scale.stream_messages, "pages_sign_in_as": "operator (every event)"}
    for key, label, values, unit, target, note in [
        ("extra_cpu_pct", f"daemon + worker CPU added by {VIEWERS} live pages", extra, "%", TARGET,
         "per item (record or message) of the same load, with against without pages, per pair of rounds"),
        ("cpu_us_per_item", "CPU per item, no page open", [r["cpu_us_per_item"] for r in bare], "µs", None, ""),
        ("watched_cpu_us_per_item", f"CPU per item, {VIEWERS} pages open", [r["cpu_us_per_item"] for r in watched],
         "µs", None, ""),
        ("records_per_s", "the load's records/s, no page open", [r["records_per_s"] for r in bare], "records/s",
         None, ""),
        ("watched_records_per_s", f"the load's records/s, {VIEWERS} pages open",
         [r["records_per_s"] for r in watched], "records/s", None, ""),
        ("events_per_page", "events each page received", [r["events_per_page"] for r in watched], "", None, ""),
    ]:
        result.add(metric_from_runs(key, label, values, unit, target, note))
    result.runs = rounds
