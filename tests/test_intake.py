"""The upload door: every status code through a real HTTP client against a running daemon,
streaming into staging, nothing left behind by refused or interrupted uploads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs
from yarl import URL

from mysimbdp.apps.plugins import get_plugin_manager
from mysimbdp.batch.intake import (
    MAX_UPLOAD_NAME_BYTES,
    instance_tag,
    part_path,
    remove_stale_parts,
    upload_name_of,
)
from mysimbdp.batch.ledger import FileState
from mysimbdp.config import Settings
from mysimbdp.events import EventBus
from mysimbdp.http.tokens import hash_token
from mysimbdp.logs import write_event
from tests.harness.wait import await_until

CSV = b"id,name\n1,alpha\n2,beta\n3,gamma\n"
APP_MODULE = "tests.plugins.upload_rows"


def write_tenant(settings: Settings, tenant: str, token: str | None, **batch: Any) -> Path:
    """Write ``<tenants>/<tenant>.toml`` with a ``[batch]`` section (app ``upload_rows``)."""
    batch = {"app": "upload_rows", **batch}
    lines = [f'id = "{tenant}"']
    if token is not None:
        lines.append(f'token_sha256 = "{hash_token(token)}"')
    lines.append("[batch]")
    for key, value in batch.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list | tuple):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    path = settings.tenants_dir / f"{tenant}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Env:
    """A running daemon with one tenant that may upload."""

    url: str
    tenant: str
    token: str
    settings: Settings
    daemon: Any

    def part(self, name: str) -> Path:
        """Where this daemon writes an upload of ``name`` until it is complete."""
        return part_path(self.folder, name, instance_tag(self.daemon.instance_id))

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def folder(self) -> Path:
        return self.settings.staging_dir / self.tenant

    def file_url(self, name: str) -> URL:
        return URL(f"{self.url}/tenants/{self.tenant}/files/") .join(URL(name, encoded=True))


async def start_env(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
                    tenant: str, *, settings: Settings | None = None, **batch: Any) -> Env:
    """Write the tenant's profile and start a daemon that has the ``upload_rows`` app."""
    settings = settings or settings_factory(extra_apps={"upload_rows": APP_MODULE})
    token = f"token-{tenant}"
    write_tenant(settings, tenant, token, **batch)
    rd = await start_daemon(settings, pm=get_plugin_manager({"upload_rows": APP_MODULE}))
    return Env(rd.url, tenant, token, settings, rd.daemon)


@pytest.fixture
async def env(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
              tenant_id: str) -> Env:
    return await start_env(start_daemon, settings_factory, tenant_id, formats=["csv", "jsonl"],
                           max_file_bytes=4096, max_staged_files=3, storage_quota_bytes=100_000)


def leftovers(folder: Path) -> list[str]:
    """Files in a staging folder (including hidden ``.part`` files)."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def rejected_events(logs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The ``upload.rejected`` events captured: (tenant, name, code, status) each."""
    return [(e["tenant"], e.get("name"), e["code"], e["status"]) for e in logs
            if e["event"] == "upload.rejected"]


