"""The stream manager (the streamingestmanager): each tenant's consumers, started, stopped, scaled.

A daemon component named ``stream``. It follows the tenant registry (a tenant with a
``[stream]`` section gets its topology declared and, with ``autostart = true``, its
``min_consumers`` consumers; offboarding stops the consumers and leaves the queues) and the
broker connection (topology and consumers come up when the broker does). Operators and
the monitor drive it through :meth:`StreamManager.start_tenant`,
:meth:`~StreamManager.stop_tenant` and :meth:`~StreamManager.scale`; every change of a
tenant's consumer count is the event ``stream.consumers.changed``.

It is handed what it uses: the ``[stream]`` settings and the timeouts, the tenants, the
broker connection, the store's tenant databases, the app runners and the event bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from pymongo.asynchronous.database import AsyncDatabase

from mysimbdp.apps.contract import Target
from mysimbdp.apps.runner import AppError, Mode, Runners
from mysimbdp.apps.runner.calls import collection_problem
from mysimbdp.config import StreamSettings
from mysimbdp.errors import BrokerUnavailable, MysimbdpError, PluginError
from mysimbdp.events import EventBus
from mysimbdp.events.catalog import (
    StreamConsumersChanged,
    StreamDepthFailed,
    StreamDrained,
    StreamIndexFailed,
    StreamProvisionDone,
    StreamProvisionFailed,
    StreamTenantFailed,
    StreamTenantRemoved,
)
from mysimbdp.store.schemas import SchemaRecorder
from mysimbdp.stream.apprun import AppRoute
from mysimbdp.stream.broker_admin import BrokerAdmin
from mysimbdp.stream.consumer import Consumer, Routes
from mysimbdp.stream.provision import provision_user, vhost_of
from mysimbdp.stream.topology import (
    dead_name,
    declare_exchange,
    declare_tenant,
    passive_depth,
    queue_name,
)
from mysimbdp.tenants import StreamProfile, TenantChange, TenantDirectory

__all__ = ["StreamManager", "StreamError", "UnknownStream", "OutOfBounds", "NotRunning", "BrokerLink",
           "TenantDatabases"]


#: ``(tenant, wanted) -> how many consumers this instance may start now``.
Admission = Callable[[str, int], Awaitable[int]]


class BrokerLink(Protocol):
    """The broker connection as the manager uses it (:class:`mysimbdp.stream.broker.Broker`)."""

    reason: str | None

    def on_connected(self, callback: Callable[[AbstractRobustConnection], Coroutine[Any, Any, None]]) -> None:
        """Call ``callback`` with the connection once it is up (again)."""
        ...


class TenantDatabases(Protocol):
    """Where each tenant's documents go (:class:`mysimbdp.store.mongo.Store`)."""

    def tenant_db(self, tenant: str) -> AsyncDatabase[dict[str, Any]]:
        """The tenant's own database."""
        ...


class StreamError(ValueError):
    """A stream operation that cannot be done as asked; ``code`` is machine-readable."""

    code = "stream_error"


class UnknownStream(StreamError):
    """The tenant does not exist or has no ``[stream]`` section."""

    code = "no_stream"


class OutOfBounds(StreamError):
    """A consumer count outside the profile's ``[min_consumers, max_consumers]``."""

    code = "out_of_bounds"


class NotRunning(StreamError):
    """The tenant's stream is stopped (or its app cannot be loaded)."""

    code = "not_running"


