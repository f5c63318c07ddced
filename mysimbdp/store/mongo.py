"""The store (the coredms of the reference design): MongoDB through ``pymongo.AsyncMongoClient``.

Tenant data lives in database ``tenant_<id>``, platform data (file ledger, reports) in
``mysimbdp``. Without ``MYSIMBDP_MONGO_URI`` the daemon runs the embedded
MongoDB-wire-compatible server NX-27017 as a child process, data under ``<var>/store/``.
Writing documents (one write path and retry policy for batch and stream) is
:mod:`mysimbdp.store.writes`; the ``_rejects`` schema is :mod:`mysimbdp.store.rejects`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from mysimbdp.events import Emitter
from mysimbdp.events.catalog import (
    StoreConnected,
    StoreEmbeddedDied,
    StoreEmbeddedStale,
    StoreEmbeddedStarted,
    StoreEmbeddedStopped,
    StoreUnavailable,
)
from mysimbdp.logs import log_only
from mysimbdp.store.embedded import DEFAULT_TUNING, StoreTuning

__all__ = ["PLATFORM_DB", "EmbeddedMongo", "Store", "free_port", "URI_FILE", "redact"]

PLATFORM_DB = "mysimbdp"
#: Longest wait between attempts to start an embedded store that keeps failing.
RESTART_MAX_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


#: Where the embedded store's URI is written once it answers (``mysimbdp store uri`` reads it).
URI_FILE = "uri"


def _port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` now (a stale store of this data dir was stopped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _write_uri(path: Path, uri: str) -> None:
    """Write ``uri`` to ``path`` atomically (readers never see half of it); a failure is not fatal."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(uri + "\n", encoding="utf-8")
        os.replace(tmp, path)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the daemon dies, even by SIGKILL (no orphans)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()  # keep the terminal's Ctrl-C away from the store: the daemon stops it in order


