"""The stream manager: start, stop, scale and status through HTTP, the CLI and the Python API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from structlog.testing import capture_logs

from mysimbdp.cli import main
from mysimbdp.config import Settings
from mysimbdp.http.tokens import hash_token
from mysimbdp.stream.manager import OutOfBounds, UnknownStream
from tests.conftest import ADMIN_TOKEN
from tests.harness.wait import await_until
from tests.plugins.stream_support import (
    ECHO_APPS,
    publish_raw,
    wait_consumers,
    wait_stream_ready,
    write_profile,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_start_stop_scale_and_status_over_http(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        http: aiohttp.ClientSession, tenant_id: str) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, autostart=False, min_consumers=1, max_consumers=3)
    rd = await start_daemon(settings)
    base = f"{rd.url}/tenants/{tenant_id}/stream"
    await wait_stream_ready(rd.daemon, tenant_id)
    async with http.get(base, headers=ADMIN) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert body["state"] == "stopped" and body["consumers"] == 0
    assert body["min_consumers"] == 1 and body["max_consumers"] == 3

    with capture_logs() as events:
        async with http.post(base + "/start", headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["to"] == 1
        async with http.put(base + "/consumers", headers=ADMIN, json={"count": 3}) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        # the answer adds the cluster-wide total and this instance's share (all of it, alone)
        assert answer == {"tenant": tenant_id, "from": 1, "to": 3, "total": 3, "share": 3,
                          "decided_by": rd.daemon.instance_id}
        async with http.get(base, headers=ADMIN) as resp:
            status = await resp.json()
        assert status["state"] == "running" and status["consumers"] == 3
        assert status["instances"] == [f"{tenant_id}-c1", f"{tenant_id}-c2", f"{tenant_id}-c3"]
        assert status["queue_depth"] == 0 and "committed_per_s" in status["rates"]
        async with http.put(base + "/consumers", headers=ADMIN, json={"count": 4}) as resp:
            err = await resp.json()
        assert resp.status == 400 and err["code"] == "out_of_bounds" and "[1, 3]" in err["message"]
        async with http.put(base + "/consumers", headers=ADMIN, json={"count": "two"}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == "bad_request"
        async with http.post(base + "/stop", headers=ADMIN) as resp:
            assert resp.status == 200 and (await resp.json())["from"] == 3
    assert rd.daemon.stream.consumer_count(tenant_id) == 0
    changes = [(e["from"], e["to"], e["reason"]) for e in events if e["event"] == "stream.consumers.changed"]
    assert changes == [(0, 1, "operator: start"), (1, 3, "operator: scale"), (3, 0, "operator: stop")]


async def test_a_tenant_controls_its_own_stream_within_its_bounds(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        http: aiohttp.ClientSession, tenant_id: str) -> None:
    """The tenant's token starts, scales (within [min, max]) and stops its stream; another
    tenant's token is refused; every change says who made it; the tenant is not shown the
    platform's instance ids."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    path = write_profile(settings, tenant_id, autostart=False, min_consumers=1, max_consumers=2)
    other = f"{tenant_id}o"
    other_path = write_profile(settings, other, autostart=False)
    for profile, token in ((path, f"tok-{tenant_id}"), (other_path, f"tok-{other}")):
        profile.write_text(f'token_sha256 = "{hash_token(token)}"\n' + profile.read_text())
    mine, theirs = ({"Authorization": f"Bearer tok-{t}"} for t in (tenant_id, other))
    rd = await start_daemon(settings)
    base = f"{rd.url}/tenants/{tenant_id}/stream"
    await wait_stream_ready(rd.daemon, tenant_id)
    async with http.post(base + "/start") as resp:
        assert resp.status == 401
    async with http.post(base + "/start", headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401
    for method, url in (("POST", base + "/start"), ("PUT", base + "/consumers"), ("GET", base)):
        async with http.request(method, url, headers=theirs, json={"count": 1}) as resp:
            assert resp.status == 403, (method, url)
    assert rd.daemon.stream.consumer_count(tenant_id) == 0
    with capture_logs() as events:
        async with http.post(base + "/start", headers=mine) as resp:
            assert resp.status == 200 and (await resp.json())["to"] == 1
        async with http.put(base + "/consumers", headers=mine, json={"count": 3}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == "out_of_bounds"
        async with http.put(base + "/consumers", headers=mine, json={"count": 2}) as resp:
            answer = await resp.json()
        assert resp.status == 200 and answer == {"tenant": tenant_id, "from": 1, "to": 2, "total": 2}
        async with http.get(base, headers=mine) as resp:
            status = await resp.json()
        assert status["consumers"] == 2 and rd.daemon.instance_id not in json.dumps(status)
        async with http.post(base + "/stop", headers=ADMIN) as resp:  # the admin's token still works
            assert resp.status == 200 and "decided_by" in await resp.json()
    changes = [(e["from"], e["to"], e["reason"]) for e in events if e["event"] == "stream.consumers.changed"]
    assert changes == [(0, 1, "tenant: start"), (1, 2, "tenant: scale"), (2, 0, "operator: stop")]
    async with http.get(f"{rd.url}/tenants/nosuch/stream", headers=ADMIN) as resp:
        assert resp.status == 404 and (await resp.json())["code"] == "unknown_tenant"


async def test_python_api_bounds_and_unknown_tenant(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, min_consumers=2, max_consumers=3)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 2)
    manager = rd.daemon.stream
    with pytest.raises(ValueError, match=r"outside the profile's bounds \[2, 3\]"):
        await manager.scale(tenant_id, 1, "monitor: idle")
    with pytest.raises(OutOfBounds):
        await manager.scale(tenant_id, 9, "monitor: backlog")
    with pytest.raises(UnknownStream, match="no tenant"):
        await manager.scale("nosuch", 1, "test")
    assert await manager.scale(tenant_id, 3, "monitor: backlog") == (2, 3)
    assert manager.consumer_count(tenant_id) == 3


async def test_cli_drives_the_daemon(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
                                     tenant_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, autostart=False, max_consumers=2)
    rd = await start_daemon(settings)
    await wait_stream_ready(rd.daemon, tenant_id)
    common = ["--url", rd.url, "--admin-token", ADMIN_TOKEN]

    def cli(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(["stream", *argv, *common])
        out, err = capsys.readouterr()
        return int(info.value.code or 0), out, err

    # The CLI is synchronous: run it in a thread so this loop keeps serving the daemon.
    code, out, _ = await asyncio.to_thread(cli, "start", tenant_id)
    assert code == 0 and "0 -> 1" in out
    code, out, _ = await asyncio.to_thread(cli, "scale", tenant_id, "2")
    assert code == 0 and "1 -> 2" in out
    code, _, err = await asyncio.to_thread(cli, "scale", tenant_id, "5")
    assert code == 1 and "outside the profile's bounds" in err and "HTTP 400" in err
    code, out, _ = await asyncio.to_thread(cli, "status", tenant_id)
    assert code == 0 and '"consumers": 2' in out and '"state": "running"' in out
    code, out, _ = await asyncio.to_thread(cli, "stop", tenant_id)
    assert code == 0 and "2 -> 0" in out
    assert rd.daemon.stream.consumer_count(tenant_id) == 0


async def test_cli_acts_as_the_tenant_with_its_token_file(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    path = write_profile(settings, tenant_id, autostart=False, max_consumers=2)
    path.write_text(f'token_sha256 = "{hash_token("tok")}"\n' + path.read_text())
    token_file = tmp_path / "tenant.token"
    token_file.write_text("tok\n")
    token_file.chmod(0o600)
    rd = await start_daemon(settings)
    await wait_stream_ready(rd.daemon, tenant_id)

    def cli(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(["stream", *argv, "--url", rd.url, "--token-file", str(token_file)])
        out, err = capsys.readouterr()
        return int(info.value.code or 0), out, err

    code, out, _ = await asyncio.to_thread(cli, "start", tenant_id)
    assert code == 0 and "0 -> 1" in out and "all instances together: 1" in out
    code, _, err = await asyncio.to_thread(cli, "scale", tenant_id, "3")
    assert code == 1 and "HTTP 400" in err
    code, _, err = await asyncio.to_thread(cli, "stop", f"{tenant_id}-other")
    assert code == 1 and ("HTTP 403" in err or "HTTP 401" in err)
    assert rd.daemon.stream.consumer_count(tenant_id) == 1


def test_cli_says_when_the_daemon_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stream", "status", "weather", "--url", "http://127.0.0.1:9", "--admin-token", "x"])
    assert info.value.code == 1
    assert "cannot reach the daemon" in capsys.readouterr().err


async def test_offboarding_stops_consumers_and_keeps_the_queue(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    path = write_profile(settings, tenant_id)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    path.unlink()
    await rd.daemon.tenants.reload()
    assert rd.daemon.stream.consumer_count(tenant_id) == 0
    write_profile(settings, tenant_id)  # back: the queue is still there and consumers start again
    await rd.daemon.tenants.reload()
    await wait_consumers(rd.daemon, tenant_id, 1)
    assert await rd.daemon.stream.queue_depth(tenant_id) == 0


async def test_drain_flushes_and_acknowledges_buffered_messages(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: Any, amqp_url: str, tenant_id: str) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    # Batches would wait 30 s: only the drain makes the consumer flush.
    write_profile(settings, tenant_id, batch_max_messages=1000, batch_max_wait_ms=30_000)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    await publish_raw(amqp_url, tenant_id, [{"n": i} for i in range(10)], [f"d{i}" for i in range(10)])

    async def buffered() -> bool:
        return bool((await rd.daemon.stream.status(tenant_id))["buffered"] == 10)
    await await_until(buffered, what="10 buffered messages")
    assert await mongo[f"tenant_{tenant_id}"]["events"].count_documents({}) == 0
    rd.daemon.request_stop("test: drain")
    await asyncio.wait_for(rd.task, 20)
    assert await mongo[f"tenant_{tenant_id}"]["events"].count_documents({}) == 10
    connection = await aio_pika.connect(amqp_url)
    try:
        queue = await (await connection.channel()).declare_queue(f"mysimbdp.{tenant_id}", passive=True)
        assert queue.declaration_result.message_count == 0  # acknowledged, not returned to the queue
    finally:
        await connection.close()


async def test_a_tenant_whose_stream_app_is_missing_fails_alone(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        http: aiohttp.ClientSession, tenant_id: str) -> None:
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id + "x", app="no_such_app")
    write_profile(settings, tenant_id)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    base = f"{rd.url}/tenants/{tenant_id}x/stream"
    async with http.get(base, headers=ADMIN) as resp:
        status = await resp.json()
    assert status["state"] == "failed" and "no_such_app" in status["error"]
    async with http.post(base + "/start", headers=ADMIN) as resp:
        err = await resp.json()
    assert resp.status == 409 and err["code"] == "not_running" and "mysimbdp apps" in err["message"]
    health = rd.daemon.stream.health()
    assert health["up"] is True and tenant_id + "x" in health["errors"]
