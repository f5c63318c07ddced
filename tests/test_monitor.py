"""The monitor component: reports over HTTP and from the log feed, alerts, stats for tenants."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mysimbdp.config import Settings
from mysimbdp.events.catalog import BatchFileCommitted, BatchFileRejected, StreamReport
from mysimbdp.http.tokens import hash_token
from tests.harness.wait import await_until

TOKEN = "monitor-tenant-token"
OTHER_TOKEN = "monitor-other-token"


def write_profile(settings: Settings, tenant: str, token: str = TOKEN, monitor: str = "",
                  stream: str = "autostart = false\nreport_interval_s = 0.5") -> None:
    text = (f'id = "{tenant}"\ntoken_sha256 = "{hash_token(token)}"\n'
            f'[stream]\napp = "monitor_nothing"\n{stream}\n[monitor]\n{monitor}\n')
    (settings.tenants_dir / f"{tenant}.toml").write_text(text)


def report_body(tenant: str, instance: str = "ext-1", **changes: Any) -> dict[str, Any]:
    end = datetime.now(UTC)
    data: dict[str, Any] = {
        "tenant": tenant, "app": "external", "instance": instance,
        "window_start": (end - timedelta(seconds=1)).isoformat(), "window_end": end.isoformat(),
        "messages": 50, "documents": 50, "bytes": 5000, "rejected": 0,
        "avg_ingest_ms": 20.0, "p95_ingest_ms": 35.0, "avg_processing_ms": 2.0, "queue_depth": 0,
    }
    data.update(changes)
    return data


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_post_report_is_accepted_kept_and_evaluated(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Any) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id)
    rd = await start_daemon(settings)
    async with http.post(f"{rd.url}/reports", json=report_body(tenant_id), headers=auth(TOKEN)) as resp:
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["instance"] == "ext-1"
    assert "ext-1" in rd.daemon.monitor._latest[tenant_id]
    coll = mongo["mysimbdp"]["reports"]

    async def stored() -> dict[str, Any] | None:
        return await coll.find_one({"tenant": tenant_id})
    deadline = time.monotonic() + 10
    doc = None
    while doc is None and time.monotonic() < deadline:
        doc = await stored()
        await asyncio.sleep(0.1)
    assert doc is not None
    assert (doc["messages"], doc["source"], doc["instance"]) == (50, "http", "ext-1")


@pytest.mark.parametrize(("change", "field"), [
    ({"messages": -5}, "messages"),
    ({"avg_ingest_ms": "slow"}, "avg_ingest_ms"),
    ({"window_end": None}, "window_end"),
    ({"mesages": 3}, "mesages"),
])
async def test_invalid_report_is_400_naming_the_field(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, change: dict[str, Any], field: str) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id)
    rd = await start_daemon(settings)
    async with http.post(f"{rd.url}/reports", json=report_body(tenant_id, **change), headers=auth(TOKEN)) as resp:
        assert resp.status == 400
        data = await resp.json()
    assert data["code"] == "invalid_report" and data["field"] == field
    assert field in data["message"]


async def test_report_authentication(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id)
    other = f"{tenant_id}b"
    write_profile(settings, other, token=OTHER_TOKEN)
    rd = await start_daemon(settings)
    url = f"{rd.url}/reports"
    async with http.post(url, json=report_body(tenant_id)) as resp:
        assert resp.status == 401
    async with http.post(url, json=report_body(tenant_id), headers=auth("no-such-token")) as resp:
        assert resp.status == 401
    async with http.post(url, json=report_body(tenant_id), headers=auth(OTHER_TOKEN)) as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "forbidden"
    async with http.post(url, data=b"{not json", headers=auth(TOKEN)) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "invalid_json"
    async with http.post(url, json=[report_body(tenant_id)], headers=auth(TOKEN)) as resp:
        assert resp.status == 400
    assert tenant_id not in rd.daemon.monitor._latest


async def test_schema_is_served(start_daemon: Any, http: aiohttp.ClientSession) -> None:
    rd = await start_daemon()
    async with http.get(f"{rd.url}/schemas/report.json") as resp:
        assert resp.status == 200
        schema = await resp.json()
    assert schema["$id"] == "/schemas/report.json"
    assert "avg_ingest_ms" in schema["required"]


async def test_log_reports_feed_the_monitor_and_breaches_raise_alerts(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        events: list[dict[str, Any]]) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id, monitor="max_avg_ingest_ms = 500\nbreaches_before_alert = 2")
    rd = await start_daemon(settings)
    stream = rd.daemon.events.emitter("stream")
    for _ in range(12):  # a consumer falling behind, reporting every 0.3 s
        stream.emit(StreamReport(**report_body(tenant_id, "c1", avg_ingest_ms=2400.0, p95_ingest_ms=4000.0)))
        await asyncio.sleep(0.3)
        if any(e["event"] == "monitor.alert" and e.get("tenant") == tenant_id for e in events):
            break
    alerts = [e for e in events if e["event"] == "monitor.alert" and e.get("tenant") == tenant_id]
    assert alerts, "no alert after 12 slow reports"
    assert (alerts[0]["rule"], alerts[0]["observed"], alerts[0]["threshold"]) == ("latency", 2400.0, 500.0)
    assert rd.daemon.monitor.counts["reports"] >= 2
    evaluated = [e for e in events if e["event"] == "monitor.evaluated" and e.get("tenant") == tenant_id]
    assert evaluated and evaluated[-1]["avg_ingest_ms"] == 2400.0


async def test_breaches_count_reports_not_evaluations(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        events: list[dict[str, Any]]) -> None:
    """Reports slower than the period: evaluations in between see no new report (``stale``),
    so the alert needs ``breaches_before_alert`` reports, however often the monitor looks."""
    settings = settings_factory()
    write_profile(settings, tenant_id, monitor="max_avg_ingest_ms = 500\nbreaches_before_alert = 3")
    rd = await start_daemon(settings)
    stream = rd.daemon.events.emitter("stream")

    def alerted() -> bool:
        return any(e["event"] == "monitor.alert" and e.get("tenant") == tenant_id for e in events)

    sent = 0
    while not alerted() and sent < 6:  # one report every 3 periods of 0.3 s
        stream.emit(StreamReport(**report_body(tenant_id, "c1", avg_ingest_ms=2400.0, p95_ingest_ms=4000.0)))
        sent += 1
        deadline = time.monotonic() + 0.9
        while time.monotonic() < deadline and not alerted():
            await asyncio.sleep(0.02)
    assert alerted() and sent == 3
    verdicts = [e["verdict"] for e in events if e["event"] == "monitor.evaluated" and e.get("tenant") == tenant_id]
    assert verdicts.count("breach") == 3 and "stale" in verdicts, verdicts


async def test_an_invalid_log_report_is_counted_not_fatal(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        events: list[dict[str, Any]]) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id)
    rd = await start_daemon(settings)
    # a report whose figures are not numbers: the type does not check its values
    rd.daemon.events.emitter("stream").emit(StreamReport.from_fields({"tenant": tenant_id, "messages": "lots"}))
    await await_until(lambda: rd.daemon.monitor.counts["invalid"] == 1, 10, "the invalid report counted", 0.05)
    bad = [e for e in events if e["event"] == "monitor.report.invalid"]
    assert bad and bad[0]["tenant"] == tenant_id
    assert rd.daemon.health()["components"]["monitor"]["up"]
    # the statistics count numbers: this event breaks them, loudly (counted and logged)
    assert rd.daemon.events.failures.pop("stats") == 1
    assert [e["subscriber"] for e in events if e["event"] == "events.subscriber_failed"] == []  # not to subscribers
    assert any('"events.subscriber_failed"' in line for line in settings.log_file.read_text().splitlines())


async def test_tenant_stats_endpoint(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id)
    other = f"{tenant_id}b"
    write_profile(settings, other, token=OTHER_TOKEN)
    rd = await start_daemon(settings)
    batch = rd.daemon.events.emitter("batch")
    for n, seconds in ((100, 1.0), (300, 2.0)):
        batch.emit(BatchFileCommitted(tenant=tenant_id, file=f"f{n}.csv", sha256="0" * 64, bytes=n * 10, records_in=n,
                                      records_written=n, records_rejected=0, duplicates=0, records_skipped=0,
                                      seconds=seconds, records_per_s=n / seconds, mb_per_s=0.001, app="a",
                                      ledger_id="l"))
    batch.emit(BatchFileRejected(tenant=tenant_id, file="x.pdf", sha256=None, code="format", reason="not allowed",
                                 bytes=9, records_in=0, records_written=0, records_rejected=0, duplicates=0,
                                 records_skipped=0, seconds=0.01, records_per_s=0.0, mb_per_s=0.0, ledger_id="l"))
    batch.emit(BatchFileCommitted(tenant=other, file="o.csv", sha256="1" * 64, bytes=1, records_in=7, records_written=7,
                                  records_rejected=0, duplicates=0, records_skipped=0, seconds=1.0, records_per_s=7.0,
                                  mb_per_s=0.0, app="a", ledger_id="l"))
    url = f"{rd.url}/tenants/{tenant_id}/stats"
    async with http.get(url, headers=auth(TOKEN)) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    assert data["tenant"] == tenant_id
    assert data["batch"]["files_committed"] == 2
    assert data["batch"]["records_written"] == 400
    assert data["batch"]["rejected_by_reason"] == {"format": 1}
    assert data["batch"]["throughput_records_per_s"]["mean"] == 125.0
    async with http.get(url, headers=auth(OTHER_TOKEN)) as resp:
        assert resp.status == 403
    async with http.get(url) as resp:
        assert resp.status == 401
    async with http.get(url, params={"since": "yesterday"}, headers=auth(TOKEN)) as resp:
        assert resp.status == 400
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    async with http.get(url, params={"since": future}, headers=auth(TOKEN)) as resp:
        assert (await resp.json())["batch"]["files_committed"] == 0




SLOW_STREAM = """app = "monitor_slow"
min_consumers = 1
max_consumers = 3
prefetch = 20
batch_max_messages = 10
batch_max_wait_ms = 50
report_interval_s = 0.5"""
SLOW_MONITOR = """max_avg_ingest_ms = 300
max_queue_depth = 50
breaches_before_alert = 2
cooldown_s = 1
idle_reports_before_scale_down = 2"""
FLOOD = 600


def of(events: list[dict[str, Any]], name: str, tenant: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name and e.get("tenant") == tenant]


def trailing_breaches(verdicts: list[str]) -> int:
    return len(verdicts) - max((i + 1 for i, v in enumerate(verdicts) if v != "breach"), default=0)


def _cli(*argv: str) -> int:
    """Run ``mysimbdp ARGV`` as a user would; its exit code."""
    from mysimbdp.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


async def test_a_flood_at_a_slow_app_scales_up_then_idleness_scales_down(
        start_daemon: Any, settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Any, events: list[dict[str, Any]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The flood is published with ``mysimbdp publish``; the outcome is read from /metrics and
    from ``mysimbdp stats``, as an operator would."""
    from prometheus_client.parser import text_string_to_metric_families

    settings = settings_factory(extra_apps={"monitor_slow": "tests.plugins.monitor_slow"})
    (settings.tenants_dir / f"{tenant_id}.toml").write_text(
        f'id = "{tenant_id}"\ntoken_sha256 = "{hash_token(TOKEN)}"\n'
        f"[stream]\n{SLOW_STREAM}\n[monitor]\n{SLOW_MONITOR}\n")
    rd = await start_daemon(settings)
    stream = rd.daemon.stream
    await await_until(lambda: stream.consumer_count(tenant_id) == 1, 30, "one consumer", 0.05)

    flood = tmp_path / "flood.jsonl"
    flood.write_text("".join(f'{{"n": {i}, "value": {i / 10}}}\n' for i in range(FLOOD)))
    code = await asyncio.to_thread(_cli, "--config-dir", str(settings.config_dir), "publish", "--tenant", tenant_id,
                                   "--amqp-url", settings.amqp_url, str(flood))
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"sent {FLOOD}, confirmed {FLOOD} ")

    def changes() -> list[dict[str, Any]]:
        return [e for e in of(events, "stream.consumers.changed", tenant_id) if e["reason"].startswith("monitor")]

    ups = await await_until(lambda: [e for e in changes() if e["to"] > e["from"]], 30, "a scale-up", 0.05)
    # the alert comes at the 2nd consecutive breach (breaches_before_alert); the scale-up at
    # once, or at the first evaluation after the cooldown (1 s = 2 report periods)
    verdicts, alert_at = [], None
    for e in events:
        if e.get("tenant") != tenant_id:
            continue
        if e["event"] == "monitor.evaluated" and e["verdict"] != "stale":  # stale: no new report, nothing counted
            verdicts.append(e["verdict"])
        if e["event"] == "monitor.alert" and alert_at is None:
            alert_at = len(verdicts)
        if e is ups[0]:
            break
    assert alert_at is not None
    assert trailing_breaches(verdicts[:alert_at]) == 2, verdicts
    assert 2 <= trailing_breaches(verdicts) <= 2 + 2, verdicts
    alerts = of(events, "monitor.alert", tenant_id)
    assert alerts and {a["rule"] for a in alerts} <= {"latency", "backlog"}
    assert ups[0]["from"] == 1 and ups[0]["to"] == 2
    assert "consecutive reports" in ups[0]["reason"]

    # the backlog drains: every record ends as one document
    readings = mongo[f"tenant_{tenant_id}"]["readings"]
    deadline = time.monotonic() + 60
    while await readings.count_documents({}) < FLOOD and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await readings.count_documents({}) == FLOOD

    downs = await await_until(lambda: [e for e in changes() if e["to"] < e["from"]], 30, "a scale-down", 0.05)
    await await_until(lambda: stream.consumer_count(tenant_id) == 1, 30, "one consumer", 0.05)
    assert "monitor scale-down" in downs[-1]["reason"]
    assert max(e["to"] for e in changes()) <= 3
    assert all(e.get("reason") for e in of(events, "stream.consumers.changed", tenant_id))

    # visible in /metrics ...
    async with http.get(f"{rd.url}/metrics") as resp:
        text = await resp.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("mysimbdp_stream_messages_total", (("tenant", tenant_id),))] == FLOOD
    assert samples[("mysimbdp_stream_consumer_changes_total", (("direction", "up"), ("tenant", tenant_id)))] >= 1
    assert samples[("mysimbdp_monitor_alerts_total", (("rule", alerts[0]["rule"]), ("tenant", tenant_id)))] >= 1
    assert samples[("mysimbdp_stream_consumers", (("tenant", tenant_id),))] == 1
    assert samples[("mysimbdp_stream_queue_depth", (("tenant", tenant_id),))] == 0
    # ... and in the statistics from the log
    stats = subprocess.run([sys.executable, "-c", "from mysimbdp.cli import main; main()", "stats", "--log",
                            str(settings.log_file), "--tenant", tenant_id, "--json"],
                           capture_output=True, text=True, timeout=60, check=True)
    summary = json.loads(stats.stdout)["tenants"][tenant_id]
    assert summary["stream"]["messages"] == FLOOD
    assert summary["scaling"]["up"] >= 1 and summary["scaling"]["down"] >= 1
    assert summary["scaling"]["alerts"] == len(of(events, "monitor.alert", tenant_id))