async def put(http: aiohttp.ClientSession, env: Env, name: str, body: Any = CSV,
              headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with http.put(env.file_url(name), data=body, headers={**env.auth, **(headers or {})},
                        **kwargs) as resp:
        return resp.status, await resp.json()


class HeldUpload:
    """A raw HTTP upload that sends its headers and part of its body, then waits."""

    def __init__(self, env: Env, name: str, declared: int, first: bytes) -> None:
        self.env, self.name, self.declared, self.first = env, name, declared, first
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    async def open(self) -> HeldUpload:
        url = URL(self.env.url)
        self.reader, self.writer = await asyncio.open_connection(url.host, url.port)
        head = (f"PUT /tenants/{self.env.tenant}/files/{self.name} HTTP/1.1\r\n"
                f"Host: {url.host}:{url.port}\r\nAuthorization: Bearer {self.env.token}\r\n"
                f"Content-Length: {self.declared}\r\n\r\n")
        self.writer.write(head.encode() + self.first)
        await self.writer.drain()
        part = self.env.part(self.name)
        await await_until(part.exists, 10, f"{part} to appear", 0.02)
        return self

    async def finish(self, rest: bytes) -> bytes:
        assert self.writer is not None and self.reader is not None
        self.writer.write(rest)
        await self.writer.drain()
        status_line = await self.reader.readline()
        return status_line

    async def abort(self) -> None:
        assert self.writer is not None
        self.writer.transport.abort()


# -- constraints -------------------------------------------------------------------------


async def test_constraints_show_profile_and_usage(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{env.url}/tenants/{env.tenant}/constraints", headers=env.auth) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["tenant"] == env.tenant
    assert body["formats"] == ["csv", "jsonl"]
    assert body["max_file_bytes"] == 4096
    assert body["max_staged_files"] == 3
    assert body["storage_quota_bytes"] == 100_000
    assert body["usage"]["staged_files"] == 0
    assert body["usage"]["used_bytes"] == 0
    assert body["usage"]["free_bytes"] == 100_000


async def test_constraints_of_tenant_without_batch_is_404(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        tenant_id: str, http: aiohttp.ClientSession) -> None:
    settings = settings_factory()
    (settings.tenants_dir / f"{tenant_id}.toml").write_text(
        f'id = "{tenant_id}"\ntoken_sha256 = "{hash_token("tok")}"\n')
    rd = await start_daemon(settings)
    headers = {"Authorization": "Bearer tok"}
    async with http.get(f"{rd.url}/tenants/{tenant_id}/constraints", headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "no_batch"
    async with http.put(f"{rd.url}/tenants/{tenant_id}/files/a.csv", data=CSV, headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "no_batch"


# -- 201 -----------------------------------------------------------------------------------


async def test_upload_is_staged_with_ledger_entry(env: Env, http: aiohttp.ClientSession) -> None:
    with capture_logs() as logs:
        status, body = await put(http, env, "rows.csv")
    assert status == 201, body
    assert body["name"] == "rows.csv"
    assert body["bytes"] == len(CSV)
    assert body["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert body["url"] == f"/tenants/{env.tenant}/files/{body['id']}"
    # the file is in staging under its name, or already taken further by the watcher (which
    # moves it out only after the ledger entry has left 'staged')
    try:
        content: bytes | None = (env.folder / "rows.csv").read_bytes()
    except FileNotFoundError:
        content = None
    entry = await env.daemon.ledger.get(body["id"], tenant=env.tenant)
    assert entry is not None
    assert entry["source"] == "upload"
    assert entry["sha256"] == body["sha256"]
    assert entry["bytes"] == len(CSV)
    assert content == CSV or entry["state"] != FileState.STAGED.value
    assert not [n for n in leftovers(env.folder) if n.endswith(".part")]
    events = [e for e in logs if e["event"] == "upload.staged"]
    assert events and events[0]["tenant"] == env.tenant and events[0]["file_id"] == body["id"]


async def test_upload_with_expect_continue(env: Env, http: aiohttp.ClientSession) -> None:
    status, body = await put(http, env, "expect.csv", expect100=True)
    assert status == 201, body
    status, body = await put(http, env, "expect.txt", expect100=True)
    assert status == 415 and body["code"] == "format"


async def test_file_listing_and_lookup(env: Env, http: aiohttp.ClientSession) -> None:
    _, first = await put(http, env, "one.csv", b"id\n1\n")
    _, second = await put(http, env, "two.jsonl", b'{"id": 2}\n')
    async with http.get(f"{env.url}/tenants/{env.tenant}/files", headers=env.auth) as resp:
        assert resp.status == 200
        listing = await resp.json()
    ids = [f["id"] for f in listing["files"]]
    assert set(ids) == {first["id"], second["id"]}
    assert all(f["tenant"] == env.tenant for f in listing["files"])
    async with http.get(f"{env.url}/tenants/{env.tenant}/files/{second['id']}", headers=env.auth) as resp:
        assert resp.status == 200
        entry = await resp.json()
    assert entry["name"] == "two.jsonl" and entry["state"] in {s.value for s in FileState}
    async with http.get(f"{env.url}/tenants/{env.tenant}/files/nope", headers=env.auth) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "unknown_file"
    async with http.get(f"{env.url}/tenants/{env.tenant}/files?limit=0", headers=env.auth) as resp:
        assert resp.status == 400
    async with http.get(f"{env.url}/tenants/{env.tenant}/files?state=bogus", headers=env.auth) as resp:
        assert resp.status == 400


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_name", [
    "..%2Fescape.csv",       # path separator
    "sub%2Fa.csv",
    "a..b.csv",              # '..'
    ".hidden.csv",           # leading dot
    "ctl%01name.csv",        # control character
    "a%5Cb.csv",             # backslash
    "x" * 252 + ".csv",      # 256 bytes
    "rows.csv.part",
])
async def test_bad_names_are_400(env: Env, http: aiohttp.ClientSession, raw_name: str) -> None:
    with capture_logs() as logs:
        status, body = await put(http, env, raw_name)
    assert status == 400, body
    assert body["code"] == "bad_name" and body["message"]
    rejected = [e for e in logs if e["event"] == "upload.rejected"]
    assert rejected and rejected[0]["code"] == "bad_name" and "name" not in rejected[0]
    assert leftovers(env.folder) == []
    assert not any(env.settings.staging_dir.parent.glob("**/escape.csv"))


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic abc"])
async def test_missing_or_wrong_token_is_401_and_logged(
        env: Env, http: aiohttp.ClientSession, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with capture_logs() as logs:
        async with http.put(env.file_url("rows.csv"), data=CSV, headers=headers) as resp:
            status, body = resp.status, await resp.json()
    assert status == 401 and body["code"] == "unauthorized", body
    assert rejected_events(logs) == [(env.tenant, "rows.csv", "unauthorized", 401)]
    assert leftovers(env.folder) == []


async def test_unsupported_format_is_415(env: Env, http: aiohttp.ClientSession) -> None:
    with capture_logs() as logs:
        status, body = await put(http, env, "notes.txt")
    assert status == 415 and body["code"] == "format"
    status, body = await put(http, env, "rows.csv.gz")  # a real format, not in this profile
    assert status == 415 and body["code"] == "format"
    event = next(e for e in logs if e["event"] == "upload.rejected")
    assert event["tenant"] == env.tenant and event["name"] == "notes.txt" and event["status"] == 415
    assert leftovers(env.folder) == []


async def test_declared_too_big_is_413_before_reading(env: Env, http: aiohttp.ClientSession) -> None:
    big = b"x" * 5000
    with capture_logs() as logs:
        status, body = await put(http, env, "big.csv", big)
    assert status == 413 and body["code"] == "too_big"
    assert rejected_events(logs) == [(env.tenant, "big.csv", "too_big", 413)]
    status, body = await put(http, env, "big.csv", big, expect100=True)
    assert status == 413 and body["code"] == "too_big"
    assert leftovers(env.folder) == []


async def test_streamed_body_over_limit_is_cut_off_413(env: Env, http: aiohttp.ClientSession) -> None:
    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse from
        for _ in range(10):
            yield b"y" * 1000

    with capture_logs() as logs:
        status, resp = await put(http, env, "chunked.csv", body())
    assert status == 413 and resp["code"] == "too_big"
    assert rejected_events(logs) == [(env.tenant, "chunked.csv", "too_big", 413)]
    assert leftovers(env.folder) == []
    assert await env.daemon.ledger.find(env.tenant, name="chunked.csv") == []


@pytest.mark.parametrize("declared, sent", [
    (8, 6008),      # a few bytes declared, far more sent
    (4000, 6000),   # declared within max_file_bytes (4096), the bytes sent beyond it
], ids=["short", "past-limit"])
async def test_body_longer_than_declared_is_refused_and_not_kept(
        env: Env, declared: int, sent: int) -> None:
    """A Content-Length that lies low: HTTP ends the body at the declared length, so the bytes
    after it are a malformed next request, which the HTTP server answers 400; sent together,
    the request is not handled at all and nothing is kept."""
    url = URL(env.url)
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        head = (f"PUT /tenants/{env.tenant}/files/short.csv HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {env.token}\r\nContent-Length: {declared}\r\n\r\n")
        writer.write(head.encode() + b"id\n1\n2\n" + b"9" * (sent - 7))  # one write: one read
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after a 400
        writer.close()
        await asyncio.sleep(0.2)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]
    assert answer.count(b"HTTP/1.") == 1, "one answer only: the upload itself was not handled"
    assert await env.daemon.ledger.find(env.tenant, name="short.csv") == []
    assert leftovers(env.folder) == []
    assert not [e for e in logs if e["event"].startswith("upload.")], logs


async def test_body_shorter_than_declared_is_interrupted_and_not_kept(env: Env) -> None:
    """A Content-Length that lies high: the body ends (EOF) short of it, the upload is interrupted."""
    url = URL(env.url)
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        head = (f"PUT /tenants/{env.tenant}/files/long.csv HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {env.token}\r\nContent-Length: 100\r\n\r\n")
        writer.write(head.encode() + b"id\n1\n")
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await await_until(lambda: any(e["event"] == "upload.interrupted" for e in logs),
                        10, "upload.interrupted", 0.02)
    event = next(e for e in logs if e["event"] == "upload.interrupted")
    assert event["tenant"] == env.tenant and event["name"] == "long.csv"
    assert await env.daemon.ledger.find(env.tenant, name="long.csv") == []
    assert leftovers(env.folder) == []


async def test_over_quota_is_507(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
                                 tenant_id: str, http: aiohttp.ClientSession) -> None:
    env = await start_env(start_daemon, settings_factory, tenant_id, formats=["csv"],
                          max_file_bytes=10_000, storage_quota_bytes=2000)
    with capture_logs() as logs:
        status, body = await put(http, env, "a.csv", b"z" * 2500)
    assert status == 507 and body["code"] == "over_quota"
    assert rejected_events(logs) == [(env.tenant, "a.csv", "over_quota", 507)]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"z" * 500

    status, body = await put(http, env, "b.csv", chunks())
    assert status == 507 and body["code"] == "over_quota"
    # committed bytes count against the quota
    entry_id = await env.daemon.ledger.stage(env.tenant, "old.csv", "0" * 64, 1900, source="upload")
    claim = await env.daemon.ledger.claim(entry_id, "test", 30)
    assert claim is not None and await env.daemon.ledger.settle(claim, FileState.COMMITTED)
    status, body = await put(http, env, "c.csv", b"z" * 200)
    assert status == 507 and body["code"] == "over_quota"
    assert leftovers(env.folder) == []


async def test_duplicate_of_committed_content_is_409(env: Env, http: aiohttp.ClientSession) -> None:
    sha = hashlib.sha256(CSV).hexdigest()
    entry_id = await env.daemon.ledger.stage(env.tenant, "before.csv", sha, len(CSV))
    claim = await env.daemon.ledger.claim(entry_id, "test", 30)
    assert claim is not None and await env.daemon.ledger.settle(claim, FileState.COMMITTED)
    with capture_logs() as logs:
        status, body = await put(http, env, "again.csv")
    assert status == 409 and body["code"] == "duplicate"
    assert rejected_events(logs) == [(env.tenant, "again.csv", "duplicate", 409)]
    assert leftovers(env.folder) == []


async def test_same_name_in_progress_is_409_and_staging_full_is_429(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        tenant_id: str, http: aiohttp.ClientSession) -> None:
    env = await start_env(start_daemon, settings_factory, tenant_id, formats=["csv"],
                          max_file_bytes=10_000, max_staged_files=1)
    held = await HeldUpload(env, "slow.csv", 100, b"id\n").open()
    with capture_logs() as logs:
        status, body = await put(http, env, "slow.csv")
    assert status == 409 and body["code"] == "in_progress"
    assert rejected_events(logs) == [(env.tenant, "slow.csv", "in_progress", 409)]
    with capture_logs() as logs:
        status, body = await put(http, env, "other.csv")  # the held upload takes the only slot
    assert status == 429 and body["code"] == "staging_full"
    assert any(e["event"] == "upload.rejected" and e["code"] == "staging_full" for e in logs)
    line = await held.finish(b"1" * 97)
    assert b" 201 " in line


async def test_name_already_waiting_is_409(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        tenant_id: str, http: aiohttp.ClientSession) -> None:
    # the watcher waits 30 s for a dropped file to be stable: it stays waiting during the test
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE},
                                batch={"stable_after_s": 30, "rescan_interval_s": 0.5})
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings)
    held = await HeldUpload(env, "wait.csv", len(CSV), CSV[:4]).open()
    # a file of the same name lands in staging while the upload streams: nothing is overwritten
    env.folder.mkdir(parents=True, exist_ok=True)
    (env.folder / "wait.csv").write_bytes(b"id\n42\n")
    status, body = await put(http, env, "wait.csv")
    assert status == 409 and body["code"] in {"exists", "in_progress"}
    line = await held.finish(CSV[4:])
    assert b" 409 " in line
    assert (env.folder / "wait.csv").read_bytes() == b"id\n42\n"  # not overwritten
    with capture_logs() as logs:
        status, body = await put(http, env, "wait.csv", b"id\n43\n")
    assert status == 409 and body["code"] == "exists"
    assert rejected_events(logs) == [(env.tenant, "wait.csv", "exists", 409)]
    assert leftovers(env.folder) == ["wait.csv"]
    rejected = await env.daemon.ledger.find(env.tenant, name="wait.csv", states=[FileState.REJECTED])
    assert [e["code"] for e in rejected] == ["exists"]  # the upload that lost the race


