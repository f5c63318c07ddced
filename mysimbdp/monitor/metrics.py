"""Prometheus metrics (``GET /metrics``), built with ``prometheus-client``.

Counters and histograms are derived from the daemon's events (a subscriber of its event
bus, like the monitor); gauges (consumers, queue depth, store and broker up) are read when Prometheus scrapes.
Every daemon has its own :class:`~prometheus_client.CollectorRegistry`, so several daemons in
one process (the tests) never share series. Label sets are bounded: tenant ids of configured
tenants only (any other id an event carries, e.g. from an upload to a made-up tenant, is
counted under :data:`UNKNOWN_TENANT`), reason codes (at most :data:`MAX_CODES` distinct per
metric, then ``other``), rule names and directions. No file names, no message ids. See
``docs/monitoring.md``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mysimbdp.events import Event
from mysimbdp.events.catalog import (
    BatchFileCommitted,
    BatchFileRejected,
    MonitorAlert,
    StreamBatchCommitted,
    StreamConsumersChanged,
    StreamReport,
    UploadRejected,
)
from mysimbdp.monitor.ports import HealthSource, StreamControl, TenantDirectory
from mysimbdp.tenants import TENANT_ID_RE

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "MAX_CODES", "UNKNOWN_TENANT"]

MAX_CODES = 64
UNKNOWN_TENANT = "_unknown"  # every tenant id that is not a configured tenant's
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FILE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _pos(value: float) -> float:
    """A counter only goes up."""
    return value if value > 0 else 0.0


class Metrics:
    """The daemon's metrics registry, fed by :meth:`observe` and refreshed by :meth:`refresh`."""

    def __init__(self, known: Callable[[str], bool] | None = None) -> None:
        """``known(tenant)`` says whether a tenant is configured; without it, any valid id is."""
        self._known = known
        self.registry = CollectorRegistry(auto_describe=True)
        self._codes: dict[str, set[str]] = {}
        r, t = self.registry, ["tenant"]
        self.files_committed = Counter("mysimbdp_files_committed", "Files committed", t, registry=r)
        self.files_rejected = Counter("mysimbdp_files_rejected", "Files rejected, by reason code",
                                      [*t, "reason"], registry=r)
        self.uploads_rejected = Counter("mysimbdp_uploads_rejected", "Uploads refused, by reason code",
                                        [*t, "reason"], registry=r)
        src = [*t, "source"]
        self.records_written = Counter("mysimbdp_records_written", "Documents written (source: batch|stream)", src, registry=r)
        self.records_rejected = Counter("mysimbdp_records_rejected", "Records sent to _rejects", src, registry=r)
        self.records_duplicate = Counter("mysimbdp_records_duplicate", "Records already present (redelivery, retry)", src, registry=r)
        self.bytes = Counter("mysimbdp_ingested_bytes", "Bytes ingested (file bytes, message bodies)", src, registry=r)
        self.messages = Counter("mysimbdp_stream_messages", "Stream messages acknowledged", t, registry=r)
        self.file_seconds = Histogram("mysimbdp_batch_file_seconds", "Time to load a committed file",
                                      t, buckets=FILE_BUCKETS, registry=r)
        self.latency = Histogram("mysimbdp_stream_ingest_latency_seconds",
                                 "Message timestamp to committed write (oldest message of each flush)",
                                 t, buckets=LATENCY_BUCKETS, registry=r)
        self.reports = Counter("mysimbdp_stream_reports", "Stream-app reports received", t, registry=r)
        self.alerts = Counter("mysimbdp_monitor_alerts", "Monitor alerts, by rule", [*t, "rule"], registry=r)
        self.scalings = Counter("mysimbdp_stream_consumer_changes", "Consumer count changes (direction: up|down)",
                                [*t, "direction"], registry=r)
        self.consumers = Gauge("mysimbdp_stream_consumers", "Stream consumers running", t, registry=r)
        self.queue_depth = Gauge("mysimbdp_stream_queue_depth", "Messages waiting in the tenant's queue", t, registry=r)
        self.tenant_configured = Gauge("mysimbdp_tenant_configured", "1 for each tenant configured", t, registry=r)
        self.consumers_min = Gauge("mysimbdp_stream_consumers_min", "The tenant's min_consumers", t, registry=r)
        self.consumers_max = Gauge("mysimbdp_stream_consumers_max", "The tenant's max_consumers", t, registry=r)
        self.tenants = Gauge("mysimbdp_tenants", "Tenants configured", registry=r)
        self.store_up = Gauge("mysimbdp_store_up", "1 when MongoDB answers", registry=r)
        self.broker_up = Gauge("mysimbdp_broker_up", "1 when RabbitMQ is connected", registry=r)
        self.component_up = Gauge("mysimbdp_component_up", "1 when the daemon component is up",
                                  ["component"], registry=r)
        self.feed_dropped = Counter("mysimbdp_monitor_feed_dropped", "Log events the monitor could not queue", registry=r)
        self.reports_refused = Counter("mysimbdp_stream_reports_refused", "Reports refused (reason: rate, window)",
                                       [*t, "reason"], registry=r)
        self.http_closed = Gauge("mysimbdp_http_connections_closed",
                                 "HTTP connections the daemon closed since it started (reason: header_timeout, "
                                 "body_timeout, evicted, refused)", ["reason"], registry=r)
        self.http_open = Gauge("mysimbdp_http_connections", "HTTP connections open", registry=r)

    # ---- the events ------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Count one event (a subscriber of the event bus). Cheap, never logs."""
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def tenant_label(self, tenant: object) -> str:
        """``tenant`` when it is a configured tenant's id, else :data:`UNKNOWN_TENANT`."""
        if not isinstance(tenant, str) or not TENANT_ID_RE.match(tenant):
            return UNKNOWN_TENANT
        return tenant if self._known is None or self._known(tenant) else UNKNOWN_TENANT

    def _code(self, metric: str, code: str | None) -> str:
        if not isinstance(code, str) or not _CODE_RE.match(code):
            return "other"
        seen = self._codes.setdefault(metric, set())
        if code not in seen:
            if len(seen) >= MAX_CODES:
                return "other"
            seen.add(code)
        return code

    def _file_committed(self, e: BatchFileCommitted) -> None:
        tenant = self.tenant_label(e.tenant)
        self.files_committed.labels(tenant).inc()
        self._file_counts(tenant, e.records_written, e.records_rejected, e.duplicates)
        self.bytes.labels(tenant, "batch").inc(_pos(e.bytes))
        self.file_seconds.labels(tenant).observe(_pos(e.seconds))

    def _file_rejected(self, e: BatchFileRejected) -> None:
        tenant = self.tenant_label(e.tenant)
        self.files_rejected.labels(tenant, self._code("files_rejected", e.code)).inc()
        self._file_counts(tenant, e.records_written, e.records_rejected, e.duplicates)

    def _file_counts(self, tenant: str, written: int, rejected: int, duplicates: int) -> None:
        self.records_written.labels(tenant, "batch").inc(_pos(written))
        self.records_rejected.labels(tenant, "batch").inc(_pos(rejected))
        self.records_duplicate.labels(tenant, "batch").inc(_pos(duplicates))

    def _upload_rejected(self, e: UploadRejected) -> None:
        self.uploads_rejected.labels(self.tenant_label(e.tenant), self._code("uploads_rejected", e.code)).inc()

    def _stream_committed(self, e: StreamBatchCommitted) -> None:
        tenant = self.tenant_label(e.tenant)
        self.messages.labels(tenant).inc(_pos(e.messages))
        self.records_written.labels(tenant, "stream").inc(_pos(e.documents))
        self.records_rejected.labels(tenant, "stream").inc(_pos(e.rejected))
        self.records_duplicate.labels(tenant, "stream").inc(_pos(e.duplicates))
        self.bytes.labels(tenant, "stream").inc(_pos(e.bytes))
        if e.oldest_latency_ms is not None:
            self.latency.labels(tenant).observe(_pos(e.oldest_latency_ms) / 1000.0)

    def _report(self, e: StreamReport) -> None:
        self.reports.labels(self.tenant_label(e.tenant)).inc()

    def _alert(self, e: MonitorAlert) -> None:
        self.alerts.labels(self.tenant_label(e.tenant), e.rule if e.rule in ("latency", "backlog") else "other").inc()

    def _consumers_changed(self, e: StreamConsumersChanged) -> None:
        if e.to != e.from_:
            self.scalings.labels(self.tenant_label(e.tenant), "up" if e.to > e.from_ else "down").inc()

    # ---- scrape time -----------------------------------------------------------------------

    async def refresh(self, health_of: HealthSource, tenants: TenantDirectory, stream: StreamControl | None,
                      timeout: float = 3.0) -> None:
        """Set the gauges from the platform's state now (queue depths are asked of the broker)."""
        health = health_of()
        components = health.get("components", {})
        self.component_up.clear()
        for name, state in components.items():
            self.component_up.labels(name).set(1 if state.get("up") else 0)
        self.store_up.set(1 if components.get("store", {}).get("up") else 0)
        http = components.get("http", {})
        for reason, count in (http.get("closed") or {}).items():
            self.http_closed.labels(reason).set(count)
        self.http_open.set(http.get("connections") or 0)
        self.broker_up.set(1 if components.get("broker", {}).get("up") else 0)
        profiles = tenants.all()
        streaming = [p.id for p in profiles if p.stream is not None]
        self.tenants.set(len(profiles))
        self.consumers.clear()
        self.queue_depth.clear()
        self.consumers_min.clear()
        self.consumers_max.clear()
        self.tenant_configured.clear()
        for p in profiles:
            self.tenant_configured.labels(p.id).set(1)
            if p.stream is not None:
                self.consumers_min.labels(p.id).set(p.stream.min_consumers)
                self.consumers_max.labels(p.id).set(p.stream.max_consumers)
        if stream is None:
            return
        depths = await asyncio.gather(*(_depth(stream, t, timeout) for t in streaming))
        for tenant, depth in zip(streaming, depths, strict=True):
            try:
                self.consumers.labels(tenant).set(stream.consumer_count(tenant))
            except Exception:  # a tenant being removed right now
                continue
            if depth is not None:
                self.queue_depth.labels(tenant).set(depth)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


async def _depth(stream: StreamControl, tenant: str, timeout: float) -> int | None:
    try:
        value = await asyncio.wait_for(stream.queue_depth(tenant), timeout)
    except asyncio.CancelledError:
        raise
    except Exception:  # the broker's management API is down: the gauge is left out
        return None
    return int(value) if isinstance(value, int | float) else None


_HANDLERS: dict[type[Event], Callable[[Metrics, Any], None]] = {
    BatchFileCommitted: Metrics._file_committed,
    BatchFileRejected: Metrics._file_rejected,
    UploadRejected: Metrics._upload_rejected,
    StreamBatchCommitted: Metrics._stream_committed,
    StreamReport: Metrics._report,
    MonitorAlert: Metrics._alert,
    StreamConsumersChanged: Metrics._consumers_changed,
}
