"""Batch loads through a running daemon: tenant profiles, dropping a file, waiting for its outcome."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.daemon import BenchDaemon, ProcStats
from bench.data import DataFile
from bench.session import BenchError

__all__ = ["batch_profile", "BATCH_SETTINGS", "FLIGHTS_APP", "FLIGHTS_COLLECTION", "RUNNERS", "LoadRun", "load_file",
           "event_time", "PeakSampler", "AnonPeak"]

FLIGHTS_APP = "flights"
FLIGHTS_COLLECTION = "flights"

#: Platform settings of the benchmark daemons. A file dropped by rename is complete at once,
#: so the watcher's stability wait is shortened from 1 s to 0.2 s (it would otherwise add a
#: constant second to every drop-to-committed time).
BATCH_SETTINGS: dict[str, Any] = {"stable_after_s": 0.2, "rescan_interval_s": 1.0}

#: Where a tenant's apps run (the profile's ``runner``): the platform's default first.
RUNNERS: tuple[str, ...] = ("process", "thread")


def batch_profile(tenant: str, app: str = FLIGHTS_APP, runner: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A tenant profile whose limits let 1 GB files through; ``runner`` None keeps the
    platform's default (a worker process)."""
    batch = {"app": app, "formats": ["csv", "csv.gz", "jsonl"], "max_file_bytes": 4 * 1024**3,
             "max_staged_files": 100, "max_concurrent_files": 2, "storage_quota_bytes": 1024**4,
             "timeout_s": 7200.0, **overrides}
    profile: dict[str, Any] = {"id": tenant, "name": f"benchmark tenant {tenant}", "batch": batch}
    if runner is not None:
        profile["runner"] = runner
    return profile


def event_time(event: dict[str, Any]) -> float:
    """An event's ``ts`` as seconds since the epoch."""
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


@dataclass
class LoadRun:
    """One file dropped and committed."""

    tenant: str
    file: str
    records: int
    bytes: int
    seconds: float  # drop (rename into staging) -> batch.file.committed
    platform_seconds: float  # the platform's own timing: loading start -> committed
    cpu_seconds: float  # the platform's CPU over the same interval: the daemon's and its app workers'
    peak_rss_mb: float  # the daemon's VmHWM after the load
    store_cpu_seconds: float | None = None  # the embedded store's CPU over the interval, if known
    peak_anon_mb: float | None = None  # the highest RssAnon sampled during the load
    worker_cpu_seconds: float = 0.0  # the app workers' part of cpu_seconds
    runner: str = "process"  # where the tenant's app ran (the profile's runner)

    @property
    def rate(self) -> float:
        """Records per second, drop to committed."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        """Platform CPU (daemon + app workers) microseconds per record."""
        return self.cpu_seconds / self.records * 1e6 if self.records else 0.0

    @property
    def daemon_cpu_seconds(self) -> float:
        """The daemon's own part of :attr:`cpu_seconds`."""
        return self.cpu_seconds - self.worker_cpu_seconds

    def us_per_record(self, seconds: float) -> float:
        """``seconds`` of CPU in microseconds per record of this load."""
        return seconds / self.records * 1e6 if self.records else 0.0

    def to_json(self) -> dict[str, Any]:
        """The raw repetition as written to the results file."""
        return {"tenant": self.tenant, "runner": self.runner, "file": self.file, "records": self.records,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "platform_seconds": round(self.platform_seconds, 3),
                "records_per_s": round(self.rate, 1), "cpu_seconds": round(self.cpu_seconds, 3),
                "daemon_cpu_seconds": round(self.daemon_cpu_seconds, 3),
                "worker_cpu_seconds": round(self.worker_cpu_seconds, 3),
                "cpu_us_per_record": round(self.cpu_us_per_record, 3),
                "daemon_cpu_us_per_record": round(self.us_per_record(self.daemon_cpu_seconds), 3),
                "worker_cpu_us_per_record": round(self.us_per_record(self.worker_cpu_seconds), 3),
                "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_anon_mb": round(self.peak_anon_mb, 1) if self.peak_anon_mb is not None else None,
                "daemon_cpu_share": round(self.cpu_seconds / self.seconds, 3) if self.seconds > 0 else None,
                "store_cpu_share": (round(self.store_cpu_seconds / self.seconds, 3)
                                    if self.store_cpu_seconds is not None and self.seconds > 0 else None)}