async def test_interrupted_upload_leaves_nothing(env: Env) -> None:
    with capture_logs() as logs:
        held = await HeldUpload(env, "cut.csv", 4000, b"id\n" + b"1\n" * 500).open()
        await held.abort()
        part = env.part("cut.csv")
        await await_until(lambda: not part.exists(), 10, "the .part file to be removed", 0.02)
        await await_until(lambda: any(e["event"] == "upload.interrupted" for e in logs),
                        10, "upload.interrupted", 0.02)
    assert leftovers(env.folder) == []
    assert await env.daemon.ledger.find(env.tenant, name="cut.csv") == []
    event = next(e for e in logs if e["event"] == "upload.interrupted")
    assert event["tenant"] == env.tenant and event["name"] == "cut.csv"


async def test_drain_cancels_inflight_upload_and_cleans_up(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        tenant_id: str) -> None:
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE}, drain_timeout_s=0.3)
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings)
    held = await HeldUpload(env, "late.csv", 1000, b"id\n").open()
    env.daemon.request_stop("test")
    await await_until(lambda: not env.part("late.csv").exists(), 10, "cleanup at drain", 0.02)
    assert leftovers(env.folder) == []
    await held.abort()


# -- stale .part files -----------------------------------------------------------------------


TAG, OTHER, GONE = instance_tag("inst-a"), instance_tag("inst-b"), instance_tag("inst-c")


