"""The staging watcher: notices complete files in ``<staging>/<tenant>/``.

One ``watchfiles.awatch`` over the whole staging folder wakes the scanner on any change; a
periodic rescan (``rescan_interval_s``) catches whatever the notifications miss (network
file systems, a full inotify table) and files already there at start-up. A file counts as
complete when its size and modification time have not changed for ``stable_after_s``.
Names starting with ``.`` or ending with ``.part`` are ignored: tenants upload under such a
name and rename when done. Sub-folders are ignored.

A scan lists a folder in a worker thread, never on the event loop, and reads at most
``max_entries`` entries of one folder (hidden ones included): a tenant who fills its folder
with junk slows only its own scans, and files past the limit wait until the folder shrinks
(``batch.scan.truncated`` says so, once). The count of waiting files each scan finds is what
the platform reports as the tenant's staged files (:meth:`StagingWatcher.waiting`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

from mysimbdp.events import Emitter
from mysimbdp.events.catalog import BatchScanFailed, BatchScanTruncated, BatchWatchFailed

__all__ = ["StagingWatcher", "is_ignored", "OnFile"]


#: Entries of one tenant's folder one scan reads at most.
MAX_SCAN_ENTRIES = 10_000
#: The notify thread wakes this often to collect file events (each wake takes the GIL, so an
#: idle daemon's CPU grows as this shrinks): a dropped file reaches the scanner within about
#: two steps. The thread returns to the event loop at least every ``WATCH_TIMEOUT_MS``.
WATCH_STEP_MS = 200
WATCH_TIMEOUT_MS = 60_000

#: ``await on_file(tenant, path, stat_result)`` for each complete file (or symlink, FIFO…).
OnFile = Callable[[str, Path, os.stat_result], Awaitable[None]]


def is_ignored(name: str) -> bool:
    """Hidden and in-progress names, which the watcher never picks up."""
    return name.startswith(".") or name.endswith(".part")


class StagingWatcher:
    """Watches the staging folders of the tenants it is told about."""

    def __init__(self, staging_dir: Path, stable_after_s: float, rescan_interval_s: float,
                 stop_event: asyncio.Event, on_file: OnFile, events: Emitter,
                 max_entries: int = MAX_SCAN_ENTRIES) -> None:
        self.events = events
        self.staging_dir = staging_dir
        self.max_entries = max_entries
        self.stable_after_s = stable_after_s
        self.rescan_interval_s = rescan_interval_s
        self._stop = stop_event
        self._on_file = on_file
        self._tenants: set[str] = set()
        self._claimed: dict[str, set[str]] = {}
        self._seen: dict[tuple[str, str], tuple[tuple[int, int], float]] = {}
        self._waiting: dict[str, int] = {}
        self._truncated: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def folder(self, tenant: str) -> Path:
        """``<staging>/<tenant>/``."""
        return self.staging_dir / tenant

    def watch(self, tenant: str) -> None:
        """Start watching ``tenant``'s folder (created if missing); scan it at once."""
        self.folder(tenant).mkdir(parents=True, exist_ok=True)
        self._tenants.add(tenant)
        self._claimed.setdefault(tenant, set())
        self._wake.set()

    def unwatch(self, tenant: str) -> None:
        """Stop watching ``tenant``'s folder; files already handed over finish loading."""
        self._tenants.discard(tenant)
        self._waiting.pop(tenant, None)
        self._truncated.discard(tenant)
        for key in [k for k in self._seen if k[0] == tenant]:
            del self._seen[key]

    @property
    def tenants(self) -> set[str]:
        """The tenants being watched."""
        return set(self._tenants)

    def waiting(self, tenant: str) -> int:
        """Files waiting in the tenant's folder (not hidden, not ``.part``, not folders) at the last scan."""
        return self._waiting.get(tenant, 0)

    def claimed(self, tenant: str) -> set[str]:
        """Names handed over and not yet released."""
        return set(self._claimed.get(tenant, ()))

    def release(self, tenant: str, name: str) -> None:
        """Forget a handed-over file: if it is still there, it will be picked up again."""
        self._claimed.get(tenant, set()).discard(name)

    async def start(self) -> None:
        """Begin watching and scanning."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._tasks = [asyncio.create_task(self._notify_loop(), name="batch.watch"),
                       asyncio.create_task(self._scan_loop(), name="batch.scan")]

    async def stop(self) -> None:
        """Stop watching and scanning."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _notify_loop(self) -> None:
        while not self._stop.is_set():
            try:
                async for _changes in watchfiles.awatch(self.staging_dir, stop_event=self._stop,
                                                        debounce=200, step=WATCH_STEP_MS,
                                                        rust_timeout=WATCH_TIMEOUT_MS, recursive=True,
                                                        ignore_permission_denied=True):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. inotify limits: rescans still find the files
                self.events.emit(BatchWatchFailed(error=str(exc)[:300], retry_in_s=self.rescan_interval_s))
                await asyncio.sleep(self.rescan_interval_s)

    async def _scan_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            pending = False
            for tenant in sorted(self._tenants):
                try:
                    pending |= await self.scan(tenant)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one tenant's problem never stops the others' scans
                    self.events.emit(BatchScanFailed(tenant=tenant, error=str(exc)[:300]), exc_info=True)
            timeout = self.rescan_interval_s
            if pending:
                timeout = min(timeout, max(self.stable_after_s / 2, 0.05))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def scan(self, tenant: str) -> bool:
        """Hand over the tenant's complete files, oldest first; True if some are still growing."""
        folder = self.folder(tenant)
        try:
            entries, truncated = await asyncio.to_thread(_list, folder, self.max_entries)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            self._waiting[tenant] = 0
            return False
        if truncated and tenant not in self._truncated:
            self._truncated.add(tenant)
            self.events.emit(BatchScanTruncated(
                tenant=tenant, folder=str(folder), limit=self.max_entries,
                reason="the staging folder holds more entries than one scan reads; files past the "
                "limit wait until it holds fewer (remove hidden leftovers)"))
        elif not truncated:
            self._truncated.discard(tenant)
        self._waiting[tenant] = sum(1 for _, st in entries if not stat.S_ISDIR(st.st_mode))
        now = time.monotonic()
        claimed = self._claimed.setdefault(tenant, set())
        present = {name for name, _ in entries}
        for key in [k for k in self._seen if k[0] == tenant and k[1] not in present]:
            del self._seen[key]
        pending = False
        for name, st in sorted(entries, key=lambda e: (e[1].st_mtime_ns, e[0])):
            if name in claimed or stat.S_ISDIR(st.st_mode) or tenant not in self._tenants:
                continue
            if stat.S_ISREG(st.st_mode) and not self._stable(tenant, name, st, now):
                pending = True
                continue
            self._seen.pop((tenant, name), None)
            claimed.add(name)
            try:
                await self._on_file(tenant, folder / name, st)
            except BaseException:
                claimed.discard(name)  # picked up again at the next scan
                raise
        return pending

    def _stable(self, tenant: str, name: str, st: os.stat_result, now: float) -> bool:
        signature = (st.st_size, st.st_mtime_ns)
        seen = self._seen.get((tenant, name))
        if seen is None or seen[0] != signature:
            self._seen[(tenant, name)] = (signature, now)
            return self.stable_after_s <= 0
        return now - seen[1] >= self.stable_after_s


def _list(folder: Path, limit: int) -> tuple[list[tuple[str, os.stat_result]], bool]:
    """``(name, lstat)`` of the entries that are not ignored, reading at most ``limit`` entries;
    and whether the folder held more (blocking I/O: run in a thread)."""
    entries: list[tuple[str, os.stat_result]] = []
    read = 0
    with os.scandir(folder) as it:
        for e in it:
            read += 1
            if read > limit:
                return entries, True
            if is_ignored(e.name):
                continue
            try:
                entries.append((e.name, e.stat(follow_symlinks=False)))
            except FileNotFoundError:  # gone since it was listed
                continue
    return entries, False
