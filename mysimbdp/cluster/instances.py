"""The registry of daemons sharing one store: ``mysimbdp.instances`` and ``GET /instances``.

Each daemon writes one document, ``_id`` its instance id, and renews its heartbeat every
``[cluster] heartbeat_s`` (with what it is doing: files loading, consumers per tenant). An
instance whose heartbeat is older than ``[cluster] lease_s`` is *gone* (killed, paused, cut
off); one that stopped cleanly says so at once (*stopped*). The live ones are what the
monitor shares a tenant's consumers among.

A second daemon started with the id of one that is alive elsewhere (another host or
process, heartbeat fresh) refuses to start: two daemons with one id would take each other's
files as their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pymongo import ASCENDING
from pymongo.errors import PyMongoError

from mysimbdp.cluster.leases import PlatformDatabase
from mysimbdp.config import ClusterSettings
from mysimbdp.errors import ConfigError
from mysimbdp.events import EventBus
from mysimbdp.events.catalog import (
    ClusterHeartbeatFailed,
    ClusterInstanceGone,
    ClusterInstanceJoined,
)
from mysimbdp.http.server import json_response, require_admin

__all__ = ["InstanceRegistry", "COLLECTION", "Activity"]

COLLECTION = "instances"
#: What a daemon reports with each heartbeat: ``{"loading": [...], "consumers": {tenant: n}}``.
Activity = Callable[[], dict[str, Any]]
_MAX_LISTED = 1000


class InstanceRegistry:
    """Daemon component ``instances``: this daemon's heartbeat, and every instance's view."""

    name = "instances"

    def __init__(self, *, instance_id: str, store: PlatformDatabase, settings: ClusterSettings, version: str,
                 http_port: Callable[[], int], activity: Activity, bus: EventBus) -> None:
        self.id = instance_id
        self.store = store
        self.settings = settings
        self.version = version
        self._http_port = http_port
        self._activity = activity
        self.events = bus.emitter("cluster")
        self.incarnation = secrets.token_hex(8)  # this process, as opposed to an earlier run with the id
        self.started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._beat_ok: bool | None = None
        self._live: dict[str, float] = {}  # instance -> heartbeat, as last read
        self._last_beat = 0.0

    @property
    def collection(self) -> Any:
        """``mysimbdp.instances``."""
        return self.store.platform_db[COLLECTION]

    async def start(self) -> None:
        """Refuse an id alive elsewhere, register, then beat every ``heartbeat_s``. With the
        store down at start none of it waits for it (the daemon's HTTP side opens at once):
        the heartbeat loop registers this instance once the store answers."""
        if getattr(self.store, "up", True):
            with contextlib.suppress(PyMongoError):  # the store may come up later: the heartbeat retries
                await self._refuse_duplicate()
                await self.collection.create_index([("heartbeat_at", ASCENDING)])
            await self.beat()
        self._task = asyncio.create_task(self._beat_loop(), name="cluster.heartbeat")

    async def stop(self) -> None:
        """Stop beating and say at once that this instance stopped (unless the store did not
        answer the last heartbeat: a stop never waits for a store that is away)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._beat_ok is False:
            return  # the store did not answer the last heartbeat: the others see this one gone after the lease
        with contextlib.suppress(PyMongoError, TimeoutError):
            await asyncio.wait_for(self.collection.update_one(
                {"_id": self.id, "incarnation": self.incarnation},
                {"$set": {"state": "stopped", "stopped_at": time.time(), "loading": [], "consumers": {}}}), 5)

    def health(self) -> dict[str, object]:
        """This instance's id, and whether its last heartbeat reached the store."""
        return {"up": self._beat_ok is not False, "id": self.id,
                "last_heartbeat_s_ago": round(time.time() - self._last_beat, 1) if self._last_beat else None}

    async def _refuse_duplicate(self) -> None:
        doc = await self.collection.find_one({"_id": self.id})
        if doc is None or doc.get("state") == "stopped":
            return
        fresh = time.time() - float(doc.get("heartbeat_at") or 0) < self.settings.lease_s
        same_process_gone = doc.get("host") == socket.gethostname() and not _alive(doc.get("pid"))
        if fresh and not same_process_gone:
            raise ConfigError("instance_id", (
                f"instance {self.id!r} is alive on {doc.get('host')!r} (pid {doc.get('pid')}, heartbeat "
                f"{time.time() - float(doc.get('heartbeat_at') or 0):.0f} s ago): give this daemon another "
                "MYSIMBDP_INSTANCE_ID or its own var directory"))

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.renew_every_s)
            await self.beat()

    async def beat(self) -> None:
        """Write this instance's heartbeat now (the daemon calls it once everything is up, so the
        registry shows the HTTP port at once)."""
        now = time.time()
        try:
            activity = self._activity()
        except Exception as exc:  # what it reports is a courtesy: the heartbeat itself matters
            activity = {"error": str(exc)[:200]}
        doc = {"host": socket.gethostname(), "pid": os.getpid(), "version": self.version,
               "incarnation": self.incarnation, "started_at": self.started_at, "heartbeat_at": now,
               "state": "up", "http_port": self._http_port(), **activity}
        try:
            await self.collection.update_one({"_id": self.id}, {"$set": doc}, upsert=True)
            self._last_beat = now
            if self._beat_ok is False or self._beat_ok is None:
                self._beat_ok = True
            await self._notice_changes()
        except PyMongoError as exc:
            if self._beat_ok is not False:
                self.events.emit(ClusterHeartbeatFailed(error=str(exc)[:300], lease_s=self.settings.lease_s))
            self._beat_ok = False

    async def _notice_changes(self) -> None:
        """Log instances that joined or went (heartbeat older than the lease) since the last look."""
        live = {doc["_id"]: doc for doc in await self.live()}
        for instance in sorted(set(live) - set(self._live)):
            if instance != self.id:
                self.events.emit(ClusterInstanceJoined(instance=instance, host=str(live[instance].get("host"))))
        for instance in sorted(set(self._live) - set(live)):
            self.events.emit(ClusterInstanceGone(instance=instance, last_heartbeat_s_ago=round(
                time.time() - self._live[instance], 1)))
        self._live = {i: float(d.get("heartbeat_at") or 0) for i, d in live.items()}

    async def live(self) -> list[dict[str, Any]]:
        """The instances up now (heartbeat within the lease), by id."""
        since = time.time() - self.settings.lease_s
        cursor = self.collection.find({"heartbeat_at": {"$gte": since}}).sort("_id", ASCENDING).limit(_MAX_LISTED)
        return [doc async for doc in cursor if doc.get("state") != "stopped"]

    async def live_ids(self) -> list[str]:
        """The ids of :meth:`live`, this instance's always among them."""
        ids = {str(doc["_id"]) for doc in await self.live()}
        ids.add(self.id)
        return sorted(ids)

    async def listing(self) -> list[dict[str, Any]]:
        """Every registered instance as operators see it, with ``state`` ``up``, ``gone`` or ``stopped``."""
        now = time.time()
        out = []
        async for doc in self.collection.find({}).sort("_id", ASCENDING).limit(_MAX_LISTED):
            beat = float(doc.get("heartbeat_at") or 0)
            state = doc.get("state", "up")
            if state == "up" and now - beat > self.settings.lease_s:
                state = "gone"
            out.append({"id": doc["_id"], "host": doc.get("host"), "pid": doc.get("pid"),
                        "version": doc.get("version"), "state": state, "started_at": _iso(doc.get("started_at")),
                        "last_heartbeat": _iso(beat), "heartbeat_s_ago": round(now - beat, 1),
                        "http_port": doc.get("http_port"), "loading": doc.get("loading") or [],
                        "consumers": doc.get("consumers") or {}, "this": doc["_id"] == self.id})
        return out

    async def last_ingest(self, tenant: str) -> float | None:
        """The latest time (epoch seconds) any instance's heartbeat says the tenant's stream wrote."""
        times = []
        async for doc in self.collection.find({}, {"last_ingest": 1}).limit(_MAX_LISTED):
            seen = doc.get("last_ingest")
            at = seen.get(tenant) if isinstance(seen, dict) else None
            if isinstance(at, int | float) and not isinstance(at, bool):
                times.append(float(at))
        return max(times) if times else None

    async def get_instances(self, request: web.Request) -> web.Response:
        """``GET /instances`` (admin token): every instance, this one marked ``this``."""
        require_admin(request)
        return json_response({"instance": self.id, "lease_s": self.settings.lease_s,
                              "instances": await self.listing()})


def _alive(pid: object) -> bool:
    """Whether ``pid`` is a running daemon of this host (not a process that took its number since)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"mysimbdp" in f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc, or not ours to read: assume it runs
        return True


def _iso(ts: object) -> str | None:
    if not isinstance(ts, int | float) or ts <= 0:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
