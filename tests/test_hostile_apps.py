"""A hostile tenant's app against the whole daemon: it reaches nothing it is not handed and
cannot stop or freeze the platform, while another tenant's load finishes beside it.

The app is ``tests/plugins/hostile.py``; each record names an attack and the app stores what
it got, so the assertions read exactly what an attacker would have learned.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from mysimbdp.apps.runner.confine import landlock_abi
from mysimbdp.config import Settings
from tests.batch_support import drop, wait_outcome, write_profile
from tests.conftest import ADMIN_TOKEN
from tests.harness.wait import await_until
from tests.plugins.stream_support import publish_raw, wait_consumers
from tests.plugins.stream_support import write_profile as write_stream_profile

APPS = {"hostile": "tests.plugins.hostile", "batch_plain": "tests.plugins.batch_apps"}
confined = pytest.mark.skipif(landlock_abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")


def _csv(rows: list[tuple[str, str]]) -> str:
    return "attack,arg\n" + "".join(f"{a},{b}\n" for a, b in rows)


async def _health_ms(http: aiohttp.ClientSession, url: str) -> float:
    t0 = time.monotonic()
    async with http.get(url + "/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200
    return (time.monotonic() - t0) * 1000


async def _good_load(settings: Settings, mongo: AsyncMongoClient[dict[str, Any]], tenant: str) -> None:
    """Another tenant's file, loaded in full beside the attack."""
    drop(settings, tenant, "good.csv", "n,v\n" + "".join(f"{i},x{i}\n" for i in range(500)))
    (entry,) = await wait_outcome(mongo, tenant, "good.csv")
    assert entry["state"] == "committed" and entry["records_written"] == 500
    assert await mongo[f"tenant_{tenant}"]["items"].count_documents({"file": "good.csv"}) == 500


@confined
async def test_a_batch_app_reaches_no_secret_file_store_or_broker(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], mongo_uri: str, tenant_id: str) -> None:
    evil, good = tenant_id + "evil", tenant_id + "good"
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, evil, "hostile", max_error_rate=0.5)
    write_profile(settings, good, "batch_plain")
    rd = await start_daemon(settings)
    # what the attacker aims at: the daemon's log (it names the store), another tenant's folder
    drop(settings, good, "secret.csv", "n,v\n1,the-other-tenants-secret\n")
    (secret,) = await wait_outcome(mongo, good, "secret.csv")
    store = urlparse(mongo_uri)
    attacks = [("env", ""), ("read", "/etc/passwd"), ("read", str(settings.log_file)),
               ("read", secret["archive_path"]), ("listdir", str(settings.staging_dir)),
               ("read", f"/proc/{os.getpid()}/environ"), ("connect", f"{store.hostname}:{store.port}"),
               ("connect", "127.0.0.1:5672"), ("write", str(settings.staging_dir / good / "planted.csv")),
               ("exec", "id"), ("signal_parent", ""), ("exit", ""), ("keyboard", "")]
    drop(settings, evil, "attack.csv", _csv(attacks))
    await asyncio.gather(wait_outcome(mongo, evil, "attack.csv"), _good_load(settings, mongo, good))
    got = {(d["attack"], d["arg"]): d["got"] async for d in mongo[f"tenant_{evil}"]["loot"].find({})}
    rejects = {r["raw"]["attack"]: r["reason"] async for r in mongo[f"tenant_{evil}"]["_rejects"].find({})}
    assert rejects == {"exit": "SystemExit: 3", "keyboard": "KeyboardInterrupt: "}
    assert "MYSIMBDP" not in got[("env", "")] and ADMIN_TOKEN not in got[("env", "")]
    for (attack, arg), value in got.items():
        if attack != "env":
            assert value.startswith("refused:"), (attack, arg, value)
    assert not (settings.staging_dir / good / "planted.csv").exists()
    assert rd.daemon.health()["status"] == "ok"


async def test_an_app_that_kills_its_worker_fails_only_its_file(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str) -> None:
    evil, good = tenant_id + "evil", tenant_id + "good"
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, evil, "hostile")
    write_profile(settings, good, "batch_plain")
    await start_daemon(settings)
    drop(settings, evil, "die.csv", _csv([("none", ""), ("os_exit", "")]))
    await _good_load(settings, mongo, good)
    (entry,) = await wait_outcome(mongo, evil, "die.csv")
    assert entry["state"] == "rejected" and entry["code"] == "app_failed"
    assert "exited with status 4" in entry["reason"]
    assert await mongo[f"tenant_{evil}"]["loot"].count_documents({}) == 0  # rolled back
    drop(settings, evil, "after.csv", _csv([("none", "")]))  # the next file gets a new worker
    (after,) = await wait_outcome(mongo, evil, "after.csv")
    assert after["state"] == "committed" and after["records_written"] == 1


