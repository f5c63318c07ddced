"""``mysimbdpd`` as a child process, and what can be read of it from outside.

:class:`Daemon` starts the daemon with given :class:`~mysimbdp.config.Settings` (passed in
its environment), waits for ``/health``, stops it (SIGTERM, SIGKILL after a deadline), kills
it, and starts it again with the same settings. Its JSON log is followed by :class:`LogTail`.
The platform's CPU (user+sys) is the daemon's own and its app workers' (the children it
starts for tenant apps with ``runner = "process"``), read from ``/proc``: see
:func:`platform_cpu`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mysimbdp.config import Settings
from mysimbdp.store.mongo import free_port
from tests.harness.wait import wait_until

__all__ = ["Daemon", "LogTail", "CpuSample", "platform_cpu", "cpu_seconds", "status_mb", "daemon_env", "REPO"]

REPO = Path(__file__).resolve().parents[2]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: ``[1]`` the parent's pid, ``[11:15]``
    utime, stime, cutime and cstime in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].decode().split()


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds of one process itself (children not included); ``pid`` may
    also be ``<pid>/task/<tid>``, for one thread of it."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def status_mb(pid: int, key: str) -> float:
    """A memory line of ``/proc/<pid>/status`` in MiB: ``VmHWM`` (peak RSS), ``VmRSS`` (RSS
    now) or ``RssAnon`` (the process's own pages, without the libraries' file-backed ones)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far of the daemon and of every child it started (its app workers: the
    live ones' own, plus the daemon's ``cutime``/``cstime`` for the reaped ones); subtract two
    samples for an interval. ``live_workers``: children running at the sample."""

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
    ticks = count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = _stat(entry.name)
            except (OSError, IndexError):  # gone meanwhile: its CPU is in the parent's cutime now
                continue
            if fields[1] == str(pid):
                ticks, count = ticks + sum(int(f) for f in fields[11:15]), count + 1
    return ticks, count


def platform_cpu(pid: int) -> CpuSample:
    """The daemon's and its workers' CPU so far. A worker reaped while the children are read
    would be counted twice or not at all: the read is repeated until the daemon's
    ``cutime``/``cstime`` are the same before and after it."""
    for _ in range(20):
        before = _stat(pid)
        children, live = _children_ticks(pid)
        after = _stat(pid)
        if before[13:15] == after[13:15]:
            break
    own, reaped = int(after[11]) + int(after[12]), int(after[13]) + int(after[14])
    return CpuSample(own / _CLK_TCK, (reaped + children) / _CLK_TCK, live)


class LogTail:
    """Follows a JSON-lines log file and keeps the events read so far in :attr:`events`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._pos = 0
        self._partial = b""

    def poll(self) -> None:
        """Read what was appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._pos += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if isinstance(event, dict):
                    self.events.append(event)

    def find(self, event: str | tuple[str, ...], **fields: Any) -> list[dict[str, Any]]:
        """Every event so far named ``event`` (or one of them) whose ``fields`` have these values."""
        self.poll()
        names = (event,) if isinstance(event, str) else event
        return [e for e in self.events if e.get("event") in names
                and all(e.get(k) == v for k, v in fields.items())]

    def first(self, event: str | tuple[str, ...], **fields: Any) -> dict[str, Any] | None:
        """The first of :meth:`find`, or None (a check for :func:`~tests.harness.wait.await_until`)."""
        found = self.find(event, **fields)
        return found[0] if found else None


def daemon_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment that makes ``mysimbdpd`` use ``settings`` on ``port``: every setting as
    ``MYSIMBDP_<NAME>`` (sections as JSON), none inherited from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSIMBDP_")}
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        env[f"MYSIMBDP_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["MYSIMBDP_HTTP_PORT"] = str(port)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the daemon if the process that started it dies: none left behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Daemon:
    """One ``mysimbdpd`` process at a time with fixed settings; start, kill and start again at will.

    Its output goes to ``<var_dir>/stdout-<n>.log`` (one per start). :attr:`kills` counts the
    kills asked for, :attr:`crashes` the processes found dead that nobody killed.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = self.kills = self.crashes = 0
        self.logs: list[Path] = []
        self.log = LogTail(settings.log_file)

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.proc is not None, "the daemon is not running"
        return self.proc.pid

    def start(self, timeout: float = 60.0, want: tuple[int, ...] = (200, 503)) -> None:
        """Start a new process on a new free port; wait until ``/health`` answers one of ``want``.

        Refuses while the previous process runs: two daemons on one staging folder would race.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the daemon is still running: kill() or stop() it first")
        port = free_port()
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        self.logs.append(self.settings.var_dir / f"stdout-{self.starts}.log")
        with open(self.logs[-1], "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from mysimbdp.cli import daemon_main; daemon_main()"],
                env=daemon_env(self.settings, port), stdout=out, stderr=subprocess.STDOUT,
                cwd=self.settings.var_dir.parent, start_new_session=True, preexec_fn=_die_with_parent)
        self.starts += 1
        self.url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: self.health()[0] in want, timeout, f"/health to answer {want}",
                       alive=lambda: self.proc is not None and self.proc.poll() is None,
                       where=f"; see {self.logs[-1]}")
        except BaseException:
            self.kill()  # never leave a half-started daemon behind
            raise

    def health(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        """``GET /health``: status and body (status 0 when nothing answers)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout) as resp:
                return int(resp.status), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"{}")
        except (OSError, ValueError) as exc:
            return 0, {"error": str(exc)}

    def alive(self) -> bool:
        """Whether the process runs; one that died on its own counts as a crash."""
        if self.proc is not None and self.proc.poll() is not None:
            self.crashes += 1
            self.proc = None
        return self.proc is not None

    def kill(self) -> None:
        """SIGKILL the daemon (its app workers die with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.kills += 1
        elif self.proc is not None:
            self.crashes += 1
        self.proc = None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for the drain, SIGKILL after ``timeout``; the exit code."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode if proc is not None else None

    def cpu(self) -> CpuSample:
        """The daemon's and its app workers' CPU seconds so far, apart."""
        return platform_cpu(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the current process's output, for assertion messages."""
        if not self.logs or not self.logs[-1].exists():
            return ""
        return "\n".join(self.logs[-1].read_text(errors="replace").splitlines()[-lines:])
