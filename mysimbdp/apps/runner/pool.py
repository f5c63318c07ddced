"""The daemon's app runner: finds tenant apps without running them, and lends out sessions.

``runner = "process"`` (the default): a session is a confined worker process of its own for
one tenant and one app (:class:`ProcessSession`); a worker is never shared between tenants.
Idle workers are kept (``idle_workers`` per tenant app) for the next file or consumer, and
replaced once they have used half their CPU budget or died.

``runner = "thread"``: the app is imported into the daemon and called in its threads
(:class:`ThreadSession`): faster, but the app runs with everything the daemon can reach.
A tenant whose abandoned calls are still stuck (:data:`MAX_STUCK`) gets no new session
until they return.

The daemon never imports an app that runs in a worker: it looks apps up in the entry-point
metadata (``mysimbdp`` group) or in ``extra_apps`` (module names).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Literal

import pluggy

from mysimbdp.apps.app import App
from mysimbdp.apps.plugins import ENTRY_POINT_GROUP, get_plugin_manager
from mysimbdp.apps.runner.calls import AppError
from mysimbdp.apps.runner.sessions import AppSession, ProcessSession, ThreadSession
from mysimbdp.config import RunnerSettings
from mysimbdp.errors import PluginError
from mysimbdp.events import Emitter
from mysimbdp.events.catalog import RunnerThreadStuck, RunnerWorkerStarted
from mysimbdp.logs import log_only

__all__ = ["Runners", "Mode", "MAX_STUCK"]

Mode = Literal["process", "thread"]
#: Abandoned calls of one tenant's apps still running in daemon threads before it gets no more.
MAX_STUCK = 4


class Runners:
    """Sessions of tenant apps, by tenant and app; thread-safe (sessions are made in threads)."""

    name = "runner"

    def __init__(self, settings: RunnerSettings, extra_apps: dict[str, str],
                 pm: pluggy.PluginManager | None = None, events: Emitter | None = None) -> None:
        """``events``: the daemon's emitter for ``runner`` (by default the events are only logged)."""
        self.settings = settings
        self.events = events or log_only("runner")
        self._extra = dict(extra_apps)
        self._pm = pm
        self._thread_apps: dict[str, App] = {}
        self._idle: dict[tuple[str, str], list[ProcessSession]] = defaultdict(list)
        self._busy: dict[str, int] = defaultdict(int)
        self._stuck: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._closed = False
        # Workers are started from this one long-lived thread: a worker asks the kernel to kill
        # it when the thread that started it ends (PR_SET_PDEATHSIG), so that no worker outlives
        # the daemon, even a daemon killed with SIGKILL while the app spins.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="runner-spawn")

    # -- component -------------------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to start: workers start when a file or a consumer first needs one."""

    async def stop(self) -> None:
        """End the idle workers (after the batch and stream components released theirs)."""
        await asyncio.to_thread(self.close)

    def health(self) -> dict[str, object]:
        """Workers busy and idle per tenant (shown to the admin only)."""
        return {"up": True, "tenants": self.workers()}

    # -- finding apps ----------------------------------------------------------------------
    def module_of(self, name: str) -> str | None:
        """The module of an app given by module name (``extra_apps`` or a test's plugin manager)."""
        if name in self._extra:
            return self._extra[name]
        plugin = self._pm.get_plugin(name) if self._pm is not None else None
        return plugin.__name__ if isinstance(plugin, ModuleType) else None

    def check(self, name: str) -> None:
        """Raise :class:`PluginError` unless an app ``name`` is installed (nothing is imported)."""
        if self.module_of(name) is not None:
            return
        if self._pm is not None and self._pm.get_plugin(name) is not None:
            return
        if not any(True for _ in entry_points(group=ENTRY_POINT_GROUP, name=name)):
            raise PluginError(
                f"no tenant app named {name!r} is installed; `mysimbdp apps` lists the installed "
                "apps: pip install the app's distribution or fix the name in the tenant profile")

    # -- sessions --------------------------------------------------------------------------
    def lease(self, tenant: str, name: str, mode: Mode, kind: str) -> AppSession:
        """A session of app ``name`` for ``tenant`` that is a ``kind`` app; blocks while a worker
        starts (call it from a thread). Raises :class:`PluginError` (no such app, or not of
        ``kind``) or :class:`AppError` (the worker cannot start)."""
        self.check(name)
        session = self._thread_session(tenant, name) if mode == "thread" or self._in_process_only(name) \
            else self._process_session(tenant, name)
        if kind not in session.kinds:
            self.release(session)
            raise PluginError(f"app {name!r} is not a {kind} app (it implements "
                              f"{', '.join(sorted(getattr(session, 'hooks', ()))) or 'no hook'})")
        return session

    def release(self, session: AppSession) -> None:
        """Give a session back: kept for the next job if healthy and wanted, else ended."""
        if isinstance(session, ThreadSession):
            return
        assert isinstance(session, ProcessSession)
        key = (session.tenant, session.name)
        with self._lock:
            self._busy[session.tenant] -= 1
            keep = (not self._closed and session.alive and len(self._idle[key]) < self.settings.idle_workers
                    and session.cpu_seconds() < session.cpu_budget_s)
            if keep:
                self._idle[key].append(session)
        if not keep:
            session.close()

    def workers(self) -> dict[str, dict[str, int]]:
        """Per tenant: workers busy and idle, and calls stuck in threads (for ``/health``)."""
        with self._lock:
            tenants = set(self._busy) | {t for t, _ in self._idle} | set(self._stuck)
            return {t: {"busy": self._busy.get(t, 0), "idle": sum(len(v) for (tt, _), v in self._idle.items() if tt == t),
                        "stuck_threads": self._stuck.get(t, 0)} for t in sorted(tenants)}

    def close(self) -> None:
        """End every idle worker (busy ones end when their owners release them)."""
        with self._lock:
            self._closed = True
            idle = [s for sessions in self._idle.values() for s in sessions]
            self._idle.clear()
        for session in idle:
            session.close()
        self._spawner.shutdown(wait=False)  # its thread's end kills any worker still running

    def _process_session(self, tenant: str, name: str) -> ProcessSession:
        key = (tenant, name)
        with self._lock:
            if self._closed:
                raise AppError("the platform is stopping")
            while self._idle[key]:
                session = self._idle[key].pop()
                if session.alive:
                    self._busy[tenant] += 1
                    return session
                session.close()
            self._busy[tenant] += 1
        try:
            session = ProcessSession(tenant, name, self.module_of(name), self.settings, self._spawn)
        except BaseException:
            with self._lock:
                self._busy[tenant] -= 1
            raise
        self.events.emit(RunnerWorkerStarted(tenant=tenant, app=name, pid=session.proc.pid,
                                             landlock_abi=int(session.confinement.get("landlock_abi", 0)),
                                             netns=bool(session.confinement.get("netns", False))))
        return session

    def _spawn(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(*args, **kwargs)
        return self._spawner.submit(start).result()

    def _in_process_only(self, name: str) -> bool:
        """An app registered as an object by the caller (not a module) can only run in a thread."""
        plugin = self._pm.get_plugin(name) if self._pm is not None else None
        return plugin is not None and not isinstance(plugin, ModuleType)

    def _thread_session(self, tenant: str, name: str) -> ThreadSession:
        with self._lock:
            if self._stuck[tenant] >= MAX_STUCK:
                raise AppError(f"{self._stuck[tenant]} calls of this tenant's apps are stuck in the daemon's "
                               "threads (runner = \"thread\"); no more run until they return")
        return ThreadSession(tenant, self._thread_app(name), self._note_stuck)

    def _thread_app(self, name: str) -> App:
        """App ``name`` imported into the daemon, with its plugin manager made once (sessions share
        it: pluggy's hook calls are safe from several threads)."""
        with self._lock:
            app = self._thread_apps.get(name)
        if app is None:
            try:
                app = App(self._plugins(name), name)
            except PluginError as exc:  # installed but cannot load: as a worker that cannot start
                raise AppError(str(exc)) from None
            with self._lock:
                app = self._thread_apps.setdefault(name, app)
        return app

    def _plugins(self, name: str) -> pluggy.PluginManager:
        """A discovery plugin manager holding app ``name`` (the caller's, or one with just that app)."""
        if self._pm is not None and self._pm.get_plugin(name) is not None:
            return self._pm
        module = self._extra.get(name)
        pm = get_plugin_manager({name: module} if module else None, load_entry_points=False)
        if module is None:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        return pm

    def _note_stuck(self, tenant: str, delta: int) -> None:
        with self._lock:
            self._stuck[tenant] += delta
        if delta > 0:
            self.events.emit(RunnerThreadStuck(tenant=tenant, stuck=self._stuck[tenant]))