class EmbeddedMongo:
    """NX-27017 as a child process on a free loopback port, with its own PID file and data dir."""

    def __init__(self, data_dir: Path, log_file: Path, host: str = "127.0.0.1", port: int | None = None,
                 tuning: StoreTuning = DEFAULT_TUNING, events: Emitter | None = None) -> None:
        self.events = events or log_only("store")
        self.data_dir = data_dir
        self.log_file = log_file
        self.host = host
        self.port = port or free_port(host)
        self.tuning = tuning
        self.pid_file = data_dir / "nx-27017.pid"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def uri(self) -> str:
        """The URI clients connect to."""
        return f"mongodb://{self.host}:{self.port}/"

    def command(self) -> list[str]:
        """The command line of the server process (NX-27017 with SQLite set up for bulk loads,
        see :mod:`mysimbdp.store.embedded`)."""
        return [sys.executable, "-m", "mysimbdp.store.embedded", *self.tuning.args(),
                "--data-dir", str(self.data_dir), "--pid-file", str(self.pid_file),
                "--log-file", str(self.log_file), "--host", self.host, "--port", str(self.port)]

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """Whether the server process was started and has not exited."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def exited(self) -> bool:
        """Whether the server was started and has exited since (it crashed or was killed)."""
        return self._proc is not None and self._proc.returncode is not None

    async def start(self, timeout: float = 30.0) -> None:
        """Start the server (replacing one left running by a killed daemon) and wait for ``ping``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._replace_stale()
        if not _port_free(self.host, self.port):
            raise RuntimeError(f"port {self.port} on {self.host} is in use by another program; choose another "
                               "with MYSIMBDP_STORE_PORT (0: any free port)")
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.uri, serverSelectionTimeoutMS=500)
        try:
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"embedded store exited with code {self._proc.returncode}; see {self.log_file}")
                try:
                    await client.admin.command("ping")
                    break
                except PyMongoError:
                    if time.monotonic() > deadline:
                        await self.stop()
                        raise RuntimeError(f"embedded store did not answer within {timeout:.0f}s; see {self.log_file}") from None
                    await asyncio.sleep(0.1)
        finally:
            await client.close()
        self.events.emit(StoreEmbeddedStarted(uri=self.uri, pid=self._proc.pid, data_dir=str(self.data_dir)))
        _write_uri(self.data_dir / URI_FILE, self.uri)

    def _replace_stale(self) -> None:
        """A previous daemon killed hard may have left its store running: stop it first."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            cmdline = b""
        if (b"mysimbdp.store.embedded" in cmdline or b"nx_27017" in cmdline) and str(self.data_dir).encode() in cmdline:
            self.events.emit(StoreEmbeddedStale(pid=pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    async def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server and wait for it; kill it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self.events.emit(StoreEmbeddedStopped(pid=proc.pid))


_STOP_WAIT_S = 1.0  # how long the stop waits for the health check to end, before and after closing


class Store:
    """The platform's MongoDB client and its health.

    ``start()`` starts the embedded server when no URI is configured; it never fails because
    the server is down: :attr:`up` tells, and a background task keeps checking.
    """

    name = "store"

    def __init__(self, uri: str | None, var_dir: Path, check_interval_s: float = 2.0,
                 events: Emitter | None = None, port: int | None = None) -> None:
        """``events``: the daemon's emitter for ``store`` (by default the events are only logged);
        ``port``: the embedded store's port (None or 0: a free one)."""
        self.events = events or log_only("store")
        self.embedded = None if uri else EmbeddedMongo(var_dir / "store", var_dir / "log" / "store.log",
                                                       port=port or None, events=self.events)
        self._uri = uri
        self._check_interval = check_interval_s
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.up = False
        self.reason: str | None = "not started"
        self._restart_delay = 0.0
        self._restart_at = 0.0

    @property
    def uri(self) -> str:
        """The URI in use (the embedded server's when none is configured)."""
        if self._uri:
            return self._uri
        assert self.embedded is not None
        return self.embedded.uri

    @property
    def client(self) -> AsyncMongoClient[dict[str, Any]]:
        """The shared client; valid between ``start()`` and ``stop()``."""
        if self._client is None:
            raise RuntimeError("store not started")
        return self._client

    def tenant_db(self, tenant: str) -> AsyncDatabase[dict[str, Any]]:
        """The tenant's own database, ``tenant_<id>``."""
        return self.client[f"tenant_{tenant}"]

    @property
    def platform_db(self) -> AsyncDatabase[dict[str, Any]]:
        """The platform's database (file ledger, reports)."""
        return self.client[PLATFORM_DB]

    async def start(self) -> None:
        """Start the embedded server if needed, create the client, begin health checks.

        An embedded server that cannot start (its folder unusable, a crash at start-up) does
        not stop the daemon: the store is reported down and started again with backoff.
        """
        if self.embedded is not None:
            await self._start_embedded()
        self._client = AsyncMongoClient(self.uri, serverSelectionTimeoutMS=3000, tz_aware=True)
        await self.check()
        self._say_up_or_not()
        self._task = asyncio.create_task(self._check_loop(), name="store.health")

    async def stop(self) -> None:
        """Stop health checks, close the client, stop the embedded server."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # a ping waiting to select an unreachable server may not see its cancellation
            # until the client closes: never wait for it longer than this
            await asyncio.wait({task}, timeout=_STOP_WAIT_S)
        if self._client is not None:
            await self._client.close()
            self._client = None
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=_STOP_WAIT_S)
        if self.embedded is not None:
            await self.embedded.stop()
        self.up = False
        self.reason = "stopped"

    async def check(self) -> bool:
        """Ping the server once; update :attr:`up` and :attr:`reason`."""
        if self.embedded is not None and not self.embedded.running:
            self.up = False  # the reason is the failed start's
            return False
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            self.up, self.reason = False, f"{type(exc).__name__}: {exc}"[:300]
        else:
            self.up, self.reason = True, None
        return self.up

    async def _check_loop(self) -> None:
        was_up = self.up
        while True:
            await asyncio.sleep(self._check_interval)
            await self._restart_if_exited()
            await self.check()
            if self.up != was_up:
                self._say_up_or_not()
                was_up = self.up

    def _say_up_or_not(self) -> None:
        if self.up:
            self.events.emit(StoreConnected(uri=redact(self.uri)))
        else:
            self.events.emit(StoreUnavailable(uri=redact(self.uri), reason=self.reason))

    async def _start_embedded(self) -> bool:
        """Start the embedded server; on failure mark the store down and back off the next try."""
        assert self.embedded is not None
        try:
            await self.embedded.start()
        except (OSError, RuntimeError) as exc:
            self.up, self.reason = False, f"embedded store failed to start: {exc}"[:300]
            self._restart_delay = min(self._restart_delay * 2, RESTART_MAX_S) if self._restart_delay else self._check_interval
            self._restart_at = time.monotonic() + self._restart_delay
            self.events.emit(StoreUnavailable(uri=redact(self.uri), reason=self.reason,
                                              retry_in_s=round(self._restart_delay, 1)))
            return False
        self._restart_delay = 0.0
        return True

    async def _restart_if_exited(self) -> None:
        """The embedded server died or never started: start it again on the same port and data
        (clients reconnect), backing off while it keeps failing."""
        if self.embedded is None or self.embedded.running or time.monotonic() < self._restart_at:
            return
        if self.embedded.exited and not self._restart_delay:  # it ran until now (not a failed start)
            self.events.emit(StoreEmbeddedDied(pid=self.embedded.pid or 0))
        await self._start_embedded()

    def health(self) -> dict[str, object]:
        """``{"up": bool, "reason": ..., "embedded": bool}``."""
        return {"up": self.up, "reason": self.reason, "embedded": self.embedded is not None}


def redact(uri: str) -> str:
    """``uri`` with its user and password replaced by ``***``."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
