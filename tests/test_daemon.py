"""The daemon: health (healthy and degraded), graceful stop on SIGTERM, no child left behind."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from mysimbdp.config import Settings
from mysimbdp.daemon import Daemon
from mysimbdp.store.mongo import free_port
from tests.batch_support import drop, wait_outcome, write_profile
from tests.conftest import ADMIN_TOKEN
from tests.harness.wait import await_until, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # /health's details are the operators'


async def test_health_ok(start_daemon: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    rd = await start_daemon()

    async def healthy() -> dict[str, Any] | None:
        async with http.get(rd.url + "/health", headers=ADMIN) as resp:
            return await resp.json() if resp.status == 200 else None
    body = await await_until(healthy, 10, "/health to answer 200 (the broker connects in the background)", 0.1)
    assert body["status"] == "ok"
    assert body["components"]["store"]["up"] is True
    assert body["components"]["broker"]["up"] is True


async def test_health_degraded_when_broker_unreachable(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str) -> None:
    """The broker is down: /health says so, and batch ingestion (which needs no broker) goes on."""
    closed = free_port()
    settings = settings_factory(amqp_url=f"amqp://guest:guest@127.0.0.1:{closed}/",
                                extra_apps={"batch_plain": "tests.plugins.batch_apps"})
    write_profile(settings, tenant_id, "batch_plain")
    rd = await start_daemon(settings)
    async with http.get(rd.url + "/health", headers=ADMIN) as resp:
        body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "degraded"
    assert body["down"] == ["broker"]
    assert str(closed) in body["components"]["broker"]["reason"]
    assert body["components"]["store"]["up"] is True
    drop(settings, tenant_id, "rows.csv", "n,name\n" + "".join(f"{i},r{i}\n" for i in range(50)))
    (entry,) = await wait_outcome(mongo, tenant_id, "rows.csv")
    assert entry["state"] == "committed", entry
    assert await mongo[f"tenant_{tenant_id}"]["items"].count_documents({}) == 50


async def test_health_degraded_when_store_unreachable(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        http: aiohttp.ClientSession) -> None:
    """A store that does not answer: the daemon starts anyway, serves /health 503 naming it."""
    closed = free_port()
    rd = await start_daemon(settings_factory(mongo_uri=f"mongodb://127.0.0.1:{closed}/"))
    async with http.get(rd.url + "/health", headers=ADMIN) as resp:
        body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "degraded"
    assert "store" in body["down"]
    assert str(closed) in body["components"]["store"]["reason"]
    # and it stops without waiting on the absent store (a ping stuck selecting a server used to
    # hold the stop until the caller gave up)
    rd.daemon.request_stop("test")
    await asyncio.wait_for(rd.task, 10)


async def test_unknown_route_is_404(start_daemon: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    rd = await start_daemon()
    async with http.get(rd.url + "/no-such-thing") as resp:
        assert resp.status == 404


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_sigterm_exits_0_within_deadline(spawn_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
                                         tmp_path: Path) -> None:
    settings = settings_factory(mongo_uri=None, drain_timeout_s=3.0)
    dp = spawn_daemon(settings)
    children = _children(dp.proc.pid)
    assert children, "the embedded store should run as a child of the daemon"
    t0 = time.monotonic()
    dp.proc.send_signal(signal.SIGTERM)
    code = dp.proc.wait(20)
    elapsed = time.monotonic() - t0
    assert code == 0, dp.log_tail()
    assert elapsed < 3.0 + 5.0
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    log = (settings.var_dir / "log" / "mysimbdp.jsonl").read_text()
    assert '"event":"daemon.stopped"' in log
    # a clean stop closes the broker connection on purpose: no disconnection warning
    assert '"event":"broker.closed"' in log and '"event":"broker.disconnected"' not in log


@pytest.mark.parametrize("runner", ["process", "thread"])
def test_sigterm_with_an_app_stuck_in_a_loop(spawn_daemon: Callable[..., Any],
                                             settings_factory: Callable[..., Settings], runner: str) -> None:
    settings = settings_factory(drain_timeout_s=1.0, extra_apps={"stuck": "tests.plugins.daemon_stuck"})
    tenant = f"stuck-{runner}"  # the session's store keeps the other run's file `loading`
    (settings.tenants_dir / f"{tenant}.toml").write_text(f'id = "{tenant}"\nrunner = "{runner}"\n[batch]\napp = "stuck"\n')
    dp = spawn_daemon(settings)
    folder = settings.staging_dir / tenant
    wait_until(folder.is_dir, 10, f"the staging folder of {tenant}", 0.1, alive=dp.alive)
    (folder / "a.csv").write_text("x\n1\n")
    log = settings.var_dir / "log" / "mysimbdp.jsonl"
    wait_until(lambda: dp.log.first("batch.file.loading"), 20, "the file to start loading", 0.1, alive=dp.alive)
    t0 = time.monotonic()
    dp.proc.send_signal(signal.SIGTERM)
    code = dp.proc.wait(30)
    assert code == 0, dp.log_tail()
    assert time.monotonic() - t0 < 15
    if runner == "thread":  # a thread cannot be stopped: the daemon exits without it
        assert '"daemon.threads_abandoned"' in log.read_text()
    else:  # a worker is killed with the load it serves: nothing is left behind
        assert '"daemon.threads_abandoned"' not in log.read_text()
        pids = [e["pid"] for e in map(json.loads, log.read_text().splitlines())
                if e["event"] == "runner.worker.started"]
        assert pids, "the app ran in a worker"
        time.sleep(0.5)
        assert not [pid for pid in pids if _running(pid)], "no worker outlives the daemon"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---- composition -----------------------------------------------------------------------------

async def test_components_are_handed_what_they_use_never_the_daemon(settings_factory: Callable[..., Settings]) -> None:
    daemon = Daemon(settings_factory())
    for component in daemon.components:
        held = [name for name, value in vars(component).items() if value is daemon]
        assert not held, f"{component.name} holds the daemon as {held}"
    assert daemon.monitor.stream is daemon.stream and daemon.upload.batch is daemon.batch


async def test_one_route_table_of_the_components_handlers(settings_factory: Callable[..., Settings]) -> None:
    daemon = Daemon(settings_factory())
    app = daemon.http.build_app()
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert served == {
        ("GET", "/health"), ("HEAD", "/health"),
        ("GET", "/tenants/{id}/constraints"), ("HEAD", "/tenants/{id}/constraints"),
        ("PUT", "/tenants/{id}/files/{name}"),
        ("GET", "/tenants/{id}/files"), ("HEAD", "/tenants/{id}/files"),
        ("GET", "/tenants/{id}/files/{ledger_id}"), ("HEAD", "/tenants/{id}/files/{ledger_id}"),
        ("POST", "/reports"), ("GET", "/schemas/report.json"), ("HEAD", "/schemas/report.json"),
        ("GET", "/metrics"), ("HEAD", "/metrics"), ("GET", "/tenants/{id}/stats"), ("HEAD", "/tenants/{id}/stats"),
        ("POST", "/tenants/{id}/stream/start"), ("POST", "/tenants/{id}/stream/stop"),
        ("PUT", "/tenants/{id}/stream/consumers"), ("GET", "/tenants/{id}/stream"), ("HEAD", "/tenants/{id}/stream"),
        ("GET", "/instances"), ("HEAD", "/instances"),
        ("GET", "/tenants/{id}/data"), ("HEAD", "/tenants/{id}/data"),
        ("GET", "/tenants/{id}/rejects"), ("HEAD", "/tenants/{id}/rejects"), ("DELETE", "/tenants/{id}/rejects"),
        ("GET", "/tenants/{id}/rejects/{reject_id}"), ("HEAD", "/tenants/{id}/rejects/{reject_id}"),
        ("POST", "/tenants/{id}/rejects/replay"), ("DELETE", "/tenants/{id}/files/{ledger_id}"),
        ("POST", "/tenants/{id}/try"), ("GET", "/tenants/{id}/schema"), ("HEAD", "/tenants/{id}/schema"),
        ("GET", "/console"), ("HEAD", "/console"), ("GET", "/console/static/{name}"), ("HEAD", "/console/static/{name}"),
        ("POST", "/console/session"), ("GET", "/console/session"), ("HEAD", "/console/session"),
        ("DELETE", "/console/session"), ("GET", "/console/events"), ("HEAD", "/console/events"),
    }
    owners = {type(route.handler.__self__).__name__ for route in daemon.http.routes}  # type: ignore[attr-defined]
    assert owners == {"UploadService", "Monitor", "StreamControlRoutes", "InstanceRegistry", "TenantData",
                      "TenantRejects", "FileUndo", "FileTrial", "SchemaHistory", "RejectsReplay", "Console"}