async def test_a_hung_app_is_killed_at_the_time_limit_and_freezes_nothing(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], http: aiohttp.ClientSession, tenant_id: str) -> None:
    evil, good = tenant_id + "evil", tenant_id + "good"
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, evil, "hostile", timeout_s=3.0)
    write_profile(settings, good, "batch_plain")
    rd = await start_daemon(settings)
    for i in range(3):
        drop(settings, evil, f"hang{i}.csv", _csv([("hang", "3600"), ("none", str(i))]))
    await _good_load(settings, mongo, good)
    assert await _health_ms(http, rd.url) < 1000
    for i in range(3):
        (entry,) = await wait_outcome(mongo, evil, f"hang{i}.csv")
        assert entry["state"] == "rejected" and entry["code"] == "timeout"
    await asyncio.sleep(1.0)
    left = [t.name for t in threading.enumerate() if t.name.startswith(f"batch-{evil}")]
    assert left == [], "killed workers leave no file thread behind"
    assert rd.daemon.runners.workers()[evil]["busy"] == 0


@pytest.mark.parametrize("suffix, code", [("-target-hang", "timeout"), ("-target-exit", "app_failed")])
async def test_a_target_hook_that_hangs_or_exits_fails_only_its_file(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], http: aiohttp.ClientSession, tenant_id: str,
        suffix: str, code: str) -> None:
    evil, good = tenant_id[:12] + suffix, tenant_id + "good"
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, evil, "hostile", timeout_s=3.0)
    write_profile(settings, good, "batch_plain")
    rd = await start_daemon(settings)
    drop(settings, evil, "t.csv", _csv([("none", "")]))
    await asyncio.sleep(0.5)
    assert await _health_ms(http, rd.url) < 1000  # the event loop is free while the hook hangs
    await _good_load(settings, mongo, good)
    (entry,) = await wait_outcome(mongo, evil, "t.csv")
    assert entry["state"] == "rejected" and entry["code"] == code
    assert not rd.task.done()


async def test_a_stream_app_that_exits_rejects_only_its_record(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str) -> None:
    settings = settings_factory(extra_apps=APPS)
    write_stream_profile(settings, tenant_id, app="hostile", delivery_limit=2)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    bodies: list[Any] = [{"attack": "none", "i": i} for i in range(20)]
    bodies[5] = {"attack": "exit"}
    bodies[9] = [{"attack": "none", "i": 100}, {"attack": "keyboard"}]
    bodies[12] = {"attack": "os_exit"}
    await publish_raw(amqp_url, tenant_id, bodies, [f"s{i}" for i in range(len(bodies))])
    db = mongo[f"tenant_{tenant_id}"]

    async def done() -> bool:
        return await db["loot"].count_documents({}) == 18 and await db["_rejects"].count_documents({}) == 3
    await await_until(done, what="18 documents and 3 rejects")
    kinds = {r["message_id"]: (r["kind"], r["reason"]) async for r in db["_rejects"].find({})}
    assert kinds["s5"] == ("app_error", "the app failed: SystemExit: 3")
    assert kinds["s12"][0] == "app_failed" and "exited with status 4" in kinds["s12"][1]
    assert kinds["s9"][0] == "app_error"
    assert not rd.task.done() and await rd.daemon.stream.queue_depth(tenant_id) == 0


@confined
async def test_a_stream_app_reaches_nothing(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], mongo_uri: str, amqp_url: str, tenant_id: str) -> None:
    settings = settings_factory(extra_apps=APPS)
    write_stream_profile(settings, tenant_id, app="hostile")
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    store = urlparse(mongo_uri)
    bodies = [{"attack": "env"}, {"attack": "read", "arg": str(settings.log_file)},
              {"attack": "connect", "arg": f"{store.hostname}:{store.port}"},
              {"attack": "connect", "arg": "127.0.0.1:5672"}, {"attack": "signal_parent", "arg": ""}]
    await publish_raw(amqp_url, tenant_id, bodies, [f"a{i}" for i in range(len(bodies))])
    db = mongo[f"tenant_{tenant_id}"]

    async def done() -> bool:
        return await db["loot"].count_documents({}) == len(bodies)
    await await_until(done, what="every attack's answer")
    got = {d["attack"] + d.get("arg", ""): d["got"] async for d in db["loot"].find({})}
    assert "MYSIMBDP" not in got["env"]
    assert all(v.startswith("refused:") for k, v in got.items() if k != "env"), got
    assert not rd.task.done()