@dataclass
class _Tenant:
    """One tenant's stream state."""

    id: str
    profile: StreamProfile
    routes: Routes | None = None
    runner: Mode = "process"
    error: str | None = None
    running: bool = False
    desired: int = 0
    consumers: dict[int, Consumer] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class StreamManager:
    """Consumers of every tenant's queue, started, stopped and scaled while the daemon runs."""

    name = "stream"

    def __init__(self, *, settings: StreamSettings, amqp_url: str, drain_timeout_s: float, retry_max_s: float,
                 tenants: TenantDirectory, broker: BrokerLink, store: TenantDatabases, runners: Runners,
                 bus: EventBus, schemas: SchemaRecorder | None = None) -> None:
        self.stream_settings = settings
        self.schemas = schemas
        self.amqp_url = amqp_url
        self.drain_timeout_s = drain_timeout_s
        self.retry_max_s = retry_max_s
        self.tenants = tenants
        self.broker = broker
        self.store = store
        self.runners = runners
        self.events = bus.emitter("stream")
        self._tenants: dict[str, _Tenant] = {}
        self._connection: AbstractRobustConnection | None = None
        self._query: AbstractChannel | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._draining = False
        self._admission: Admission | None = None
        self._last_ingest: dict[str, float] = {}  # kept when the consumers that wrote stop

    # ----------------------------------------------------------------- component

    async def start(self) -> None:
        """Follow the tenant registry and the broker connection."""
        self.tenants.add_listener(self._on_tenant_change)
        self.broker.on_connected(self._on_connected)

    async def drain(self, timeout: float) -> None:
        """Cancel every consumer tag, flush and acknowledge what is buffered, within ``timeout``."""
        self._draining = True
        t0 = time.monotonic()
        results = await asyncio.gather(*(self._stop_all(t, timeout, "daemon draining")
                                         for t in list(self._tenants.values())), return_exceptions=True)
        left = sum(r for r in results if isinstance(r, int))
        self.events.emit(StreamDrained(seconds=round(time.monotonic() - t0, 3), unacked=left))

    async def stop(self) -> None:
        """Stop what is still running (right away) and close the query channel."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(self._stop_all(t, 0.5, "daemon stopping") for t in list(self._tenants.values())),
                             return_exceptions=True)
        if self._query is not None and not self._query.is_closed:
            with contextlib.suppress(Exception):
                await self._query.close()
        self._query = None

    def health(self) -> dict[str, object]:
        """Per-tenant state and consumers; a tenant whose app cannot be loaded is listed in
        ``errors`` without making the platform unhealthy (the other tenants are served)."""
        tenants = {t.id: {"state": self._state(t), "consumers": len(t.consumers)} for t in self._tenants.values()}
        errors = {t.id: t.error for t in self._tenants.values() if t.error}
        return {"up": True, "tenants": tenants, **({"errors": errors} if errors else {})}

    # ----------------------------------------------------------------- the API (operators, monitor)

    def admit_with(self, admission: Admission) -> None:
        """Ask ``admission`` how many consumers a tenant may start when its stream comes up here
        (onboarding, a profile change, the broker back): among several instances the cluster's
        scaling decision bounds them (:meth:`mysimbdp.monitor.shares.ClusterScaling.admit`)."""
        self._admission = admission

    def last_ingest(self, tenant: str) -> float | None:
        """When this instance's consumers of ``tenant`` last wrote documents (epoch seconds)."""
        t = self._tenants.get(tenant)
        seen = [c.last_ingest for c in t.consumers.values() if c.last_ingest is not None] if t else []
        if seen:
            self._last_ingest[tenant] = max(seen + [self._last_ingest.get(tenant, 0.0)])
        return self._last_ingest.get(tenant)

    def consumer_count(self, tenant: str) -> int:
        """Consumers running for ``tenant`` now (0 if none or unknown)."""
        t = self._tenants.get(tenant)
        return len(t.consumers) if t else 0

    async def queue_depth(self, tenant: str) -> int | None:
        """Messages ready in the tenant's queue; None if unknown (no stream, broker down)."""
        if tenant not in self._tenants or self._connection is None or self._connection.is_closed:
            return None
        try:
            if self._query is None or self._query.is_closed:
                self._query = await self._connection.channel(publisher_confirms=False)
            return await passive_depth(self._query, tenant)
        except Exception as exc:  # e.g. the queue is missing: that closes the channel
            self.events.emit(StreamDepthFailed(tenant=tenant, error=str(exc)))
            self._query = None
            return None

    async def scale(self, tenant: str, count: int, reason: str, *, decided_by: str | None = None,
                    share: bool = False) -> tuple[int, int]:
        """Run ``count`` consumers for ``tenant``; returns ``(from, to)``.

        Raises :class:`StreamError` (a ``ValueError``) when the tenant has no stream, the
        stream is stopped, or ``count`` is outside ``[min_consumers, max_consumers]``. With
        ``share``, ``count`` is this instance's share of a cluster-wide total, which may be
        anything from 0 to ``max_consumers`` (the bounds hold for the total, not the share).
        ``decided_by``: the instance whose decision this carries out (in the event).
        """
        t = self.check_count(tenant, count, share=share)
        return await self._set_count(t, count, reason, decided_by)

    def check_count(self, tenant: str, count: int, *, share: bool = False) -> _Tenant:
        """The tenant's state if it may run ``count`` consumers now, else the :class:`StreamError`
        that says why (no stream, stopped, out of bounds); changes nothing."""
        t = self._require(tenant)
        p = t.profile
        low = 0 if share else p.min_consumers
        if isinstance(count, bool) or not isinstance(count, int) or not low <= count <= p.max_consumers:
            raise OutOfBounds(
                f"tenant {tenant!r}: {count!r} consumers is outside the profile's bounds "
                f"[{low}, {p.max_consumers}] (min_consumers, max_consumers in its [stream] section)")
        if not t.running:
            raise NotRunning(f"the stream of tenant {tenant!r} is stopped; start it first "
                             f"(POST /tenants/{tenant}/stream/start or `mysimbdp stream start {tenant}`)")
        return t

    def bounds(self, tenant: str) -> tuple[int, int]:
        """The tenant's ``(min_consumers, max_consumers)``; :class:`UnknownStream` without a stream."""
        p = self._require(tenant).profile
        return p.min_consumers, p.max_consumers

    def is_running(self, tenant: str) -> bool:
        """Whether the tenant's stream runs here (started, even with 0 consumers)."""
        t = self._tenants.get(tenant)
        return t is not None and t.running

    async def start_tenant(self, tenant: str, reason: str, *, count: int | None = None,
                           decided_by: str | None = None) -> tuple[int, int]:
        """Start the tenant's stream with ``count`` consumers (default ``max(min_consumers, 1)``,
        at most ``max_consumers``; 0 is allowed: this instance's share may be none); returns
        ``(from, to)``. Starting a running stream changes nothing.
        """
        t = self._require(tenant)
        if t.running:
            return len(t.consumers), len(t.consumers)
        if t.routes is None:
            raise NotRunning(f"the stream app of tenant {tenant!r} cannot be loaded: {t.error}")
        wanted = _start_count(t.profile) if count is None else max(0, min(count, t.profile.max_consumers))
        t.running = True
        try:
            return await self._set_count(t, wanted, reason, decided_by)
        except BaseException:
            t.running = bool(t.consumers)
            raise

    async def stop_tenant(self, tenant: str, reason: str, *, decided_by: str | None = None) -> tuple[int, int]:
        """Stop the tenant's consumers (buffered messages are flushed first); returns ``(from, 0)``."""
        t = self._require(tenant)
        before = len(t.consumers)
        await self._stop_all(t, self.drain_timeout_s, reason, decided_by)
        return before, 0

    async def status(self, tenant: str) -> dict[str, Any]:
        """State, consumers, bounds, queue depth and message rates of the tenant's stream."""
        t = self._require(tenant)
        consumers = list(t.consumers.values())
        status: dict[str, Any] = {
            "tenant": tenant, "app": t.profile.app, "state": self._state(t),
            "consumers": len(consumers), "min_consumers": t.profile.min_consumers,
            "max_consumers": t.profile.max_consumers, "prefetch": t.profile.prefetch,
            "queue": queue_name(tenant), "dead_letter_queue": dead_name(tenant),
            "queue_depth": await self.queue_depth(tenant),
            "buffered": sum(c.buffered for c in consumers),
            "instances": sorted(c.instance for c in consumers),
            "rates": {"delivered_per_s": round(sum(c.delivered.rate() for c in consumers), 2),
                      "committed_per_s": round(sum(c.committed.rate() for c in consumers), 2)},
        }
        status["dead_letter_depth"], status["rates"]["published_per_s"] = await self._broker_stats(tenant)
        if t.error:
            status["error"] = t.error
        return status

    # ----------------------------------------------------------------- internals

    def _require(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            if tenant in self.tenants:
                raise UnknownStream(f"tenant {tenant!r} has no [stream] section in its profile")
            raise UnknownStream(f"no tenant {tenant!r} is configured")
        return t

    @staticmethod
    def _state(t: _Tenant) -> str:
        return "running" if t.running else ("failed" if t.error else "stopped")

    async def _set_count(self, t: _Tenant, count: int, reason: str,
                         decided_by: str | None = None) -> tuple[int, int]:
        async with t.lock:
            before = len(t.consumers)
            t.desired = count
            try:
                if count > before:
                    connection = self._live_connection()
                    for slot in range(1, t.profile.max_consumers + 1):
                        if len(t.consumers) >= count:
                            break
                        if slot not in t.consumers:
                            await self._start_consumer(t, slot, connection)
                elif count < before:
                    extra = sorted(t.consumers)[count:]
                    stopping = [t.consumers.pop(slot) for slot in extra]
                    await asyncio.gather(*(c.stop(self.drain_timeout_s) for c in stopping))
            finally:  # a failure half-way still reports the consumers that did change
                after = len(t.consumers)
                if after != before:
                    self.events.emit(StreamConsumersChanged(tenant=t.id, from_=before, to=after, reason=reason,
                                                            decided_by=decided_by))
        return before, after

    async def _start_consumer(self, t: _Tenant, slot: int, connection: AbstractRobustConnection) -> None:
        assert t.routes is not None
        consumer = Consumer(tenant=t.id, instance=f"{t.id}-c{slot}", profile=t.profile, routes=t.routes,
                            connection=connection, database=self.store.tenant_db(t.id),
                            depth=lambda: self.queue_depth(t.id), runners=self.runners,
                            runner=t.runner, retry_max_s=self.retry_max_s, events=self.events,
                            schemas=self.schemas)
        await consumer.start()
        t.consumers[slot] = consumer

    async def _stop_all(self, t: _Tenant, timeout: float, reason: str, decided_by: str | None = None) -> int:
        async with t.lock:
            before = len(t.consumers)
            stopping = list(t.consumers.values())
            t.consumers.clear()
            t.running = False
            left = await asyncio.gather(*(c.stop(timeout) for c in stopping))
        if before:
            self.events.emit(StreamConsumersChanged(tenant=t.id, from_=before, to=0, reason=reason,
                                                    decided_by=decided_by))
        return sum(left)

    def _live_connection(self) -> AbstractRobustConnection:
        if self._connection is None or self._connection.is_closed:
            raise BrokerUnavailable(f"RabbitMQ is not reachable ({self.broker.reason}); "
                                    "consumers start once it is back")
        return self._connection

    async def _build_routes(self, tenant: str, profile: StreamProfile, runner: Mode) -> Routes:
        """Each stream app's target, asked of the app where it runs (never on the event loop),
        within the tenant's ``app_timeout_s``; raises :class:`MysimbdpError` naming what failed."""
        names = sorted({profile.app, *profile.apps.values()})
        found = await asyncio.gather(*(self._target(tenant, name, runner, profile.app_timeout_s) for name in names))
        targets = dict(zip(names, found, strict=True))

        def route(name: str) -> AppRoute:
            return AppRoute(app=name, collection=targets[name].collection, indexes=tuple(targets[name].indexes))
        return Routes(default=route(profile.app), by_type={k: route(v) for k, v in profile.apps.items()})

    async def _target(self, tenant: str, name: str, runner: Mode, timeout: float) -> Target:
        runners = self.runners
        try:
            session = await asyncio.to_thread(runners.lease, tenant, name, runner, "stream")
        except AppError as exc:
            raise PluginError(f"app {name!r} cannot start: {exc}") from None
        try:
            target = await asyncio.wait_for(asyncio.to_thread(session.target, "stream"), timeout)
        except TimeoutError:
            session.kill()
            raise PluginError(f"app {name!r}: mysimbdp_stream_target did not answer within {timeout:g} s") from None
        except AppError as exc:
            raise PluginError(f"app {name!r}: {exc}") from None
        finally:
            self._spawn(asyncio.to_thread(runners.release, session), f"stream.release.{tenant}")
        problem = collection_problem(target.collection)
        if problem is not None:
            raise PluginError(f"app {name!r} declares an invalid target collection {target.collection!r}: {problem}")
        return target

    async def _on_tenant_change(self, change: TenantChange) -> None:
        """Onboard, reconfigure or offboard a tenant's stream.

        A changed ``[stream]`` section restarts the tenant's consumers with the new settings:
        a running stream keeps running (with its consumer count, within the new bounds), a
        stopped one stays stopped; ``autostart`` applies to onboarding only.
        """
        previous = self._tenants.get(change.tenant)
        stream = change.new.stream if change.new is not None else None
        # read before the stop below, which marks the stream stopped
        was_running = previous.running if previous is not None else stream.autostart if stream else False
        if previous is not None and (stream is None or stream != previous.profile):
            await self._stop_all(previous, self.drain_timeout_s,
                                 "tenant offboarded" if stream is None else "profile changed")
            self._tenants.pop(change.tenant, None)
            if stream is None:
                self.events.emit(StreamTenantRemoved(tenant=change.tenant, queue=queue_name(change.tenant)))
        if stream is None or (previous is not None and stream == previous.profile):
            return
        t = _Tenant(change.tenant, stream, runner=change.new.runner if change.new is not None else "process")
        t.running = was_running
        t.desired = max(stream.min_consumers, min(previous.desired if previous else _start_count(stream),
                                                   stream.max_consumers))
        try:
            t.routes = await self._build_routes(change.tenant, stream, change.new.runner if change.new else "process")
        except MysimbdpError as exc:
            t.error, t.running = str(exc), False
            self.events.emit(StreamTenantFailed(tenant=change.tenant, app=stream.app, error=str(exc)))
        self._tenants[change.tenant] = t
        if self.stream_settings.provision_users:
            self._spawn(self._provision(change.tenant), f"stream.provision.{change.tenant}")
        if self._connection is not None and not self._connection.is_closed:
            await self._activate(t, "tenant onboarded" if previous is None else "profile changed")

    async def _on_connected(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        await declare_exchange(connection, self.stream_settings.exchange)
        for t in list(self._tenants.values()):
            await self._activate(t)

    async def _activate(self, t: _Tenant, reason: str = "tenant onboarded") -> None:
        """Declare the tenant's topology and start its consumers if it should run."""
        if self._draining or self._connection is None:
            return
        try:
            await declare_tenant(self._connection, self.stream_settings.exchange, t.id, t.profile, self.events)
            await self._ensure_indexes(t)
            if t.running and t.routes is not None and t.desired > len(t.consumers):
                count = t.desired if self._admission is None else await self._admission(t.id, t.desired)
                if count > len(t.consumers):
                    await self._set_count(t, count, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.events.emit(StreamTenantFailed(tenant=t.id, app=t.profile.app, error=str(exc)), exc_info=True)

    async def _ensure_indexes(self, t: _Tenant) -> None:
        """Create the indexes the tenant's stream apps ask for (best effort: the store may be down)."""
        if t.routes is None:
            return
        # the one target check and index creation of batch and stream
        from mysimbdp.store.writes import ensure_target

        db = self.store.tenant_db(t.id)
        for route in (t.routes.default, *t.routes.by_type.values()):
            try:
                await ensure_target(db, route.collection, route.indexes)
            except Exception as exc:  # the documents matter more than the index: go on
                self.events.emit(StreamIndexFailed(tenant=t.id, collection=route.collection,
                                                   index=getattr(exc, "index", None), error=str(exc)[:300]))

    async def _provision(self, tenant: str) -> None:
        s = self.stream_settings
        try:
            result = await provision_user(s.management_url, self.amqp_url, s.exchange, tenant,
                                          user_prefix=s.user_prefix)
        except MysimbdpError as exc:
            self.events.emit(StreamProvisionFailed(tenant=tenant, error=str(exc)))
            return
        self.events.emit(StreamProvisionDone(tenant=tenant, user=result.user, vhost=result.vhost,
                                             created=result.created))

    async def _broker_stats(self, tenant: str) -> tuple[int | None, float | None]:
        """Dead-letter depth and publish rate from the management API (None if unreachable)."""
        vhost = vhost_of(self.amqp_url)
        try:
            async with BrokerAdmin(self.stream_settings.management_url, timeout_s=3.0) as admin:
                queue = await admin.queue(vhost, queue_name(tenant)) or {}
                dead = await admin.queue(vhost, dead_name(tenant)) or {}
        except MysimbdpError:
            return None, None
        rate = (queue.get("message_stats") or {}).get("publish_details", {}).get("rate")
        return dead.get("messages"), rate

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _start_count(profile: StreamProfile) -> int:
    return min(max(profile.min_consumers, 1), profile.max_consumers)