def test_upload_name_of_knows_only_the_uploads_part_files() -> None:
    assert upload_name_of(f".rows.csv.{TAG}.part") == ("rows.csv", TAG)
    assert upload_name_of(".Rows.JSONL.GZ.0123abcd.part") == ("Rows.JSONL.GZ", "0123abcd")
    assert part_path(Path("f"), "rows.csv", TAG).name == f".rows.csv.{TAG}.part"
    for other in (f"rows.csv.{TAG}.part",   # no leading dot: not an upload's
                  f".notes.{TAG}.part",     # no known format
                  ".rows.csv.part",         # a tenant's own temporary name: no tag
                  ".rows.csv.0123ABCD.part", ".rows.csv.0123abc.part",
                  f".rows.csv.{TAG}.tmp", ".rows.csv", ".part", "..part",
                  f".a..b.csv.{TAG}.part",  # a name the upload door refuses
                  f"..hidden.csv.{TAG}.part", f".x.csv.part.{TAG}.part"):
        assert upload_name_of(other) is None, other


def _stale_site(staging: Path, now: float, tenant: str = "acme",
               tags: tuple[str, str, str] = (TAG, OTHER, GONE)) -> dict[str, Path]:
    """Files in two tenant folders: the uploads' stale parts and what is not to be touched
    (``tags``: of this instance, of another one up, of one gone)."""
    TAG, OTHER, GONE = tags  # noqa: N806
    a, b = staging / tenant, staging / "beta"
    a.mkdir(parents=True)
    b.mkdir()
    paths = {
        "stale": a / f".old.csv.{TAG}.part", "stale-other": b / f".b.jsonl.gz.{TAG}.part",
        "stale-gone": a / f".g.csv.{GONE}.part",       # of an instance that is gone
        "being-written": a / f".new.csv.{TAG}.part",   # modified after the start: not stale
        "other-instance": a / f".up.csv.{OTHER}.part",  # an instance up now uploads it
        "tenants-own": a / ".mine.csv.part",            # a tenant's copy: not the upload door's
        "no-dot": a / f"own.csv.{TAG}.part", "no-format": a / f".notes.{TAG}.part", "tmp": a / ".old.csv.tmp",
        "bad-name": a / f".a..b.csv.{TAG}.part", "waiting": a / "old.csv",
    }
    for path in paths.values():
        path.write_bytes(b"id\n1\n")
        os.utime(path, (now - 600, now - 600))
    os.utime(paths["being-written"], (now + 60, now + 60))
    target = staging.parent / "target.csv"
    target.write_bytes(b"id\n")
    paths["link"] = a / f".link.csv.{TAG}.part"
    paths["link"].symlink_to(target)
    paths["folder"] = a / f".dir.csv.{TAG}.part"
    paths["folder"].mkdir()
    return paths


