"""``mysimbdpd`` run as its own process for a benchmark, and what can be read of it.

The platform's CPU time (user+sys) is the daemon's own and its app workers' (the
``python -m mysimbdp.apps.runner.worker`` processes it starts for tenant apps that run with
``runner = "process"``), read from ``/proc``: see :meth:`BenchDaemon.cpu`. The store is a
separate process, started by the benchmark and not by the daemon, and is never counted. Peak
RSS is the daemon's own. Its JSON log file is followed to learn when files and batches are
committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.env import BenchEnv
from mysimbdp.store.client import free_port
from mysimbdp.tenants import write_profile

__all__ = ["BenchDaemon", "LogTail", "ProcStats", "CpuSample", "platform_cpu", "DaemonFailed", "ADMIN_TOKEN"]

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class DaemonFailed(RuntimeError):
    """The daemon exited or did not do what the benchmark waited for; the message says where to look."""


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: ``[0]`` is the state, ``[1]``
    the parent's pid, ``[11:15]`` utime, stime, cutime and cstime in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].decode().split()


class ProcStats:
    """CPU seconds and memory of one process, read from ``/proc/<pid>``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process itself (children not included)."""
        fields = _stat(self.pid)
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def peak_rss_mb(self) -> float:
        """``VmHWM``: the highest resident set size since the process started, in MiB."""
        return self._status_kb("VmHWM") / 1024

    def rss_mb(self) -> float:
        """``VmRSS``: the resident set size now, in MiB."""
        return self._status_kb("VmRSS") / 1024

    def anon_rss_mb(self) -> float:
        """``RssAnon``: the resident memory of the process's own (not file-backed) pages now, in MiB.

        ``VmRSS`` also counts the pages of shared libraries mapped from the page cache, whose
        number depends on the cache's state (libraries written moments ago by ``pip`` map in
        larger pieces): the anonymous part is what the process itself allocated.
        """
        return self._status_kb("RssAnon") / 1024


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds (user+sys) used so far by the daemon itself and by its child processes.

    ``workers`` is every child the daemon started (its app workers, the only children of a
    daemon given a store URI): the live ones' own CPU (and their reaped children's), plus the
    ``cutime``/``cstime`` of the daemon, where the CPU of the children that exited moves once
    the daemon reaps them. ``live_workers`` is how many children were running at the sample.
    Subtract two samples for an interval.
    """

    daemon: float
    workers: float
    live_workers: int = 0

    @property
    def total(self) -> float:
        """The platform's CPU: the daemon's and its workers'."""
        return self.daemon + self.workers

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.daemon - other.daemon, self.workers - other.workers, self.live_workers)


def _children_ticks(pid: int) -> tuple[int, int]:
    """CPU ticks of the live (or exited, not yet reaped) children of ``pid``, and their number."""
    ticks = count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(entry.name)
        except (OSError, IndexError):  # gone meanwhile: its CPU is in the parent's cutime now
            continue
        if fields[1] == str(pid):
            ticks += sum(int(f) for f in fields[11:15])
            count += 1
    return ticks, count


def platform_cpu(pid: int) -> CpuSample:
    """The daemon's and its workers' CPU so far (see :class:`CpuSample`).

    A worker that is reaped while the children are read would be counted twice (in the
    parent's ``cutime`` and in its own line) or not at all: the read is repeated until the
    daemon's ``cutime``/``cstime`` are the same before and after it.
    """
    for _ in range(20):
        before = _stat(pid)
        children, live = _children_ticks(pid)
        after = _stat(pid)
        if before[13:15] == after[13:15]:
            break
    own = int(after[11]) + int(after[12])
    reaped = int(after[13]) + int(after[14])
    return CpuSample(own / _CLK_TCK, (reaped + children) / _CLK_TCK, live)


class LogTail:
    """Follows a JSON-lines log file and keeps the events read so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._pos = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; returns the new events."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._pos += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                new.append(event)
        self.events.extend(new)
        return new

    def find(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Every event read so far that matches."""
        self.poll()
        return [e for e in self.events if predicate(e)]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                       what: str = "event", alive: Callable[[], bool] | None = None,
                       interval: float = 0.02) -> dict[str, Any]:
        """The first event (already read or new) matching ``predicate``; raises on timeout."""
        for event in self.events:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            for event in self.poll():
                if predicate(event):
                    return event
            if alive is not None and not alive():
                raise DaemonFailed(f"the daemon exited while waiting for {what}; see {self.path}")
            if time.monotonic() > deadline:
                raise DaemonFailed(f"no {what} within {timeout:.0f}s; see {self.path}")
            await asyncio.sleep(interval)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the daemon if the benchmark process dies (no daemons left behind)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _daemon_command() -> list[str]:
    script = Path(sys.executable).parent / "mysimbdpd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from mysimbdp.cli import daemon_main; daemon_main()"]


