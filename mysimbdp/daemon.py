"""The daemon: composes the components, handles signals, drains on shutdown.

Every component is made here and handed what it uses (settings sections, the store, the
ledger, the tenants, the app runners, the event bus, the stop event, the stream manager the
monitor scales): this file is the one place that shows what depends on what. Components
start in order and stop in reverse (an :class:`~contextlib.AsyncExitStack`). Those with
in-flight work also have ``drain(timeout)``, which stops taking new work, waits up to
``timeout`` and then cancels what is left (and logs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Iterator
from typing import Any, Protocol

import pluggy

from mysimbdp import __version__
from mysimbdp.apps.runner import Runners
from mysimbdp.batch.data import TenantData
from mysimbdp.batch.intake import UploadService
from mysimbdp.batch.ledger import Ledger
from mysimbdp.batch.lifecycle import BatchManager
from mysimbdp.batch.trial import FileTrial
from mysimbdp.batch.undo import FileUndo
from mysimbdp.cluster.identity import instance_id
from mysimbdp.cluster.instances import InstanceRegistry
from mysimbdp.cluster.leases import Leases
from mysimbdp.config import Settings
from mysimbdp.events import EventBus
from mysimbdp.events.catalog import (
    DaemonDrained,
    DaemonStarted,
    DaemonStopFailed,
    DaemonStopped,
    DaemonStopping,
)
from mysimbdp.http.console import Console
from mysimbdp.http.routes import route_table
from mysimbdp.http.server import Auth, HttpServer
from mysimbdp.logs import write_event
from mysimbdp.monitor.scaling import Monitor
from mysimbdp.store.browse import TenantRejects
from mysimbdp.store.mongo import Store
from mysimbdp.store.replay import RejectsReplay
from mysimbdp.store.schemas import SchemaHistory
from mysimbdp.stream.broker import Broker
from mysimbdp.stream.control import StreamControlRoutes
from mysimbdp.stream.manager import StreamManager
from mysimbdp.tenants import TenantRegistry

__all__ = ["Daemon", "Component", "Drainer"]


class Component(Protocol):
    """What the daemon composes."""

    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def health(self) -> dict[str, object]: ...


class Drainer(Protocol):
    """A component with in-flight work to finish at shutdown."""

    async def drain(self, timeout: float) -> None: ...


class Daemon:
    """The whole platform in one event loop."""

    def __init__(self, settings: Settings, pm: pluggy.PluginManager | None = None) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.draining = False
        self.started_at = time.time()
        # one bus per daemon: the JSON log is its writer; the monitor, the metrics and the
        # statistics subscribe when the monitor starts
        # this daemon among those sharing the store: every line it logs says which it is
        self.instance_id = instance_id(settings.instance_id, settings.var_dir)
        self.events = EventBus(functools.partial(write_event, instance=self.instance_id))
        self._log = self.events.emitter("daemon")
        bus, stopping = self.events, self.stop_event
        # tenant apps are never imported here: the runner finds them by name and runs them in
        # confined workers (or, for tenants marked trusted, imports them on first use)
        self.runners = Runners(settings.runner, dict(settings.extra_apps), pm, events=bus.emitter("runner"))
        self.store = Store(settings.mongo_uri, settings.var_dir, events=bus.emitter("store"),
                           port=settings.store_port)
        self.leases = Leases(self.store, self.instance_id, settings.cluster.lease_s)
        self.broker = Broker(settings.amqp_url, settings.retry_max_s, bus=bus)
        self.ledger = Ledger(self.store)
        self.schemas = SchemaHistory(store=self.store)
        self.tenants = TenantRegistry(settings.tenants_dir, stopping, settings.batch.rescan_interval_s, bus=bus)
        self.batch = BatchManager(settings=settings.batch, staging_dir=settings.staging_dir,
                                  archive_dir=settings.archive_dir, store=self.store, ledger=self.ledger,
                                  runners=self.runners, tenants=self.tenants, stop_event=stopping, bus=bus,
                                  instance_id=self.instance_id, cluster=settings.cluster, schemas=self.schemas)
        self.upload = UploadService(staging_dir=settings.staging_dir, ledger=self.ledger, batch=self.batch,
                                    stopping=stopping, bus=bus, instance_id=self.instance_id,
                                    live_instances=lambda: self.instances.live_ids(),
                                    lease_s=settings.cluster.lease_s)
        self.stream = StreamManager(settings=settings.stream, amqp_url=settings.amqp_url,
                                    drain_timeout_s=settings.drain_timeout_s, retry_max_s=settings.retry_max_s,
                                    tenants=self.tenants, broker=self.broker, store=self.store,
                                    runners=self.runners, bus=bus, schemas=self.schemas)
        self.instances = InstanceRegistry(instance_id=self.instance_id, store=self.store, settings=settings.cluster,
                                          version=__version__, http_port=lambda: self.http.port,
                                          activity=self._activity, bus=bus)
        self.undo = FileUndo(store=self.store, ledger=self.ledger, instance_id=self.instance_id,
                             lease_s=settings.cluster.lease_s, bus=bus)
        self.monitor = Monitor(tenants=self.tenants, store=self.store, stream=self.stream, health=self.health,
                               http=settings.http, metrics_token=settings.metrics_token,
                               admin_token=settings.admin_token, stopping=stopping, bus=bus,
                               leases=self.leases, instances=self.instances)
        self.console = Console(tenants=self.tenants, admin_token=settings.admin_token, bus=bus,
                               max_connections=settings.http.max_connections)
        self.http = HttpServer(host=settings.http_host, port=settings.http_port, limits=settings.http,
                               auth=Auth(self.tenants, settings.admin_token), middlewares=[self.console.middleware()],
                               routes=self.console.routes() + route_table(self.upload, self.monitor,
                                                  StreamControlRoutes(self.stream, self.monitor.cluster),
                                                  self.instances, TenantData(store=self.store, ledger=self.ledger,
                                                                                  instances=self.instances),
                                                  TenantRejects(store=self.store), self.undo,
                                                  FileTrial(settings=settings.batch, runners=self.runners,
                                                            ledger=self.ledger, usage=self.batch,
                                                            var_dir=settings.var_dir), self.schemas,
                                                  RejectsReplay(store=self.store, ledger=self.ledger,
                                                                runners=self.runners, schemas=self.schemas)),
                               health=self.health, stopping=stopping, bus=bus)
        # start order (stop is the reverse): the runner stops after those that lease its workers;
        # the monitor starts last of the ingestion components (it watches them); the registry
        # starts after its listeners (starting it onboards every tenant); HTTP opens last
        self.components: list[Component] = [
            self.store, self.instances, self.broker, self.runners, self.batch, self.upload, self.undo, self.stream,
            self.monitor, self.tenants, self.http,
        ]
        self.drainers: list[Drainer] = [self.batch, self.upload, self.stream]

    def _activity(self) -> dict[str, Any]:
        """What this instance's heartbeat says it does: files loading, consumers per tenant, and the
        stream tenants it serves (those a tenant's consumers are shared among)."""
        streams = [t.id for t in self.tenants.all() if t.stream is not None]
        consumers = {t: self.stream.consumer_count(t) for t in streams}
        ingested = {t: self.stream.last_ingest(t) for t in streams}
        return {"loading": self.batch.loading(), "consumers": {t: n for t, n in consumers.items() if n},
                "stream_tenants": streams, "last_ingest": {t: at for t, at in ingested.items() if at is not None}}

    def health(self) -> dict[str, Any]:
        """``status`` is ``ok`` when every component is up, ``degraded`` (with reasons) otherwise."""
        components: dict[str, Any] = {}
        for c in self.components:
            try:
                components[c.name] = c.health()
            except Exception as exc:  # a broken health check is itself a finding
                components[c.name] = {"up": False, "reason": f"health check failed: {exc}"}
        down = [name for name, h in components.items() if not h.get("up")]
        status = "draining" if self.draining else ("degraded" if down else "ok")
        return {"status": status, "instance": self.instance_id, "version": __version__, "uptime_s": round(time.time() - self.started_at, 1),
                "down": down, "components": components}

    async def run(self) -> None:
        """Start everything, serve until SIGINT/SIGTERM (or :meth:`request_stop`), then drain."""
        async with contextlib.AsyncExitStack() as stack:
            # exits run in reverse: components stop, daemon.stopped, signals restored
            stack.enter_context(self._signals())
            stack.callback(self._log.emit, DaemonStopped())
            for component in self.components:
                await component.start()
                stack.push_async_callback(self._stop, component)
            await self.instances.beat()  # with the HTTP port, now that it is known
            self._log.emit(DaemonStarted(version=__version__, http_port=self.http.port, store_uri=self.store.uri,
                                         tenants=[t.id for t in self.tenants.all()],
                                         arrow_memory_pool=self.batch.arrow_memory_pool))
            await self.stop_event.wait()
            await self._drain()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM request a stop while the daemon runs."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _stop(self, component: Component) -> None:
        try:
            await component.stop()
        except Exception as exc:
            self._log.emit(DaemonStopFailed(stopped_component=component.name, error=str(exc)), exc_info=True)

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful shutdown (what SIGINT and SIGTERM do)."""
        if not self.stop_event.is_set():
            self._log.emit(DaemonStopping(reason=reason))
            self.stop_event.set()

    async def _drain(self) -> None:
        """Every drainer at once: each stops taking work, waits up to the timeout, cancels, logs."""
        self.draining = True
        self.console.close()  # the live pages' event streams end: they reconnect to another instance
        t0 = time.monotonic()
        await asyncio.gather(*(d.drain(self.settings.drain_timeout_s) for d in self.drainers),
                             return_exceptions=True)
        self._log.emit(DaemonDrained(seconds=round(time.monotonic() - t0, 3)))