def test_remove_stale_parts_removes_only_the_uploads_leftovers(tmp_path: Path) -> None:
    """This instance's own leftovers, and another's only once that one is gone."""
    now = time.time()
    paths = _stale_site(tmp_path / "staging", now)
    emitter = EventBus(write_event).emitter("upload")
    asked: list[tuple[str, float]] = []

    def gone(tag: str, age_s: float) -> bool:
        asked.append((tag, age_s))
        return tag == GONE

    with capture_logs() as logs:
        assert remove_stale_parts(tmp_path / "staging", now, emitter, TAG, gone) == 3
    assert sorted(tag for tag, _ in asked) == [GONE, OTHER] and all(age >= 600 for _, age in asked)
    assert not [k for k, p in paths.items() if k.startswith("stale") and p.exists()]
    assert all(p.exists() or p.is_symlink() for k, p in paths.items() if not k.startswith("stale"))
    assert (tmp_path / "target.csv").read_bytes() == b"id\n"
    events = sorted((e["tenant"], e["name"], e["bytes"]) for e in logs if e["event"] == "upload.part.removed")
    assert events == [("acme", "g.csv", 5), ("acme", "old.csv", 5), ("beta", "b.jsonl.gz", 5)]
    assert all(e["age_s"] >= 600 for e in logs if e["event"] == "upload.part.removed")
    assert remove_stale_parts(tmp_path / "nowhere", now, emitter, TAG) == 0