class BenchDaemon:
    """One ``mysimbdpd`` process with its own config, staging and var folders.

    ``batch`` and ``stream`` override the platform's settings sections; ``tenants`` are
    profiles (dicts) written before start. Use as ``async with``.
    """

    def __init__(self, env: BenchEnv, name: str, *, tenants: Sequence[Mapping[str, Any]] = (),
                 batch: dict[str, Any] | None = None, stream: dict[str, Any] | None = None,
                 extra_apps: dict[str, str] | None = None, log_level: str = "info") -> None:
        self.env = env
        self.name = name
        self.base = env.tmp(name)
        self.config_dir = self.base / "config"
        self.staging_dir = self.base / "staging"
        self.var_dir = self.base / "var"
        self.tenants = list(tenants)
        self.batch = batch or {}
        self.stream = stream or {}
        self.extra_apps = extra_apps or {}
        self.log_level = log_level
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.stats: ProcStats | None = None
        self.log = LogTail(self.var_dir / "log" / "mysimbdp.jsonl")

    def environment(self) -> dict[str, str]:
        """The environment that configures the daemon (settings are ``MYSIMBDP_*``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYSIMBDP_")}
        env.update({
            "MYSIMBDP_CONFIG_DIR": str(self.config_dir),
            "MYSIMBDP_STAGING_DIR": str(self.staging_dir),
            "MYSIMBDP_VAR_DIR": str(self.var_dir),
            "MYSIMBDP_HTTP_PORT": str(self.port),
            "MYSIMBDP_MONGO_URI": self.env.mongo_uri,
            "MYSIMBDP_AMQP_URL": self.env.amqp_url,
            "MYSIMBDP_ADMIN_TOKEN": ADMIN_TOKEN,
            "MYSIMBDP_LOG_LEVEL": self.log_level,
            "MYSIMBDP_LOG_MAX_BYTES": str(2 * 1024**3),  # no rotation under the log follower
            "MYSIMBDP_DRAIN_TIMEOUT_S": "5",
            "MYSIMBDP_BATCH": json.dumps(self.batch),
            "MYSIMBDP_STREAM": json.dumps({"management_url": self.env.management_url, **self.stream}),
            "MYSIMBDP_EXTRA_APPS": json.dumps(self.extra_apps),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        })
        return env

    def write_tenant(self, profile: Mapping[str, Any]) -> Path:
        """Write (or rewrite) a tenant profile; a running daemon picks it up by itself."""
        return write_profile(self.config_dir / "tenants", profile)

    def alive(self) -> bool:
        """Whether the daemon process still runs."""
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = 90.0) -> None:
        """Write the profiles, spawn the daemon and wait until ``/health`` says ``ok``."""
        for path in (self.staging_dir, self.var_dir / "log"):
            path.mkdir(parents=True, exist_ok=True)
        for profile in self.tenants:
            self.write_tenant(profile)
        out = open(self.var_dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(_daemon_command(), env=self.environment(),
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.base,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            out.close()
        self.pid = self.proc.pid
        await self._wait_healthy(timeout)
        self.stats = ProcStats(self.pid)

    async def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise DaemonFailed(f"mysimbdpd exited with {self.proc.returncode if self.proc else '?'} "
                                       f"during start-up; see {self.var_dir / 'stdout.log'}")
                try:
                    async with http.get(self.url + "/health") as resp:
                        body = await resp.json(content_type=None)
                        if resp.status == 200 and body.get("status") == "ok":
                            return
                        last = f"{resp.status} {body.get('status')} down={body.get('down')}"
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.2)
        raise DaemonFailed(f"mysimbdpd not healthy within {timeout:.0f}s (last: {last}); "
                           f"see {self.var_dir / 'stdout.log'}")

    async def request(self, method: str, path: str, body: Any = None,
                      token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
        """One HTTP call to the daemon (admin token by default); returns status and JSON body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.request(method, self.url + path, json=body, headers=headers) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = await resp.text()
                return resp.status, data

    def staging(self, tenant: str) -> Path:
        """The tenant's staging folder (created)."""
        path = self.staging_dir / tenant
        path.mkdir(parents=True, exist_ok=True)
        return path

    def drop_file(self, tenant: str, source: Path, name: str | None = None) -> float:
        """Put ``source`` into the tenant's staging folder at once; returns the wall-clock time.

        The file is copied under a hidden name, which the watcher ignores, then renamed: the
        platform sees a complete file appear. A copy, not a hard link: the platform rejects a
        staged file with more than one name (``hard_link``), as it may be another tenant's.
        """
        folder = self.staging(tenant)
        name = name or source.name
        hidden = folder / f".{name}.bench"
        shutil.copyfile(source, hidden)
        t = time.time()
        os.rename(hidden, folder / name)
        return t

    def cpu(self) -> CpuSample:
        """The daemon's and its app workers' CPU seconds so far, apart."""
        return platform_cpu(self.pid)

    def cpu_seconds(self) -> float:
        """The platform's CPU seconds so far: the daemon's and its app workers' (see :meth:`cpu`)."""
        return self.cpu().total

    def peak_rss_mb(self) -> float:
        """The daemon's peak RSS so far, in MiB."""
        assert self.stats is not None
        return self.stats.peak_rss_mb()

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL if it takes longer than ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL at once (the benchmark no longer needs what the daemon is doing)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    async def __aenter__(self) -> BenchDaemon:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await self.stop()
        if exc_type is not None and exc_type is not asyncio.CancelledError:
            self.keep_logs()

    def keep_logs(self) -> Path | None:
        """Copy the daemon's logs to ``bench/data/failures/`` (the run's folder is removed at its end)."""
        target = self.env.data_dir / "failures" / f"{self.base.name}-{self.env.run_id}"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for source in (self.log.path, self.var_dir / "stdout.log"):
                if source.exists():
                    shutil.copy2(source, target / source.name)
        except OSError:
            return None
        print(f"[bench] the failed daemon's logs are kept in {target}", file=sys.stderr, flush=True)
        return target

