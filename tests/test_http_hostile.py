"""A hostile client of the HTTP endpoint (issue 14, items 15-17), against the real daemon.

What it tried, and what it must get now: the tenants and files of ``/health`` without the
admin token; new metric series from made-up tenant ids; ``/metrics`` without the metrics
token; a stats request that makes the daemon read its log; connections held open by
sending headers or a body slowly, or by opening many; reports faster than the tenant's rate,
windows in year 9999, absurd figures; ``inf`` and tiny periods in profiles and settings.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mysimbdp.config import Settings, load_settings
from mysimbdp.errors import ConfigError, TenantProfileError
from mysimbdp.events.catalog import BatchFileCommitted
from mysimbdp.monitor.metrics import UNKNOWN_TENANT
from mysimbdp.tenants import load_profile
from tests.conftest import ADMIN_TOKEN
from tests.harness.wait import await_until
from tests.test_monitor import TOKEN, auth, report_body, write_profile

ADMIN = auth(ADMIN_TOKEN)
CLOSED_WITHIN_S = 15.0  # generous: the test checks that a slow client is cut off, not how fast


async def _started(start_daemon: Callable[..., Any], settings: Settings, tenant: str) -> Any:
    write_profile(settings, tenant)
    rd = await start_daemon(settings)
    await await_until(lambda: tenant in rd.daemon.tenants, 10, f"{tenant} onboarded", 0.05)
    return rd


def _series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- item 15: what an anonymous client may learn --------------------------------------------


async def test_health_details_only_with_the_admin_token(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    rd = await _started(start_daemon, settings_factory(), tenant_id)
    for headers in ({}, auth(TOKEN), auth("not-a-token")):
        async with http.get(rd.url + "/health", headers=headers) as resp:
            text = await resp.text()
            assert resp.status in (200, 503)
            assert list(await resp.json()) == ["status"], text
        assert tenant_id not in text
    async with http.get(rd.url + "/health", headers=ADMIN) as resp:
        body = await resp.json()
    assert tenant_id in body["components"]["tenants"]["tenants"]


async def test_made_up_tenant_ids_never_become_metric_labels(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    rd = await _started(start_daemon, settings_factory(), tenant_id)
    made_up = [f"x{uuid.uuid4().hex[:12]}" for _ in range(40)]
    for tenant in made_up[:20]:
        async with http.put(f"{rd.url}/tenants/{tenant}/files/a.csv", data=b"n\n1\n") as resp:
            assert resp.status in (401, 403, 404)
    async with http.get(rd.url + "/metrics") as resp:
        first = _series(await resp.text())
    for tenant in made_up[20:]:
        async with http.put(f"{rd.url}/tenants/{tenant}/files/a.csv", data=b"n\n1\n",
                            headers=auth("guess")) as resp:
            assert resp.status in (401, 403, 404)
    rd.daemon.events.emitter("batch").emit(BatchFileCommitted(
        tenant=tenant_id, file="f.csv", sha256="0" * 64, bytes=10, records_in=1, records_written=1, records_rejected=0,
        duplicates=0, records_skipped=0, seconds=0.1, records_per_s=10.0, mb_per_s=0.0, app="a", ledger_id="l"))
    async with http.get(rd.url + "/metrics") as resp:
        text = await resp.text()
    second = _series(text)
    assert not any(t in text for t in made_up)
    labels = {dict(labels).get("tenant") for _, labels in second} - {None}
    assert labels <= {tenant_id, UNKNOWN_TENANT}, labels
    # a configured tenant's events still get its own series; the made-up ones added none
    assert ("mysimbdp_files_committed_total", (("tenant", tenant_id),)) in second
    assert {s for s in second - first if dict(s[1]).get("tenant") != tenant_id} == set()


async def test_metrics_token_when_configured(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        http: aiohttp.ClientSession) -> None:
    rd = await start_daemon(settings_factory(metrics_token="scrape-me"))
    for headers, status in (({}, 401), (auth("wrong"), 403), (auth(TOKEN), 403),
                            (auth("scrape-me"), 200), (ADMIN, 200)):
        async with http.get(rd.url + "/metrics", headers=headers) as resp:
            assert resp.status == status, headers
            if status == 200:
                assert "mysimbdp_store_up" in await resp.text()


# -- item 16: statistics from memory, slow clients cut off ----------------------------------


async def test_tenant_stats_come_from_memory_not_the_log(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    settings = settings_factory()
    rd = await _started(start_daemon, settings, tenant_id)
    batch = rd.daemon.events.emitter("batch")
    for n in (100, 300):
        batch.emit(BatchFileCommitted(tenant=tenant_id, file=f"f{n}.csv", sha256="0" * 64, bytes=n, records_in=n,
                                      records_written=n, records_rejected=0, duplicates=0, records_skipped=0,
                                      seconds=1.0, records_per_s=float(n), mb_per_s=0.0, app="a", ledger_id="l"))
    batch.emit(BatchFileCommitted(tenant="nobody", file="o.csv", sha256="0" * 64, bytes=1, records_in=7,
                                  records_written=7, records_rejected=0, duplicates=0, records_skipped=0, seconds=1.0,
                                  records_per_s=7.0, mb_per_s=0.0, app="a", ledger_id="l"))
    # the log is gone: a daemon that read it for each request would now answer nothing
    os.truncate(settings.log_file, 0)
    url = f"{rd.url}/tenants/{tenant_id}/stats"
    answers = await asyncio.gather(*(http.get(url, headers=auth(TOKEN)) for _ in range(12)))
    for resp in answers:
        assert resp.status == 200
        data = await resp.json()
        resp.release()
        assert data["source"]["kind"] == "in-process"
        assert data["batch"]["files_committed"] == 2 and data["batch"]["records_written"] == 400
    assert "nobody" not in rd.daemon.monitor.live._hours


async def closed(reader: asyncio.StreamReader, within_s: float = CLOSED_WITHIN_S) -> bool:
    """True once the daemon closed the connection (what it sent before, if anything, is read);
    False if it sends nothing more and keeps it open for ``within_s``."""
    try:
        while await asyncio.wait_for(reader.read(65536), within_s):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_slow_headers_and_slow_bodies_are_cut_off(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings]) -> None:
    rd = await start_daemon(settings_factory(http={"header_timeout_s": 0.5, "body_timeout_s": 0.5}))
    port = rd.daemon.http.port
    # headers that never end
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    assert await closed(reader)
    writer.close()
    # a connection that sends nothing at all
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await closed(reader)
    writer.close()
    # a body promised and never sent
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"tenant\":")
    await writer.drain()
    assert await closed(reader)
    writer.close()
    counted = rd.daemon.http.health()["closed"]
    assert counted["header_timeout"] >= 2 and counted["body_timeout"] >= 1, counted
    # a client that keeps its promises is served as before
    async with aiohttp.ClientSession() as http, http.get(rd.url + "/health") as resp:
        assert resp.status in (200, 503)


async def test_connections_are_capped(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings]) -> None:
    cap = 8
    rd = await start_daemon(settings_factory(http={"max_connections": cap, "header_timeout_s": 60,
                                                   "body_timeout_s": 60}))
    port = rd.daemon.http.port
    # idle connections fill the cap: a real request still gets in (the longest idle one goes)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
    async with aiohttp.ClientSession() as http, http.get(rd.url + "/health") as resp:
        assert resp.status in (200, 503)
    assert rd.daemon.http.guard.closed["evicted"] >= 1
    for _, w in idle:
        w.close()
    await await_until(lambda: len(rd.daemon.http.guard) == 0, 10, "no connection left in the guard", 0.05)
    # busy connections fill the cap: one more is closed at once, not queued
    busy = []
    for _ in range(cap):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        busy.append((reader, writer))
    await await_until(lambda: sum(c.request is not None for c in rd.daemon.http.guard._conns.values()) == cap, 10,
                      f"{cap} requests under way", 0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed(reader)
    assert rd.daemon.http.guard.closed["refused"] >= 1
    assert len(rd.daemon.http.guard) <= cap
    for _, w in [*busy, (reader, writer)]:
        w.close()


# -- item 17: reports and profile values ----------------------------------------------------


async def test_reports_beyond_the_tenants_rate_are_429_and_not_stored(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    rate, burst, sent = 1.0, 5, 30
    rd = await _started(start_daemon, settings_factory(http={"reports_per_s": rate, "reports_burst": burst}),
                        tenant_id)
    monitor = rd.daemon.monitor
    t0 = time.monotonic()
    statuses, retry_after = [], []
    for i in range(sent):
        async with http.post(f"{rd.url}/reports", json=report_body(tenant_id, instance=f"i{i}"),
                             headers=auth(TOKEN)) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert (await resp.json())["code"] == "rate_limited"
                retry_after.append(int(resp.headers["Retry-After"]))
    elapsed = time.monotonic() - t0
    accepted = statuses.count(202)
    assert set(statuses) == {202, 429}
    assert burst <= accepted <= burst + int(elapsed * rate) + 1, (accepted, elapsed)
    assert retry_after and min(retry_after) >= 1
    assert monitor.counts["reports"] == accepted
    assert monitor.counts["rate_limited"] == sent - accepted
    async with http.get(rd.url + "/metrics") as resp:
        text = await resp.text()
    refused = [s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "mysimbdp_stream_reports_refused_total" and s.labels.get("reason") == "rate"]
    assert refused == [sent - accepted]


@pytest.mark.parametrize(("change", "field"), [
    ({"window_start": "9999-12-31T23:59:49Z", "window_end": "9999-12-31T23:59:59Z"},
     "window_end"),  # an instance that would never expire
    ({"window_start": "2000-01-01T00:00:00Z", "window_end": "2000-01-01T00:00:10Z"}, "window_end"),
    ({"window_start": (datetime.now(UTC) - timedelta(hours=5)).isoformat()}, "(body)"),  # 5 h long
    ({"avg_ingest_ms": 1e300}, "avg_ingest_ms"),
    ({"messages": 10**17}, "messages"),  # counts stay far from int64, where the store would refuse them
])
async def test_windows_and_figures_are_bounded(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, change: dict[str, Any], field: str) -> None:
    rd = await _started(start_daemon, settings_factory(), tenant_id)
    async with http.post(f"{rd.url}/reports", json=report_body(tenant_id, **change), headers=auth(TOKEN)) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["code"] == "invalid_report" and body["field"] == field, body
    assert tenant_id not in rd.daemon.monitor._latest


async def test_an_instance_expires_by_the_platforms_clock(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    rd = await _started(start_daemon, settings_factory(), tenant_id)
    ahead = (datetime.now(UTC) + timedelta(seconds=200)).isoformat()  # within the allowed clock skew
    async with http.post(f"{rd.url}/reports", json=report_body(tenant_id, window_end=ahead),
                         headers=auth(TOKEN)) as resp:
        assert resp.status == 202
    monitor = rd.daemon.monitor
    assert len(monitor.snapshot_reports(tenant_id, 0.5)) == 1
    monitor._heard[tenant_id]["ext-1"] -= 10  # silent for 20 periods, whatever its window_end says
    assert monitor.snapshot_reports(tenant_id, 0.5) == ()


def _profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text('id = "p"\n' + text)
    return path


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[stream]\napp = "s"\nreport_interval_s = inf\n', "stream.report_interval_s", "finite"),
    ('[stream]\napp = "s"\nreport_interval_s = 0.001\n', "stream.report_interval_s", "greater than or equal to 0.5"),
    ('[stream]\napp = "s"\napp_timeout_s = nan\n', "stream.app_timeout_s", "finite"),
    ('[stream]\napp = "s"\napp_timeout_s = 1e9\n', "stream.app_timeout_s", "less than or equal"),
    ('[batch]\napp = "b"\ntimeout_s = inf\n', "batch.timeout_s", "finite"),
    ('[batch]\napp = "b"\nmax_error_rate = nan\n', "batch.max_error_rate", "finite"),
    ('[monitor]\ncooldown_s = 1e12\n', "monitor.cooldown_s", "less than or equal"),
    ('[monitor]\nmax_avg_ingest_ms = inf\n', "monitor.max_avg_ingest_ms", "finite"),
])
def test_profile_numbers_are_finite_and_bounded(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(TenantProfileError) as info:
        load_profile(_profile(tmp_path, text))
    assert info.value.key == key and problem in str(info.value)


@pytest.mark.parametrize(("override", "name"), [
    ({"drain_timeout_s": float("inf")}, "MYSIMBDP_DRAIN_TIMEOUT_S"),
    ({"retry_max_s": 1e9}, "MYSIMBDP_RETRY_MAX_S"),
    ({"batch": {"rescan_interval_s": float("inf")}}, "MYSIMBDP_BATCH__RESCAN_INTERVAL_S"),
    ({"http": {"body_timeout_s": float("inf")}}, "MYSIMBDP_HTTP__BODY_TIMEOUT_S"),
    ({"http": {"reports_per_s": 0}}, "MYSIMBDP_HTTP__REPORTS_PER_S"),
])
def test_settings_numbers_are_finite_and_bounded(tmp_path: Path, override: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, **override)
    assert name in str(info.value)