def test_without_a_view_of_the_instances_only_its_own_leftovers_go(tmp_path: Path) -> None:
    now = time.time()
    paths = _stale_site(tmp_path / "staging", now)
    assert remove_stale_parts(tmp_path / "staging", now, EventBus(write_event).emitter("upload"), TAG) == 2
    assert paths["stale-gone"].exists() and paths["other-instance"].exists()


async def test_daemon_start_removes_parts_of_a_killed_daemon(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        tenant_id: str, http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """Its own leftovers and those of an instance gone; not those of one that is up."""
    me, up = f"me-{tenant_id}", f"up-{tenant_id}"
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE}, instance_id=me,
                                batch={"stable_after_s": 30, "rescan_interval_s": 0.5})
    await mongo["mysimbdp"]["instances"].insert_one({"_id": up, "heartbeat_at": time.time() + 60, "state": "up"})
    paths = _stale_site(settings.staging_dir, time.time(), tenant_id,
                        (instance_tag(me), instance_tag(up), instance_tag(f"gone-{tenant_id}")))
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings,
                          formats=["csv"])
    await mongo["mysimbdp"]["instances"].delete_one({"_id": up})
    kept = {k for k, p in paths.items() if p.exists() or p.is_symlink()}
    assert kept == set(paths) - {"stale", "stale-other", "stale-gone"}
    status, body = await put(http, env, "fresh.csv")  # uploads work as before
    assert status == 201, body


