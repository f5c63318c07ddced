"""Several ``mysimbdpd`` sharing one store, one broker and one staging folder, as child processes.

:class:`Cluster` starts one private embedded store (NX-27017, its own port and data) and N
daemons (:class:`~tests.harness.daemon.Daemon`) that share what instances of the platform
share in production: the store URI, the AMQP URL, the staging folder and the tenants'
config folder. Each has what an instance keeps to itself: its var folder (log, archive,
``instance-id``), HTTP port and instance id (``a``, ``b``, ...). Leases are short (3 s by
default) so that a takeover happens within a test's time.

Faults are injected per instance: :meth:`Cluster.kill` (SIGKILL), :meth:`Cluster.stop`
(SIGTERM and the drain), :meth:`Cluster.pause` / :meth:`Cluster.resume` (SIGSTOP/SIGCONT of
the daemon *and* its app workers, which run in sessions of their own: the whole instance
freezes, as a host would) and :meth:`Cluster.restart`. What happened is read from outside:
each instance's JSON log (:attr:`Daemon.log`), its archive, the ledger and ``GET /instances``.
The store is private so that instance ids and the ledger hold only this cluster's entries.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.request
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from pymongo import MongoClient

from mysimbdp.config import ClusterSettings, Settings
from tests.harness.daemon import Daemon
from tests.harness.store import StoreServer

__all__ = ["Cluster", "descendants", "DEFAULT_ADMIN_TOKEN"]

#: Set on the daemons when the template settings carry no admin token (``GET /instances`` needs one).
DEFAULT_ADMIN_TOKEN = "cluster-admin-token"


def descendants(pid: int) -> list[int]:
    """Every living process started (directly or not) by ``pid``, read from ``/proc``: the app
    workers run in sessions of their own, so a signal to the daemon's group misses them."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Cluster:
    """One store and ``n`` daemons ``a``, ``b``, ... sharing it, the broker and the staging folder.

    ``template`` gives the shared settings (staging and config folders, AMQP URL, apps, batch
    and stream sections); its ``mongo_uri`` and ``var_dir`` are replaced. Use as a context
    manager: daemons are resumed if paused, stopped (SIGTERM, then SIGKILL), then the store.
    """

    def __init__(self, base: Path, template: Settings, n: int = 2, *, lease_s: float = 3.0,
                 heartbeat_s: float = 1.0) -> None:
        self.base = base
        self.store = StoreServer(base / "store")
        self.ids = [chr(ord("a") + i) for i in range(n)]
        self.admin_token = template.admin_token or DEFAULT_ADMIN_TOKEN
        self.settings = template.model_copy(update={
            "mongo_uri": self.store.uri, "admin_token": self.admin_token,
            "cluster": ClusterSettings(lease_s=lease_s, heartbeat_s=heartbeat_s)})
        self.daemons = {i: Daemon(self.settings.model_copy(update={"var_dir": base / f"var-{i}", "instance_id": i}))
                        for i in self.ids}
        self.paused: set[str] = set()
        self._client: MongoClient[dict[str, Any]] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start the store, then every daemon (each waits for its ``/health``)."""
        self.settings.staging_dir.mkdir(parents=True, exist_ok=True)
        self.settings.tenants_dir.mkdir(parents=True, exist_ok=True)
        self.store.start()
        for daemon in self.daemons.values():
            daemon.start(timeout)

    def close(self) -> None:
        """Resume paused daemons, stop every daemon, close the client, stop the store."""
        for instance in list(self.paused):
            with contextlib.suppress(Exception):
                self.resume(instance)
        for daemon in self.daemons.values():
            with contextlib.suppress(Exception):
                daemon.stop(20)
        if self._client is not None:
            self._client.close()
        self.store.stop()

    def __getitem__(self, instance: str) -> Daemon:
        return self.daemons[instance]

    # -- faults ----------------------------------------------------------------------------

    def kill(self, instance: str) -> None:
        """SIGKILL one daemon (its app workers die with it)."""
        self.daemons[instance].kill()

    def stop(self, instance: str, timeout: float = 30.0) -> int | None:
        """SIGTERM one daemon and wait for its drain; its exit code."""
        if instance in self.paused:
            self.resume(instance)
        return self.daemons[instance].stop(timeout)

    def start_instance(self, instance: str, timeout: float = 60.0) -> None:
        """Start one daemon (again), with the same settings and instance id."""
        self.daemons[instance].start(timeout)

    def restart(self, instance: str, timeout: float = 60.0) -> int | None:
        """SIGTERM one daemon, wait for it to exit, start it again; the old process's exit code."""
        code = self.stop(instance)
        self.start_instance(instance, timeout)
        return code

    def pause(self, instance: str) -> None:
        """SIGSTOP the daemon and then its app workers: the instance freezes as a whole (a long
        GC pause, a suspended VM), holding whatever claims it had."""
        pid = self.daemons[instance].pid
        _signal(pid, signal.SIGSTOP)
        for child in descendants(pid):
            _signal(child, signal.SIGSTOP)
        self.paused.add(instance)

    def resume(self, instance: str) -> None:
        """SIGCONT the app workers, then the daemon."""
        pid = self.daemons[instance].pid
        for child in descendants(pid):
            _signal(child, signal.SIGCONT)
        _signal(pid, signal.SIGCONT)
        self.paused.discard(instance)

    # -- what can be read from outside -----------------------------------------------------

    @property
    def client(self) -> MongoClient[dict[str, Any]]:
        """A client of the cluster's store (closed with the cluster)."""
        if self._client is None:
            self._client = MongoClient(self.store.uri)
        return self._client

    @property
    def files(self) -> Any:
        """The ledger, ``mysimbdp.files``."""
        return self.client["mysimbdp"]["files"]

    def ledger(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's ledger entries."""
        return list(self.files.find({"tenant": tenant}))

    def records(self, tenant: str, collection: str = "records") -> Any:
        """A tenant's collection in its database ``tenant_<id>``."""
        return self.client[f"tenant_{tenant}"][collection]

    def events(self, event: str | tuple[str, ...], **fields: Any) -> list[tuple[str, dict[str, Any]]]:
        """Every event so far named ``event`` with these field values, as (instance, event)."""
        return [(i, e) for i, d in self.daemons.items() for e in d.log.find(event, **fields)]

    def committed_counts(self, **fields: Any) -> dict[str, int]:
        """``batch.file.committed`` events per instance (every instance listed, 0 included)."""
        return {i: len(d.log.find("batch.file.committed", **fields)) for i, d in self.daemons.items()}

    def archived(self, tenant: str, folder: str = "done") -> list[Path]:
        """The tenant's archived files (not reason files) across every instance's var folder."""
        found: list[Path] = []
        for daemon in self.daemons.values():
            where = daemon.settings.archive_dir / tenant / folder
            if where.is_dir():
                found.extend(p for p in where.iterdir() if p.is_file() and not p.name.endswith(".reason.json"))
        return sorted(found)

    def archive_copies(self, tenant: str) -> Counter[str]:
        """How many archive copies each file name of the tenant has, across instances. An
        archived name may carry a ledger id prefix (``<id8>-name``) when the name was taken:
        such copies are counted under the ledger entry's name when the ledger says so."""
        by_path = {str(e.get("archive_path")): str(e["name"]) for e in self.ledger(tenant) if e.get("archive_path")}
        return Counter(by_path.get(str(p), p.name) for p in self.archived(tenant))

    def instances(self, via: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """``GET /instances`` of one running daemon (the first running one by default)."""
        daemon = self.daemons[via] if via is not None else next(
            d for i, d in self.daemons.items() if d.proc is not None and i not in self.paused)
        request = urllib.request.Request(daemon.url + "/instances",
                                         headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        return body

    def crashes(self) -> int:
        """Daemon processes found dead that nobody killed (checked now, for each instance)."""
        for instance, daemon in self.daemons.items():
            if instance not in self.paused:
                daemon.alive()
        return sum(d.crashes for d in self.daemons.values())

    def where(self) -> str:
        """Where to look when something failed: each instance's log file."""
        return "; see " + ", ".join(f"{i}: {d.settings.log_file}" for i, d in self.daemons.items())
