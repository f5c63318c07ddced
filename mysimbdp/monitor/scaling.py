"""The in-process monitor: hears the events, keeps the reports, evaluates the rules, scales.

Stream apps report every ``report_interval_s``: in-process consumers as ``stream.report``
events (the monitor subscribes to the daemon's event bus), apps elsewhere with
``POST /reports``. The monitor keeps the latest report of each instance, stores every
report in ``mysimbdp.reports``, and once
per report period (just after the reports are due, see :meth:`Monitor.next_evaluation_in`)
evaluates each tenant with :func:`mysimbdp.monitor.rules.evaluate`: alerts become
``monitor.alert`` events, decisions become calls of the stream manager's ``scale()``, whose
``stream.consumers.changed`` event carries the monitor's reason. It also serves
``GET /metrics`` (see :mod:`mysimbdp.monitor.metrics`), ``GET /schemas/report.json`` and
``GET /tenants/{id}/stats`` (from :class:`mysimbdp.monitor.stats.LiveStats`); the metrics and
the statistics subscribe to the same bus.

It is handed what it uses (:mod:`mysimbdp.monitor.ports`): the tenants, the reports
collection, the bus, the stream manager it scales (None in a daemon without one), the
daemon's health for the gauges, and the stop event (no scaling while the daemon drains).

Among several daemons sharing the store (given this instance's leases and the instance
registry), one monitor per tenant decides: the one holding the lease ``scale:<tenant>``
evaluates the rules on every instance's latest reports (its own in memory, the others' from
``mysimbdp.reports``) and publishes the cluster-wide total; every monitor then runs its
instance's share (:mod:`mysimbdp.monitor.shares`). A draining daemon gives its leases up at
once.

What a tenant can make it hold is bounded: ``POST /reports`` is rate-limited per tenant (a
token bucket; 429 past it), a report's window must be recent, and an instance no longer
counts once it has been silent for a few periods, whatever its report said.
See ``docs/monitoring.md`` and ``docs/reports.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection

from mysimbdp.config import HttpSettings
from mysimbdp.events import Event, EventBus
from mysimbdp.events.catalog import (
    MonitorAlert,
    MonitorEvaluated,
    MonitorEvaluationFailed,
    MonitorFeedDropped,
    MonitorFeedFailed,
    MonitorReportInvalid,
    MonitorReportRateLimited,
    MonitorReportStoreFailed,
    MonitorScaled,
    MonitorScaleFailed,
    MonitorScaleSkipped,
    StreamConsumersChanged,
    StreamReport,
)
from mysimbdp.http.server import HttpError, json_response, require_tenant
from mysimbdp.http.tokens import bearer_token
from mysimbdp.monitor import stats
from mysimbdp.monitor.metrics import CONTENT_TYPE_LATEST, Metrics
from mysimbdp.monitor.ports import (
    HealthSource,
    InstanceDirectory,
    LeaseHolder,
    PlatformStore,
    StreamControl,
    TenantDirectory,
)
from mysimbdp.monitor.reports import (
    Report,
    TokenBuckets,
    report_from_event,
    report_schema,
    validation_problem,
    window_problem,
)
from mysimbdp.monitor.rules import Decision, Limits, RuleState, Snapshot, evaluate
from mysimbdp.monitor.shares import ClusterScaling, ScaleDecision
from mysimbdp.tenants import TenantChange

__all__ = ["Monitor", "REPORTS_COLLECTION", "STALE_AFTER_PERIODS", "MAX_INSTANCES"]

REPORTS_COLLECTION = "reports"
STALE_AFTER_PERIODS = 2.5  # an instance silent for this many periods no longer counts
FEED_MAX = 10_000
STORE_BATCH = 500
REPORT_GRACE = 0.25  # evaluate this share of a period after the next report is due
MAX_INSTANCES = 1000  # instances kept per tenant; past it the longest silent one is forgotten
RATE_LOG_EVERY_S = 60.0  # a tenant over its report rate is logged at most this often


class Monitor:
    """The daemon component ``monitor``."""

    name = "monitor"

    def __init__(self, *, tenants: TenantDirectory, store: PlatformStore, bus: EventBus,
                 http: HttpSettings, stream: StreamControl | None, health: HealthSource,
                 stopping: asyncio.Event, metrics_token: str | None = None,
                 admin_token: str | None = None, leases: LeaseHolder | None = None,
                 instances: InstanceDirectory | None = None) -> None:
        """``store``: where the reports are kept (``mysimbdp.reports``); ``stopping``: set when the daemon drains (then nothing is scaled);
        ``metrics_token``/``admin_token``: who may scrape ``/metrics`` (anyone without the first);
        ``leases`` and ``instances``: this instance's leases and the registry of the instances
        sharing the store; with both (and a stream manager) one instance per tenant decides
        for all (:mod:`mysimbdp.monitor.shares`), without them this daemon decides alone."""
        self.tenants = tenants
        self.store = store
        self.bus = bus
        self.events = bus.emitter("monitor")
        self.http = http
        self.stream = stream
        self._health = health
        self._stopping = stopping
        self._metrics_token = metrics_token
        self._admin_token = admin_token
        self.metrics = Metrics(known=self._known)
        self.live = stats.LiveStats(known=self._known)
        self._buckets = TokenBuckets(http.reports_per_s, http.reports_burst)
        self._rate_logged: dict[str, tuple[float, int]] = {}  # tenant -> (when logged, refused since)
        self._latest: dict[str, dict[str, Report]] = {}
        self._heard: dict[str, dict[str, float]] = {}  # tenant -> instance -> monotonic time
        self._states: dict[str, RuleState] = {}
        self._received: dict[str, float] = {}  # monotonic time of each tenant's last report
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._unstored: deque[dict[str, Any]] = deque(maxlen=FEED_MAX)
        self._feed: asyncio.Queue[StreamReport | StreamConsumersChanged] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stored_wakeup = asyncio.Event()
        self.counts = {"reports": 0, "invalid": 0, "rate_limited": 0, "dropped": 0, "stored": 0,
                       "store_failed": 0}
        self.instance_id = instances.id if instances is not None else None
        self.cluster = (ClusterScaling(store=store, leases=leases, instances=instances, stream=stream, bus=bus,
                                       stopping=stopping)
                        if leases is not None and instances is not None and stream is not None else None)

    def _known(self, tenant: str) -> bool:
        return tenant in self.tenants

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the monitor, the metrics and the statistics to the bus; follow the tenants."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._feed = asyncio.Queue(FEED_MAX)
        self.bus.subscribe(self.metrics.observe, "metrics")
        self.bus.subscribe(self.live.observe, "stats")
        self.bus.subscribe(self._on_event, "monitor")
        self.tenants.add_listener(self._on_tenant)
        if self.cluster is not None and self.stream is not None:  # before any tenant's stream comes up
            self.stream.admit_with(self.cluster.admit)
        self._tasks = [asyncio.create_task(self._read_feed(), name="monitor.feed"),
                       asyncio.create_task(self._store_loop(), name="monitor.store"),
                       asyncio.create_task(self._release_at_drain(), name="monitor.release")]

    async def stop(self) -> None:
        """Leave the bus, stop evaluating, write the reports still held."""
        for subscriber in (self._on_event, self.live.observe, self.metrics.observe):
            self.bus.unsubscribe(subscriber)
        tasks = [*self._tasks, *self._loops.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._loops = [], {}
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._store_pending(), 2.0)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.cluster.release_all(), 2.0)

    async def _release_at_drain(self) -> None:
        """As the daemon starts draining, give up the scale leases: another instance decides at
        once instead of after the lease (a rolling restart hands over without a gap)."""
        await self._stopping.wait()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.cluster.release_all(), 5.0)

    def health(self) -> dict[str, object]:
        """Up while started; counts of reports seen, invalid, dropped and stored."""
        return {"up": bool(self._tasks), "tenants": sorted(self._loops), **self.counts}

    # ---- the feed --------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """A subscriber of the bus (any thread): queue what the rules need, never emit.

        Reports posted over HTTP (``source``) were accepted when they were posted.
        """
        if not (isinstance(event, StreamConsumersChanged) or (isinstance(event, StreamReport) and not event.source)):
            return
        if self._loop is None or self._loop.is_closed():
            return
        if threading.get_ident() == self._thread:
            self._enqueue(event)
        else:
            self._loop.call_soon_threadsafe(self._enqueue, event)

    def _enqueue(self, event: StreamReport | StreamConsumersChanged) -> None:
        assert self._feed is not None
        try:
            self._feed.put_nowait(event)
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            self.metrics.feed_dropped.inc()

    async def _read_feed(self) -> None:
        assert self._feed is not None
        reported_drops = 0
        while True:
            event = await self._feed.get()
            if self.counts["dropped"] != reported_drops:
                self.events.emit(MonitorFeedDropped(events=self.counts["dropped"] - reported_drops,
                                                    reason="the monitor fell behind the events"))
                reported_drops = self.counts["dropped"]
            try:
                self._handle(event)
            except Exception as exc:  # one odd event never stops the monitor
                self.events.emit(MonitorFeedFailed(tenant=event.tenant, error=str(exc)))

    def _handle(self, event: StreamReport | StreamConsumersChanged) -> None:
        tenant = event.tenant
        if tenant not in self.tenants:
            return  # a tenant offboarded since
        if isinstance(event, StreamConsumersChanged):
            self._state(tenant).note_change(time.monotonic())
            return
        try:
            report = report_from_event(event.fields())
        except ValidationError as exc:
            self.counts["invalid"] += 1
            field, problem = validation_problem(exc)
            self.events.emit(MonitorReportInvalid(tenant=tenant, field=field, reason=problem, source="log"))
            return
        stale = window_problem(report)
        if stale is not None:
            self.counts["invalid"] += 1
            self.metrics.reports_refused.labels(tenant, "window").inc()
            self.events.emit(MonitorReportInvalid(tenant=tenant, field="window_end", reason=stale, source="log"))
            return
        self.accept(report, "log")

    def accept(self, report: Report, source: str) -> None:
        """Take one valid report: it becomes its instance's latest and is queued for storing."""
        self.counts["reports"] += 1
        now = time.monotonic()
        latest, heard = self._latest.setdefault(report.tenant, {}), self._heard.setdefault(report.tenant, {})
        if report.instance not in latest and len(latest) >= MAX_INSTANCES:
            silent = min(latest, key=lambda i: heard.get(i, 0.0))
            latest.pop(silent, None)
            heard.pop(silent, None)
        latest[report.instance] = report
        heard[report.instance] = now
        self._received[report.tenant] = now
        doc = report.model_dump()
        # daemon and received_s: the deciding instance reads the others' latest reports by them
        doc.update(source=source, received_at=datetime.now(UTC), received_s=time.time(), daemon=self.instance_id)
        self._unstored.append(doc)
        if len(self._unstored) >= STORE_BATCH:
            self._stored_wakeup.set()

    # ---- storing reports -------------------------------------------------------------------

    async def _store_loop(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the collection works without it
            await self._collection().create_index([("tenant", 1), ("window_end", -1)])
            await self._collection().create_index([("tenant", 1), ("received_s", -1)])
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stored_wakeup.wait(), 1.0)
            self._stored_wakeup.clear()
            await self._store_pending()

    async def _store_pending(self) -> None:
        while self._unstored:
            batch = [self._unstored.popleft() for _ in range(min(STORE_BATCH, len(self._unstored)))]
            try:
                await self._collection().insert_many(batch, ordered=False)
            except asyncio.CancelledError:
                self._unstored.extendleft(reversed(batch))
                raise
            except Exception as exc:
                self.counts["store_failed"] += len(batch)
                self._unstored.extendleft(reversed(batch))  # kept (bounded) until the store is back
                self.events.emit(MonitorReportStoreFailed(reports=len(batch), held=len(self._unstored),
                                                          error=str(exc)[:300]))
                return
            self.counts["stored"] += len(batch)

    def _collection(self) -> AsyncCollection[dict[str, Any]]:
        return self.store.platform_db[REPORTS_COLLECTION]

    # ---- evaluation ------------------------------------------------------------------------

    def _state(self, tenant: str) -> RuleState:
        return self._states.setdefault(tenant, RuleState())

    async def _on_tenant(self, change: TenantChange) -> None:
        task = self._loops.pop(change.tenant, None)
        if task is not None:
            task.cancel()
        if change.new is None:
            self.live.forget(change.tenant)
        if change.new is None or change.new.stream is None:
            self._latest.pop(change.tenant, None)
            self._heard.pop(change.tenant, None)
            self._states.pop(change.tenant, None)
            self._received.pop(change.tenant, None)
            if self.cluster is not None:  # no share of the tenant for this instance any more
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.cluster.leave(change.tenant), 5.0)
            return
        self._loops[change.tenant] = asyncio.create_task(
            self._evaluate_loop(change.tenant), name=f"monitor.evaluate.{change.tenant}")

    async def _evaluate_loop(self, tenant: str) -> None:
        while True:
            profile = self.tenants.get(tenant)
            if profile is None or profile.stream is None:
                return
            await asyncio.sleep(self.next_evaluation_in(tenant, profile.stream.report_interval_s))
            try:
                await self.evaluate_tenant(tenant)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.events.emit(MonitorEvaluationFailed(tenant=tenant, error=str(exc)))

    def next_evaluation_in(self, tenant: str, interval_s: float) -> float:
        """Seconds until the next evaluation: a little after the tenant's next report is due.

        Reports arrive once per period from each instance; evaluating ``REPORT_GRACE`` of a
        period after the last one received plus a period keeps each evaluation just behind a
        fresh report, instead of a timer of its own drifting against them (which would see
        one report twice, or none, now and then). Without recent reports: one period.
        """
        received = self._received.get(tenant)
        if received is None:
            return interval_s
        wait = received + interval_s * (1 + REPORT_GRACE) - time.monotonic()
        return wait if wait >= interval_s / 2 else interval_s

    def snapshot_reports(self, tenant: str, interval_s: float) -> tuple[Report, ...]:
        """The latest report of each instance heard from within the last few periods.

        An instance is stale when its window ended, or when the platform last heard from it,
        more than :data:`STALE_AFTER_PERIODS` periods ago: the second holds whatever clock
        the reporter has.
        """
        horizon = datetime.now(UTC) - timedelta(seconds=interval_s * STALE_AFTER_PERIODS)
        heard_horizon = time.monotonic() - interval_s * STALE_AFTER_PERIODS
        latest, heard = self._latest.get(tenant, {}), self._heard.get(tenant, {})
        for instance in [i for i, r in latest.items()
                         if r.window_end < horizon or heard.get(i, -math.inf) < heard_horizon]:
            del latest[instance]
            heard.pop(instance, None)
        return tuple(latest.values())

    async def evaluate_tenant(self, tenant: str) -> Decision | None:
        """One evaluation of ``tenant``: the rules, then the alerts and the decision carried out.

        Among several instances only the one holding the tenant's scale lease evaluates (its
        decision is returned; the others return None); every instance then runs its share of
        the published decision.
        """
        profile = self.tenants.get(tenant)
        limits = Limits.of(profile) if profile is not None else None
        if profile is None or profile.stream is None or limits is None:
            return None
        cluster = self.cluster
        if cluster is None:
            consumers, depth, running = await self._stream_state(tenant)
            snap = Snapshot(self.snapshot_reports(tenant, profile.stream.report_interval_s), consumers, depth)
            alone = self._decide(tenant, limits, snap)
            await self._carry_out(alone, running, profile.monitor.autoscale, consumers, self._state(tenant))
            return alone
        decision: Decision | None = None
        if await cluster.lead(tenant):
            published = await cluster.decision(tenant)
            if published is not None:
                published = await cluster.reshare(tenant, published, limits.min_consumers, limits.max_consumers)
            snap, running = await self._cluster_snapshot(tenant, profile.stream.report_interval_s, published)
            decision = self._decide(tenant, limits, snap)
            await self._carry_out(decision, running, profile.monitor.autoscale, snap.consumers, self._state(tenant))
        await cluster.follow(tenant)
        return decision

    def _decide(self, tenant: str, limits: Limits, snap: Snapshot) -> Decision:
        """The rules on ``snap``; what they saw and the alerts are logged."""
        state = self._state(tenant)
        decision = evaluate(tenant, limits, snap, state, time.monotonic())
        self.events.emit(MonitorEvaluated(
            tenant=tenant, verdict=decision.verdict, consumers=snap.consumers, instances=len(snap.reports),
            messages=snap.messages, avg_ingest_ms=round(snap.avg_ingest_ms, 3), p95_ingest_ms=snap.p95_ingest_ms,
            queue_depth=snap.backlog, utilization=round(snap.utilization, 3),
            breach_streak=state.breach_streak, idle_streak=state.idle_streak))
        for alert in decision.alerts:
            self.events.emit(MonitorAlert(tenant=tenant, rule=alert.rule, observed=alert.observed,
                                          threshold=alert.threshold, consumers=snap.consumers))
        return decision

    async def _cluster_snapshot(self, tenant: str, interval_s: float,
                                published: ScaleDecision | None) -> tuple[Snapshot, bool]:
        """What the deciding instance sees: every live instance's latest reports, the consumers
        (the published total; before any decision, this instance's now plus the others' as
        their heartbeats said) and the queue depth; and whether the tenant's stream runs (the
        decision's state, else this instance's)."""
        assert self.cluster is not None
        own, depth, running = await self._stream_state(tenant)
        peers = await self.cluster.peers()
        others = self.cluster.reported(peers, tenant)
        reports = [*self.snapshot_reports(tenant, interval_s),
                   *await self.cluster.peer_reports(tenant, interval_s * STALE_AFTER_PERIODS, sorted(peers))]
        consumers = own + sum(others.values())
        if published is not None:
            running = published.state == "running"
            if running:  # what the cluster is meant to run: the heartbeats lag behind changes
                consumers = published.total
        return Snapshot(tuple(reports), consumers, depth), running

    async def _stream_state(self, tenant: str) -> tuple[int, int | None, bool]:
        """Consumers, queue depth and whether the tenant's stream is running (not stopped)."""
        stream = self.stream
        if stream is None:
            return 0, None, False
        consumers = stream.consumer_count(tenant)
        try:
            depth = await asyncio.wait_for(stream.queue_depth(tenant), 5.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            depth = None
        # the manager's health lists each tenant's state without asking the broker again
        # (status() would also call the management API); without it, consumers tell
        tenants = stream.health().get("tenants")
        state = tenants.get(tenant, {}).get("state") if isinstance(tenants, dict) else None
        running = state == "running" if isinstance(state, str) else consumers > 0
        return consumers, depth, running

    async def _carry_out(self, decision: Decision, running: bool, autoscale: bool,
                         consumers: int, state: RuleState) -> None:
        tenant = decision.tenant
        if decision.skipped:
            self.events.emit(MonitorScaleSkipped(tenant=tenant, consumers=consumers, reason=decision.skipped))
        if decision.target is None:
            return
        stream = self.stream
        why_not = (None if stream is not None else "no stream manager in this daemon") \
            or (None if running else "the tenant's stream is stopped") \
            or (None if autoscale else "autoscale is off in the tenant's [monitor] section") \
            or (None if not self._stopping.is_set() else "the daemon is draining")
        if why_not or stream is None:
            self.events.emit(MonitorScaleSkipped(tenant=tenant, consumers=consumers,
                                                 reason=f"{decision.reason}; not applied: {why_not}"))
            return
        try:
            if self.cluster is None:
                before, after = await stream.scale(tenant, decision.target, decision.reason)
            else:  # the cluster-wide total; this instance's share runs at once, the others' at their ticks
                before, after = consumers, decision.target
                await self.cluster.set_total(tenant, decision.target, decision.reason, unless_stopped=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # out of bounds after a profile edit, tenant gone, broker down
            self.events.emit(MonitorScaleFailed(tenant=tenant, consumers=consumers, target=decision.target,
                                                reason=decision.reason, error=str(exc)))
            return
        state.note_change(time.monotonic())
        self.events.emit(MonitorScaled(tenant=tenant, from_=before, to=after, reason=decision.reason,
                                       decided_by=self.instance_id))

    # ---- HTTP ------------------------------------------------------------------------------

    async def post_report(self, request: web.Request) -> web.Response:
        """``POST /reports``: a tenant's app elsewhere reports (202, or 400/401/403/404/409/429)."""
        if bearer_token(request.headers.get("Authorization")) is None:
            raise HttpError(401, "unauthorized", "send the tenant's token as 'Authorization: Bearer <token>'")
        body = await _json_object(request)
        tenant = body.get("tenant")
        if not isinstance(tenant, str):
            raise HttpError(400, "invalid_report", "field 'tenant': the tenant id (a string) is required",
                            field="tenant")
        profile = require_tenant(request, tenant)
        self._take_token(tenant)
        try:
            report = Report.model_validate(body)
        except ValidationError as exc:
            field, problem = validation_problem(exc)
            self.counts["invalid"] += 1
            self.events.emit(MonitorReportInvalid(tenant=tenant, field=field, reason=problem, source="http"))
            raise HttpError(400, "invalid_report", f"field {field!r}: {problem}", field=field) from None
        stale = window_problem(report)
        if stale is not None:
            self.counts["invalid"] += 1
            self.metrics.reports_refused.labels(tenant, "window").inc()
            self.events.emit(MonitorReportInvalid(tenant=tenant, field="window_end", reason=stale, source="http"))
            raise HttpError(400, "invalid_report", f"field 'window_end': {stale}", field="window_end")
        if profile.stream is None:
            raise HttpError(409, "no_stream", f"tenant {tenant!r} has no [stream] section to report on")
        self.accept(report, "http")
        self.events.emit(StreamReport(**report.to_event(), source="http"))
        return json_response({"status": "accepted", "tenant": tenant, "instance": report.instance}, status=202)

    def _take_token(self, tenant: str) -> None:
        """Spend one of the tenant's report tokens, or answer 429 (counted, logged now and then)."""
        wait = self._buckets.take(tenant, time.monotonic())
        if not wait:
            return
        self.counts["rate_limited"] += 1
        self.metrics.reports_refused.labels(tenant, "rate").inc()
        now = time.monotonic()
        logged_at, refused = self._rate_logged.get(tenant, (-math.inf, 0))
        refused += 1
        if now - logged_at >= RATE_LOG_EVERY_S:
            self.events.emit(MonitorReportRateLimited(tenant=tenant, refused=refused,
                                                      reports_per_s=self.http.reports_per_s,
                                                      burst=self.http.reports_burst))
            logged_at, refused = now, 0
        self._rate_logged[tenant] = (logged_at, refused)
        raise HttpError(429, "rate_limited",
                        f"tenant {tenant!r} sends reports faster than {self.http.reports_per_s:g}/s; "
                        "retry after the seconds in Retry-After", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def get_schema(self, request: web.Request) -> web.Response:
        """``GET /schemas/report.json``."""
        return json_response(report_schema())

    async def get_metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics`` (Prometheus text format)."""
        self._require_metrics_token(request)
        await self.metrics.refresh(self._health, self.tenants, self.stream)
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _require_metrics_token(self, request: web.Request) -> None:
        """With ``MYSIMBDP_METRICS_TOKEN`` set, only it (or the admin token) may scrape."""
        if not self._metrics_token:
            return
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise HttpError(401, "unauthorized", "send the metrics token as 'Authorization: Bearer <token>'")
        allowed = [t for t in (self._metrics_token, self._admin_token) if t]
        if not any(hmac.compare_digest(token.encode(), t.encode()) for t in allowed):
            raise HttpError(403, "forbidden", "the metrics token is not valid")

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /tenants/{id}/stats`` (``?since=``), from memory."""
        tenant = request.match_info["id"]
        require_tenant(request, tenant)
        since = request.query.get("since")
        try:
            since_dt = stats.parse_since(since) if since else None
        except ValueError as exc:
            raise HttpError(400, "invalid_since", str(exc)) from None
        return json_response({"tenant": tenant, **self.live.result(tenant, since_dt)})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_report", "the body must be one JSON object (a report)", field="(body)")
    return body