async def test_the_longest_upload_name_fits_its_temporary_name(env: Env, http: aiohttp.ClientSession) -> None:
    longest = "x" * (MAX_UPLOAD_NAME_BYTES - len(".csv")) + ".csv"
    status, body = await put(http, env, longest)
    assert status == 201, body
    status, body = await put(http, env, "y" + longest)
    assert (status, body["code"]) == (400, "bad_name") and str(MAX_UPLOAD_NAME_BYTES) in body["message"]


async def test_one_name_uploaded_to_two_instances_at_once_is_staged_once(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        tmp_path: Path) -> None:
    """Two daemons on one staging folder, the same name uploaded to each at once: each writes
    its own temporary file; the first to finish stages it, the other gets 409 ``exists``."""
    batch = {"stable_after_s": 30, "rescan_interval_s": 0.5}
    a = await start_env(start_daemon, settings_factory, tenant_id, formats=["csv"], settings=settings_factory(
        extra_apps={"upload_rows": APP_MODULE}, instance_id=f"a-{tenant_id}", batch=batch))
    b_settings = settings_factory(extra_apps={"upload_rows": APP_MODULE}, instance_id=f"b-{tenant_id}",
                                  var_dir=tmp_path / "var-b", batch=batch)
    assert b_settings.staging_dir == a.settings.staging_dir  # one staging folder, one tenants' folder
    rd = await start_daemon(b_settings, pm=get_plugin_manager({"upload_rows": APP_MODULE}))
    b = Env(rd.url, tenant_id, a.token, b_settings, rd.daemon)
    first = await HeldUpload(a, "same.csv", len(CSV), CSV[:3]).open()
    second = await HeldUpload(b, "same.csv", len(CSV), CSV[:3]).open()
    assert a.part("same.csv").exists() and b.part("same.csv").exists()  # two temporary files, one each
    assert b"201" in await first.finish(CSV[3:])
    assert b"409" in await second.finish(CSV[3:])
    assert leftovers(a.folder) == ["same.csv"]
    entries = await a.daemon.ledger.find(tenant_id, name="same.csv")
    assert sorted(e["state"] for e in entries) == ["rejected", "staged"]
