"""Prometheus metrics: derived from the typed events, bounded labels, served at /metrics."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mysimbdp.events.catalog import (
    BatchFileCommitted,
    BatchFileRejected,
    DaemonStopped,
    MonitorAlert,
    StreamBatchCommitted,
    StreamConsumersChanged,
    UploadRejected,
)
from mysimbdp.monitor.metrics import MAX_CODES, UNKNOWN_TENANT, Metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def committed(tenant: str, **fields: Any) -> BatchFileCommitted:
    values: dict[str, Any] = {"tenant": tenant, "file": "a.csv", "bytes": 1000, "records_in": 10, "records_written": 9,
                              "records_rejected": 1, "duplicates": 0, "seconds": 0.5}
    values.update(fields)
    return BatchFileCommitted.from_log_line(values)  # type: ignore[return-value]


def rejected(tenant: str, code: str) -> BatchFileRejected:
    return BatchFileRejected.from_log_line({"tenant": tenant, "code": code})  # type: ignore[return-value]


def test_counters_follow_the_events() -> None:
    m = Metrics()
    m.observe(committed("acme"))
    m.observe(committed("acme", records_written=1, bytes=24))
    m.observe(rejected("acme", "too_big"))
    m.observe(UploadRejected(tenant="acme", code="quota", status=507, reason="r", name="a.csv"))
    m.observe(StreamBatchCommitted(tenant="acme", consumer="acme-c1", batches=1, messages=40, documents=38,
                                   rejected=2, duplicates=1, bytes=800, seconds=0.1, oldest_latency_ms=120.0))
    m.observe(StreamBatchCommitted(tenant="acme", consumer="acme-c1", batches=1, messages=1, documents=0,
                                   rejected=0, duplicates=0, bytes=0, seconds=0.0, oldest_latency_ms=None))
    m.observe(StreamConsumersChanged(tenant="acme", from_=1, to=3, reason="x"))
    m.observe(MonitorAlert(tenant="acme", rule="backlog", observed=9, threshold=5, consumers=1))
    m.observe(DaemonStopped())  # not a metric
    s = samples(m.exposition().decode())
    t = (("tenant", "acme"),)
    assert s[("mysimbdp_files_committed_total", t)] == 2
    assert s[("mysimbdp_files_rejected_total", (("reason", "too_big"), *t))] == 1
    assert s[("mysimbdp_uploads_rejected_total", (("reason", "quota"), *t))] == 1
    assert s[("mysimbdp_records_written_total", (("source", "batch"), *t))] == 10
    assert s[("mysimbdp_records_written_total", (("source", "stream"), *t))] == 38
    assert s[("mysimbdp_records_rejected_total", (("source", "stream"), *t))] == 2
    assert s[("mysimbdp_ingested_bytes_total", (("source", "batch"), *t))] == 1024
    assert s[("mysimbdp_stream_messages_total", t)] == 41
    assert s[("mysimbdp_stream_ingest_latency_seconds_count", t)] == 1
    assert s[("mysimbdp_stream_ingest_latency_seconds_sum", t)] == 0.12
    assert s[("mysimbdp_batch_file_seconds_count", t)] == 2
    assert s[("mysimbdp_stream_consumer_changes_total", (("direction", "up"), *t))] == 1
    assert s[("mysimbdp_monitor_alerts_total", (("rule", "backlog"), *t))] == 1


def test_labels_stay_bounded() -> None:
    m = Metrics()
    for i in range(MAX_CODES + 30):
        m.observe(rejected("acme", f"code_{i}"))
    m.observe(rejected("acme", "../../etc/passwd"))
    m.observe(committed("Not/A Tenant"))
    s = samples(m.exposition().decode())
    reasons = {dict(k[1])["reason"] for k in s if k[0] == "mysimbdp_files_rejected_total"}
    assert len(reasons) == MAX_CODES + 1 and "other" in reasons
    assert s[("mysimbdp_files_rejected_total", (("reason", "other"), ("tenant", "acme")))] == 31
    assert s[("mysimbdp_files_committed_total", (("tenant", UNKNOWN_TENANT),))] == 1


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.observe(committed("acme"))
    assert ("mysimbdp_files_committed_total", (("tenant", "acme"),)) not in samples(b.exposition().decode())


async def test_metrics_endpoint_parses_and_reports_platform_state(
        start_daemon: Any, http: aiohttp.ClientSession) -> None:
    rd = await start_daemon()
    rd.daemon.monitor.metrics.observe(committed("acme"))
    async with http.get(f"{rd.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    s = samples(text)
    assert s[("mysimbdp_store_up", ())] == 1
    assert ("mysimbdp_broker_up", ()) in s
    assert s[("mysimbdp_component_up", (("component", "monitor"),))] == 1
    # no profile declares "acme" in this daemon: its events count, under no label of its own
    assert s[("mysimbdp_files_committed_total", (("tenant", UNKNOWN_TENANT),))] == 1
    assert ("mysimbdp_files_committed_total", (("tenant", "acme"),)) not in s