def outcome(tenant: str, name: str) -> Any:
    """A predicate matching the file's ``batch.file.committed`` or ``batch.file.rejected`` event."""
    def match(e: dict[str, Any]) -> bool:
        return (e.get("event") in ("batch.file.committed", "batch.file.rejected")
                and e.get("tenant") == tenant and e.get("file") == name)
    return match


async def load_file(daemon: BenchDaemon, tenant: str, data: DataFile, timeout: float,
                    name: str | None = None, collection: str | None = FLIGHTS_COLLECTION,
                    runner: str = "process") -> LoadRun:
    """Drop ``data`` into the tenant's staging folder and wait until it is committed.

    ``collection`` (the app's target) is counted afterwards as a cross-check of the event;
    ``runner`` (the tenant profile's) is only recorded.

    Raises :class:`BenchError` if the file is rejected, if fewer records than the file holds
    were written, or if nothing happens within ``timeout``.
    """
    name = name or f"{data.path.stem}-{uuid.uuid4().hex[:6]}{''.join(data.path.suffixes)}"
    daemon.log.poll()
    cpu0, store0 = daemon.cpu(), daemon.env.store_cpu()
    dropped = daemon.drop_file(tenant, data.path, name)
    async with AnonPeak(daemon.stats) as anon:
        event = await daemon.log.wait_for(outcome(tenant, name), timeout, what=f"outcome of {name}",
                                          alive=daemon.alive)
    cpu1, store1 = daemon.cpu(), daemon.env.store_cpu()
    if event["event"] != "batch.file.committed":
        raise BenchError(f"{name} was rejected: {event.get('code')}: {event.get('reason')}")
    written = int(event.get("records_written", 0)) + int(event.get("duplicates", 0))
    if written != data.rows:
        raise BenchError(f"{name}: {written} of {data.rows} records written "
                         f"({event.get('records_rejected')} rejected); see {daemon.log.path}")
    if collection is not None and daemon.env.client is not None:
        count = await daemon.env.client[f"tenant_{tenant}"][collection].estimated_document_count()
        if count < written:
            raise BenchError(f"{name}: the event says {written} records but the collection holds {count}")
    store_cpu = store1 - store0 if store0 is not None and store1 is not None else None
    cpu = cpu1 - cpu0
    return LoadRun(tenant, name, data.rows, data.bytes, event_time(event) - dropped,
                   float(event.get("seconds", 0.0)), cpu.total, daemon.peak_rss_mb(), store_cpu,
                   anon.peak, cpu.workers, runner)


class PeakSampler:
    """Calls ``read`` every ``every_s`` while the ``async with`` block runs; ``peak``: the
    highest value read, ``samples``: how many reads succeeded. ``read`` None samples nothing."""

    def __init__(self, read: Callable[[], float] | None, every_s: float = 0.1) -> None:
        self.read, self.every_s = read, every_s
        self.peak: float | None = None
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PeakSampler:
        if self.read is not None:
            self._task = asyncio.create_task(self._sample(self.read))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._take(self.read)  # the state at the block's end, however short it was

    def _take(self, read: Callable[[], float] | None) -> None:
        if read is None:
            return
        with contextlib.suppress(OSError, KeyError):
            self.peak = max(self.peak or 0.0, read())
            self.samples += 1

    async def _sample(self, read: Callable[[], float]) -> None:
        while True:
            self._take(read)
            await asyncio.sleep(self.every_s)


class AnonPeak(PeakSampler):
    """A :class:`PeakSampler` of a process's anonymous RSS (``RssAnon``), in MiB."""

    def __init__(self, stats: ProcStats | None, every_s: float = 0.1) -> None:
        super().__init__(stats.anon_rss_mb if stats is not None else None, every_s)
