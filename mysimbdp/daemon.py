"""The daemon: composes the components, handles signals, drains on shutdown.

Components start in order and stop in reverse. Each has ``start()``, ``stop()`` and
``health()``; those with in-flight work also have ``drain(timeout)``, which stops taking
new work, waits up to ``timeout`` and then cancels what is left (and logs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any, Protocol

import pluggy

from mysimbdp import __version__
from mysimbdp.apps.runner import Runners
from mysimbdp.batch.intake import UploadService
from mysimbdp.batch.ledger import Ledger
from mysimbdp.batch.manager import BatchManager
from mysimbdp.config import Settings
from mysimbdp.http.server import HttpServer
from mysimbdp.logs import get_logger
from mysimbdp.monitor.scaling import Monitor
from mysimbdp.store.client import Store
from mysimbdp.stream.broker import Broker
from mysimbdp.stream.manager import StreamManager
from mysimbdp.tenants import TenantRegistry

__all__ = ["Daemon", "Component"]

log = get_logger("daemon")


class Component(Protocol):
    """What the daemon composes."""

    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def health(self) -> dict[str, object]: ...


class Daemon:
    """The whole platform in one event loop."""

    def __init__(self, settings: Settings, pm: pluggy.PluginManager | None = None) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.draining = False
        self.started_at = time.time()
        # tenant apps are never imported here: the runner finds them by name and runs them in
        # confined workers (or, for tenants marked trusted, imports them on first use)
        self.runners = Runners(settings.runner, dict(settings.extra_apps), pm)
        self.store = Store(settings.mongo_uri, settings.var_dir)
        self.broker = Broker(settings.amqp_url, settings.retry_max_s)
        self.ledger = Ledger(self.store)
        self.tenants = TenantRegistry(settings.tenants_dir, self.stop_event, settings.batch.rescan_interval_s)
        self.http = HttpServer(self, settings.http_host, settings.http_port)
        self.components: list[Any] = [
            self.store,
            self.broker,
            *self._ingestion_components(),
            self.tenants,  # after the listeners: starting it replays every tenant to them
            self.http,
        ]

    def _ingestion_components(self) -> list[Any]:
        """The batch manager, the stream manager and the monitor, in start order."""
        components: list[Any] = [self.runners]  # first: it stops after those that lease its workers
        self.batch = BatchManager(self)
        components.append(self.batch)
        self.upload = UploadService(self)
        components.append(self.upload)
        self.stream = StreamManager(self)
        components.append(self.stream)
        self.monitor = Monitor(self)  # last: it watches the others
        components.append(self.monitor)
        return components

    def component(self, name: str) -> Any:
        """The component registered under ``name``."""
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

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
        return {"status": status, "version": __version__, "uptime_s": round(time.time() - self.started_at, 1),
                "down": down, "components": components}

    async def run(self) -> None:
        """Start everything, serve until SIGINT/SIGTERM (or :meth:`request_stop`), then drain."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        started: list[Any] = []
        try:
            for component in self.components:
                await component.start()
                started.append(component)
            log.info("daemon.started", version=__version__, http_port=self.http.port,
                     store_uri=self.store.uri, tenants=[t.id for t in self.tenants.all()],
                     arrow_memory_pool=self.batch.arrow_memory_pool)
            await self.stop_event.wait()
            await self._drain()
        finally:
            for component in reversed(started):
                try:
                    await component.stop()
                except Exception as exc:
                    log.exception("daemon.stop_failed", stopped_component=component.name, error=str(exc))
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            log.info("daemon.stopped")

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful shutdown (what SIGINT and SIGTERM do)."""
        if not self.stop_event.is_set():
            log.info("daemon.stopping", reason=reason)
            self.stop_event.set()

    async def _drain(self) -> None:
        self.draining = True
        timeout = self.settings.drain_timeout_s
        drainers = [c for c in self.components if hasattr(c, "drain")]
        if not drainers:
            return
        t0 = time.monotonic()
        await asyncio.gather(*(c.drain(timeout) for c in drainers), return_exceptions=True)
        log.info("daemon.drained", seconds=round(time.monotonic() - t0, 3))
