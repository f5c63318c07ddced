"""The registry of daemons sharing a store: heartbeats, who is up, gone or stopped, ``GET /instances``
and ``mysimbdp instances``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mysimbdp.cluster.instances import InstanceRegistry
from mysimbdp.config import ClusterSettings
from mysimbdp.errors import ConfigError
from mysimbdp.events import EventBus
from mysimbdp.store.mongo import Store
from tests.conftest import ADMIN_TOKEN


@pytest.fixture
async def store(mongo_uri: str, tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(mongo_uri, tmp_path)
    await s.start()
    yield s
    await s.stop()


def registry(store: Store, instance: str, events: list[str], lease_s: float = 1.0,
             activity: dict[str, Any] | None = None) -> InstanceRegistry:
    bus = EventBus(lambda *written: None)
    bus.subscribe(lambda event: events.append(f"{event.NAME}:{event.fields().get('instance')}"), "test")
    return InstanceRegistry(instance_id=instance, store=store, settings=ClusterSettings(lease_s=lease_s, heartbeat_s=0.2),
                            version="9.9", http_port=lambda: 1234, activity=lambda: activity or {}, bus=bus)


async def test_instances_are_up_then_gone_or_stopped(store: Store) -> None:
    a_id, b_id = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    seen: list[str] = []
    a = registry(store, a_id, seen, activity={"loading": ["t/x.csv"], "consumers": {"t": 2}})
    b = registry(store, b_id, [])
    await a.start()
    await b.start()
    try:
        assert {a_id, b_id} <= set(await a.live_ids())
        listing = {i["id"]: i for i in await a.listing()}
        assert listing[a_id]["state"] == "up" and listing[a_id]["this"] and listing[a_id]["version"] == "9.9"
        assert listing[a_id]["loading"] == ["t/x.csv"] and listing[a_id]["consumers"] == {"t": 2}
        assert listing[b_id]["state"] == "up" and not listing[b_id]["this"]
        await asyncio.sleep(0.5)
        assert f"cluster.instance.joined:{b_id}" in seen
        # b stops beating without saying so (a SIGKILL, a pause): gone once its heartbeat is older than the lease
        assert b._task is not None
        b._task.cancel()
        await asyncio.sleep(1.5)
        assert b_id not in await a.live_ids()
        assert {i["id"]: i["state"] for i in await a.listing()}[b_id] == "gone"
        assert f"cluster.instance.gone:{b_id}" in seen
    finally:
        await b.stop()
        await a.stop()
    states = {i["id"]: i["state"] for i in await a.listing()}
    assert states[a_id] == states[b_id] == "stopped"  # a clean stop says so at once


async def test_an_id_alive_elsewhere_is_refused(store: Store) -> None:
    instance = f"dup-{uuid.uuid4().hex[:6]}"
    await store.platform_db["instances"].insert_one(
        {"_id": instance, "host": "another-host", "pid": 4242, "state": "up", "heartbeat_at": 1e12})
    with pytest.raises(ConfigError, match="alive on 'another-host'"):
        await registry(store, instance, [], lease_s=30).start()


async def test_an_id_left_by_a_dead_process_of_this_host_is_taken(store: Store) -> None:
    """A daemon restarted at once after a SIGKILL: its own earlier heartbeat is fresh, its process gone."""
    import socket
    instance = f"restart-{uuid.uuid4().hex[:6]}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    await store.platform_db["instances"].insert_one(
        {"_id": instance, "host": socket.gethostname(), "pid": int(dead.stdout), "state": "up",
         "heartbeat_at": 1e12})
    r = registry(store, instance, [], lease_s=30)
    await r.start()
    await r.stop()


async def test_get_instances_needs_the_admin_token(start_daemon: Callable[..., Any],
                                                   http: aiohttp.ClientSession) -> None:
    d = await start_daemon()
    async with http.get(f"{d.url}/instances") as resp:
        assert resp.status == 401
    async with http.get(f"{d.url}/instances", headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 403
    for _ in range(50):  # the heartbeat with the HTTP port follows daemon.started by a moment
        async with http.get(f"{d.url}/instances", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 200
            body = await resp.json()
        mine = [i for i in body["instances"] if i["id"] == d.daemon.instance_id]
        if mine and mine[0]["http_port"]:
            break
        await asyncio.sleep(0.1)
    assert body["instance"] == d.daemon.instance_id
    assert mine and mine[0]["state"] == "up" and mine[0]["this"] and mine[0]["http_port"] == d.daemon.http.port
    health = await (await http.get(f"{d.url}/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json()
    assert health["instance"] == d.daemon.instance_id

    # the command, as an operator runs it
    env = {**os.environ, "MYSIMBDP_ADMIN_TOKEN": ADMIN_TOKEN}
    out = await asyncio.to_thread(subprocess.run, [str(Path(sys.executable).with_name("mysimbdp")), "instances", "--url", d.url],
                                  capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:4] == ["ID", "HOST", "VERSION", "STATE"]
    assert any(r.startswith(f"{d.daemon.instance_id}*") and " up " in r for r in rows), out.stdout


async def test_every_line_a_daemon_logs_says_which_instance_wrote_it(start_daemon: Callable[..., Any],
                                                                     settings_factory: Callable[..., Any]) -> None:
    settings = settings_factory(instance_id="node-7")
    d = await start_daemon(settings)
    assert d.daemon.instance_id == "node-7"
    d.daemon.request_stop("test")
    await asyncio.wait_for(d.task, 30)
    lines = [json.loads(line) for line in settings.log_file.read_text().splitlines()]
    events = [e for e in lines if e.get("event", "").split(".")[0] in {"daemon", "store", "broker", "batch",
                                                                     "stream", "monitor", "cluster", "http"}]
    assert {e["event"] for e in events} >= {"daemon.started", "daemon.stopped", "store.connected"}
    assert {e.get("instance_id") for e in events} == {"node-7"}, [e for e in events if e.get("instance_id") != "node-7"]
