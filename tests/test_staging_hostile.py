"""A hostile tenant's staging folder (issue 14, attacks 1-6 and the folder part of 16): the
name of a staged file is opened once; what the tenant does to the name afterwards changes
nothing that is loaded, hashed or archived, and never blocks or slows the daemon."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from mysimbdp.config import Settings
from tests.batch_support import drop, wait_outcome, write_profile
from tests.harness.wait import await_until

APPS = {"batch_plain": "tests.plugins.batch_apps", "batch_slow": "tests.plugins.batch_slow"}
SECRET = 424242  # the value of every row of files the attacker must not load


def _csv(rows: int, start: int = 0, width: int = 0) -> str:
    pad = "x" * width
    return "n,name\n" + "".join(f"{i},{pad}row{i}\n" for i in range(start, start + rows))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _state(mongo: AsyncMongoClient[dict[str, Any]], tenant: str, name: str) -> str | None:
    entry = await mongo["mysimbdp"]["files"].find_one({"tenant": tenant, "name": name}, sort=[("staged_at", 1)])
    return entry["state"] if entry else None


async def _busy_then_staged(settings: Settings, mongo: AsyncMongoClient[dict[str, Any]], tenant: str,
                            content: str, state: str = "staged") -> Path:
    """Keep the tenant's one slot busy with a slow file, drop ``x.csv`` and wait until the ledger
    says ``state`` for it: the moment the name is attacked."""
    drop(settings, tenant, "busy.csv", _csv(1500, start=10_000))
    await await_until(lambda: _is(mongo, tenant, "busy.csv", "loading"), what="busy.csv loading")
    path = drop(settings, tenant, "x.csv", content)
    await await_until(lambda: _is(mongo, tenant, "x.csv", state), what=f"x.csv {state}")
    return path


async def _is(mongo: AsyncMongoClient[dict[str, Any]], tenant: str, name: str, state: str) -> bool:
    return await _state(mongo, tenant, name) == state


async def _entries(mongo: AsyncMongoClient[dict[str, Any]], tenant: str, name: str) -> list[dict[str, Any]]:
    return [d async for d in mongo["mysimbdp"]["files"].find({"tenant": tenant, "name": name}).sort("staged_at", 1)]


def _slow_profile(settings: Settings, tenant: str) -> None:
    write_profile(settings, tenant, "batch_slow", max_concurrent_files=1)


async def test_symlink_swapped_in_after_staged_is_never_followed(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    """Attack 1: ``ln -s secret .l && mv -T .l x.csv`` once x.csv is staged."""
    settings = settings_factory(extra_apps=APPS)
    _slow_profile(settings, tenant_id)
    secret = tmp_path / "secret.csv"
    secret.write_text("n\n" + f"{SECRET}\n" * 50)
    await start_daemon(settings)
    original = _csv(200)
    path = await _busy_then_staged(settings, mongo, tenant_id, original)
    link = path.with_name(".l")
    os.symlink(secret, link)
    os.replace(link, path)  # atomic, as mv -T

    [first, *_] = await wait_outcome(mongo, tenant_id, "x.csv", count=2)
    entries = await _entries(mongo, tenant_id, "x.csv")
    assert [e["state"] for e in entries] == ["committed", "rejected"], entries
    loaded, link_entry = entries
    records = mongo[f"tenant_{tenant_id}"]["records"]
    assert await records.count_documents({"n": SECRET}) == 0, "the secret file was loaded"
    assert await records.count_documents({"n": {"$lt": 200}}) == 200
    archived = Path(loaded["archive_path"])
    assert archived.read_text() == original and _sha(archived) == loaded["sha256"]
    assert link_entry["code"] == "not_regular" and Path(link_entry["archive_path"]).is_symlink()
    assert secret.read_text() == "n\n" + f"{SECRET}\n" * 50


async def test_fifo_swapped_in_after_staged_never_blocks(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], http: aiohttp.ClientSession) -> None:
    """Attack 2: a FIFO renamed over a staged file: nothing waits for a writer, /health answers."""
    settings = settings_factory(extra_apps=APPS)
    _slow_profile(settings, tenant_id)
    daemon = await start_daemon(settings)
    original = _csv(200)
    path = await _busy_then_staged(settings, mongo, tenant_id, original)
    fifo = path.with_name(".f")
    os.mkfifo(fifo)
    os.replace(fifo, path)

    # a watchdog: if the daemon ever blocks opening the FIFO (the event loop with it), give it a
    # writer after a while so that the test fails instead of hanging
    unblocked = threading.Event()
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(15):
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        unblocked.set()
        os.write(fd, f"n\n{SECRET}\n".encode())
        os.close(fd)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        worst = 0.0
        deadline = time.monotonic() + 60
        while len([e for e in await _entries(mongo, tenant_id, "x.csv")
                   if e["state"] in ("committed", "rejected")]) < 2:
            assert time.monotonic() < deadline, await _entries(mongo, tenant_id, "x.csv")
            t0 = time.monotonic()
            async with http.get(f"{daemon.url}/health", timeout=aiohttp.ClientTimeout(total=30)) as resp:
                assert resp.status == 200
            worst = max(worst, time.monotonic() - t0)
            await asyncio.sleep(0.1)
    finally:
        done.set()
        thread.join()
    assert not unblocked.is_set(), "the daemon waited for a writer of the FIFO"
    assert worst < 2.0, f"/health took {worst:.2f}s"
    await wait_outcome(mongo, tenant_id, "x.csv", count=2)
    loaded, fifo_entry = await _entries(mongo, tenant_id, "x.csv")
    assert loaded["state"] == "committed" and Path(loaded["archive_path"]).read_text() == original
    assert fifo_entry["code"] == "not_regular"
    assert await mongo[f"tenant_{tenant_id}"]["records"].count_documents({"n": SECRET}) == 0


async def test_hard_link_to_another_tenants_archive_is_refused(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """Attack 3: a hard link in the attacker's folder to the victim's archived file."""
    settings = settings_factory(extra_apps=APPS)
    victim = f"{tenant_id}v"
    write_profile(settings, tenant_id, "batch_plain")
    write_profile(settings, victim, "batch_plain")
    await start_daemon(settings)
    drop(settings, victim, "secret.csv", "n,name\n" + "".join(f"{SECRET},v{i}\n" for i in range(30)))
    [done] = await wait_outcome(mongo, victim, "secret.csv")
    assert done["state"] == "committed"
    archived = Path(done["archive_path"])
    assert archived.stat().st_nlink == 1, "the archive holds the file under one name"
    os.link(archived, settings.staging_dir / tenant_id / "x.csv")

    [entry] = await wait_outcome(mongo, tenant_id, "x.csv")
    assert (entry["state"], entry["code"]) == ("rejected", "hard_link"), entry
    assert await mongo[f"tenant_{tenant_id}"]["items"].count_documents({}) == 0
    assert archived.read_text().count(str(SECRET)) == 30, "the victim's archive is untouched"
    assert archived.stat().st_nlink == 1, "no name of the victim's file is left in the attacker's archive"
    assert not (settings.staging_dir / tenant_id / "x.csv").exists()


async def test_file_renamed_over_a_loading_file_is_loaded_later_as_a_new_file(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """Attack 4: the archive holds what was loaded; the file renamed over it loads after it."""
    settings = settings_factory(extra_apps=APPS)
    _slow_profile(settings, tenant_id)
    await start_daemon(settings)
    old, new = _csv(1000), _csv(50, start=5000)
    path = await _busy_then_staged(settings, mongo, tenant_id, old, state="loading")
    part = path.with_name(".x.csv.tmp")
    part.write_text(new)
    os.replace(part, path)

    await wait_outcome(mongo, tenant_id, "x.csv", count=2, timeout=90)
    first, second = await _entries(mongo, tenant_id, "x.csv")
    assert first["state"] == second["state"] == "committed", (first, second)
    assert Path(first["archive_path"]).read_text() == old
    assert _sha(Path(first["archive_path"])) == first["sha256"] == hashlib.sha256(old.encode()).hexdigest()
    assert Path(second["archive_path"]).read_text() == new and second["sha256"] == _sha(Path(second["archive_path"]))
    records = mongo[f"tenant_{tenant_id}"]["records"]
    assert await records.count_documents({"n": {"$lt": 1000}}) == 1000
    assert await records.count_documents({"n": {"$gte": 5000, "$lt": 5050}}) == 50


async def test_file_written_to_while_loading_is_rejected_as_changed(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """The tenant keeps writing into a file the platform loads: rejected, nothing left behind."""
    settings = settings_factory(extra_apps=APPS)
    _slow_profile(settings, tenant_id)
    await start_daemon(settings)
    path = await _busy_then_staged(settings, mongo, tenant_id, _csv(1000), state="loading")
    with open(path, "a") as f:
        f.write(f"{SECRET},appended\n")

    [entry] = await wait_outcome(mongo, tenant_id, "x.csv", timeout=90)
    assert (entry["state"], entry["code"]) == ("rejected", "changed"), entry
    assert await mongo[f"tenant_{tenant_id}"]["records"].count_documents({"n": {"$lt": 1000}}) == 0


async def test_tenant_file_named_like_a_reason_file_is_never_overwritten(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """Attack 5: ``c.csv.reason.json`` from the tenant, then a rejected ``c.csv``."""
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, tenant_id, "batch_plain")
    await start_daemon(settings)
    forged = '{"code": "forged", "message": "the tenant wrote this"}'
    drop(settings, tenant_id, "c.csv.reason.json", forged)
    [tenant_file] = await wait_outcome(mongo, tenant_id, "c.csv.reason.json")
    assert tenant_file["code"] == "format"
    drop(settings, tenant_id, "c.csv", "")  # empty: rejected (content)
    [rejected] = await wait_outcome(mongo, tenant_id, "c.csv")
    assert rejected["code"] == "content"

    kept = Path(tenant_file["archive_path"])
    assert kept.read_text() == forged, "the tenant's file was overwritten"
    reason = Path(rejected["archive_path"] + ".reason.json")
    assert reason != kept and '"content"' in reason.read_text()
    # the pairing rule: X.reason.json beside X is always the platform's reason file of X
    folder = kept.parent
    for p in folder.iterdir():
        if p.name.endswith(".reason.json") and (folder / p.name.removesuffix(".reason.json")).exists():
            assert '"ledger_id"' in p.read_text(), p


async def test_gzip_counts_decompressed_bytes_against_the_quota(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """Attack 6: a small .csv.gz that inflates far past the quota is cut and rolled back."""
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, tenant_id, "batch_plain", formats=["csv", "csv.gz"], max_file_bytes=50_000_000,
                  storage_quota_bytes=200_000)
    daemon = await start_daemon(settings)
    small = _csv(100, width=400).encode()  # ~41 kB of content, ~1 kB compressed
    drop(settings, tenant_id, "small.csv.gz", gzip.compress(small))
    [ok] = await wait_outcome(mongo, tenant_id, "small.csv.gz")
    assert ok["state"] == "committed" and ok["content_bytes"] == len(small)
    assert await daemon.daemon.ledger.committed_bytes(tenant_id) == len(small)

    bomb = gzip.compress(_csv(3000, start=1000, width=1000).encode(), 9)  # ~3 MB of content
    assert len(bomb) < 200_000 - len(small)  # admitted on its compressed size
    drop(settings, tenant_id, "bomb.csv.gz", bomb)
    [entry] = await wait_outcome(mongo, tenant_id, "bomb.csv.gz")
    assert (entry["state"], entry["code"]) == ("rejected", "over_quota"), entry
    items = mongo[f"tenant_{tenant_id}"]["items"]
    assert await items.count_documents({}) == 100, "the bomb's documents were rolled back"
    assert await daemon.daemon.ledger.committed_bytes(tenant_id) == len(small)


def _junk(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        os.symlink("junk", folder / f".j{i}")  # the cheapest entries to make


async def test_a_folder_full_of_hidden_files_never_walked_on_the_event_loop(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: 100k hidden files in one tenant's folder: /health and the constraints never walk it,
    the scans list it in a thread and read a bounded part of it, another tenant loads as usual."""
    settings = settings_factory(extra_apps=APPS)
    junk, other = tenant_id, f"{tenant_id}o"
    write_profile(settings, junk, "batch_plain")
    write_profile(settings, other, "batch_plain")
    folder = settings.staging_dir / junk
    loop_thread = threading.get_ident()
    walked_on_loop: list[str] = []
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if threading.get_ident() == loop_thread and Path(path) == folder:
            walked_on_loop.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    daemon = await start_daemon(settings)  # (it configures logging: capture after)
    with capture_logs() as logs:
        await asyncio.to_thread(_junk, folder, 100_000)
        drop(settings, other, "ok.csv", _csv(50))
        started = time.monotonic()
        worst = 0.0
        for _ in range(20):  # the junk tenant keeps its folder changing: every change wakes the scanner
            (folder / f".k{_}").touch()
            t0 = time.monotonic()
            async with http.get(f"{daemon.url}/health") as resp:
                assert resp.status == 200
            async with http.get(f"{daemon.url}/tenants/{junk}/constraints",
                                headers={"Authorization": "Bearer test-admin-token"}) as resp:
                assert resp.status == 200 and (await resp.json())["usage"]["staged_files"] == 0
            worst = max(worst, time.monotonic() - t0)
            await asyncio.sleep(0.05)
        [entry] = await wait_outcome(mongo, other, "ok.csv")
    assert entry["state"] == "committed" and time.monotonic() - started < 30
    assert walked_on_loop == [], "the staging folder was walked on the event loop"
    truncated = [e for e in logs if e["event"] == "batch.scan.truncated"]
    assert len(truncated) == 1 and truncated[0]["tenant"] == junk, [e["event"] for e in logs]
    assert worst < 1.0, f"/health and /constraints took {worst:.2f}s"
