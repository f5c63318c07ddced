"""``POST /tenants/{id}/rejects/replay`` and ``mysimbdp rejects replay``: after the tenant
fixed its app, the rejects of a file and of the stream become documents exactly once (with
the ids a first attempt would have had); replaying twice changes nothing; what cannot be
replayed stays, and another tenant's token is refused."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo import AsyncMongoClient

from mysimbdp import tenants
from mysimbdp.batch.loader import id_prefix
from mysimbdp.config import Settings
from mysimbdp.http.tokens import hash_token
from tests.batch_support import drop, wait_outcome
from tests.harness.wait import await_until
from tests.plugins import fixable
from tests.plugins.stream_support import publish_raw, wait_consumers

APPS = {"fixable": "tests.plugins.fixable"}


@pytest.fixture(autouse=True)
def buggy_app() -> Iterator[None]:
    fixable.FIXED["on"] = False
    yield
    fixable.FIXED["on"] = False


def _profile(settings: Settings, tenant: str, **sections: Any) -> None:
    tenants.write_profile(settings.tenants_dir, {"id": tenant, "runner": "thread",
                                                 "token_sha256": hash_token(f"token-{tenant}"), **sections})


async def _replay(http: aiohttp.ClientSession, url: str, tenant: str, token: str | None = None,
                  **params: str) -> tuple[int, Any]:
    async with http.post(f"{url}/tenants/{tenant}/rejects/replay", params=params,
                         headers={"Authorization": f"Bearer {token or f'token-{tenant}'}"}) as resp:
        return resp.status, await resp.json()


async def test_file_rejects_become_documents_once_the_app_is_fixed(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5})
    other = f"{tenant_id}x"
    _profile(settings, other, batch={"app": "fixable"})
    _profile(settings, tenant_id, batch={"app": "fixable", "max_error_rate": 0.9})
    rd = await start_daemon(settings)
    lines = [{"n": i, "v": "bad" if i % 4 == 0 else "ok"} for i in range(1, 21)] + [{"n": 21, "v": "skip"}]
    content = b"".join(orjson.dumps(r) + b"\n" for r in lines[:10]) + b"{not json\n" + \
        b"".join(orjson.dumps(r) + b"\n" for r in lines[10:])
    drop(settings, tenant_id, "numbers.jsonl", content)
    entry = (await wait_outcome(mongo, tenant_id, "numbers.jsonl"))[0]
    assert entry["state"] == "committed" and entry["records_written"] == 15 and entry["records_rejected"] == 6
    db = mongo[f"tenant_{tenant_id}"]
    prefix = id_prefix(entry["sha256"])

    # the app is still buggy: the rejects stay, with the reason of this attempt
    status, answer = await _replay(http, rd.url, tenant_id, file=entry["_id"])
    assert status == 200, answer
    assert answer["examined"] == 6 and answer["still_rejected"] == 5 and answer["written"] == 0
    assert answer["not_replayable"] == {"kind_parse": 1} and answer["next"] is None
    assert await db["_rejects"].count_documents({"kind": "wrangle"}) == 5

    # another tenant's token replays nothing of this tenant
    status, body = await _replay(http, rd.url, tenant_id, token=f"token-{other}")
    assert status == 403 and "numbers" not in str(body)

    fixable.FIXED["on"] = True  # the tenant installs the fixed app
    status, answer = await _replay(http, rd.url, tenant_id, file=entry["_id"], limit="2")  # two pages at least
    assert status == 200 and answer["examined"] == 2 and answer["next"] is not None
    while answer["next"] is not None:
        status, page = await _replay(http, rd.url, tenant_id, file=entry["_id"], limit="2", after=answer["next"])
        assert status == 200
        answer = {**page, "written": answer["written"] + page["written"]}
    assert answer["written"] == 5
    docs = {d["_id"]: d async for d in db["items"].find({})}
    # the ids a first attempt would have had: the record's number in the file (line 11 was the broken one)
    replayed = {f"{prefix}{n if n <= 10 else n + 1}" for n in (4, 8, 12, 16, 20)}
    assert replayed <= docs.keys() and all(docs[i]["fixed"] is True for i in replayed)
    assert len(docs) == 20
    left = [d async for d in db["_rejects"].find({})]
    assert [(d["kind"], d["record_number"]) for d in left] == [("parse", 11)]
    assert (await mongo["mysimbdp"]["files"].find_one({"_id": entry["_id"]}))["records_replayed"] == 5

    # twice changes nothing; a reject left behind by a replay interrupted after its write is
    # cleared without a second document
    status, again = await _replay(http, rd.url, tenant_id)
    assert again["examined"] == 1 and again["written"] == 0 and await db["items"].count_documents({}) == 20
    stale = {**left[0], "_id": f"{prefix}5", "kind": "wrangle", "record_number": 5, "raw": lines[4]}
    await db["_rejects"].insert_one(stale)
    status, again = await _replay(http, rd.url, tenant_id, reason="wrangle")
    assert again["already_present"] == 1 and again["written"] == 0
    assert await db["items"].count_documents({}) == 20 and await db["_rejects"].count_documents({}) == 1

    # the command: the same replay, page after page, with the tenant's token
    token_file = tmp_path / "token"
    token_file.write_text(f"token-{tenant_id}")
    token_file.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from mysimbdp.cli import main; main()", "--config-dir", str(tmp_path), "rejects",
        "replay", "--tenant", tenant_id, "--token-file", str(token_file), "--url", rd.url, "--limit", "1",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == ("1 rejects replayed: 0 written, 0 already present, 0 skipped by the app, "
                                    "0 still rejected; not replayable: kind_parse 1")


async def test_stream_rejects_become_documents_once_the_app_is_fixed(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str) -> None:
    settings = settings_factory(extra_apps=APPS)
    _profile(settings, tenant_id, stream={"app": "fixable", "min_consumers": 1, "max_consumers": 2,
                                          "batch_max_wait_ms": 50, "report_interval_s": 1.0})
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    bodies: list[Any] = [{"v": "ok", "k": 0}, {"v": "bad", "k": 1},
                         [{"v": "ok", "k": 2}, {"v": "bad", "k": 3}, {"v": "bad", "k": 4}], b"{not json",
                         [{"v": "bad", "k": 5}, 7]]
    await publish_raw(amqp_url, tenant_id, bodies, ["a", "b", "c", "d", "e"])
    db = mongo[f"tenant_{tenant_id}"]

    async def landed() -> bool:
        return await db["events"].count_documents({}) == 2 and await db["_rejects"].count_documents({}) == 6
    await await_until(landed, what="the first attempt's documents and rejects")

    async def data() -> Any:  # the stream's last ingest, from the instances' heartbeats
        async with http.get(f"{rd.url}/tenants/{tenant_id}/data",
                            headers={"Authorization": f"Bearer token-{tenant_id}"}) as resp:
            body = await resp.json()
        return body if body.get("last_stream_ingest") else None
    seen = await await_until(data, what="the stream's last ingest time in /data")
    assert {c["name"] for c in seen["collections"]} >= {"events", "_rejects"}

    fixable.FIXED["on"] = True
    status, answer = await _replay(http, rd.url, tenant_id, source="stream")
    assert status == 200, answer
    assert answer["examined"] == 6 and answer["written"] == 4 and answer["not_replayable"] == {"kind_malformed": 2}
    ids = sorted([d["_id"] async for d in db["events"].find({})])
    assert ids == ["m:a", "m:b", "m:c:0", "m:c:1", "m:c:2", "m:e:0"]  # the ids of a first attempt
    left = {d["_id"]: d async for d in db["_rejects"].find({})}
    assert sorted(left) == ["stream:d", "stream:e:1"]
    # the replayed reject held message e's body: the one that stays has it now
    assert left["stream:e:1"]["raw"] == '[{"v":"bad","k":5},7]' and left["stream:e:1"]["raw_in"] is None
    status, again = await _replay(http, rd.url, tenant_id, source="stream")
    assert again["written"] == 0 and await db["events"].count_documents({}) == 6


async def test_a_contract_reject_replays_under_the_current_contract(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"rescan_interval_s": 0.5})
    fields = {"v": "string", "k": "int", "fixed": "bool"}

    def profile(contract_fields: dict[str, str]) -> None:
        _profile(settings, tenant_id, stream={
            "app": "fixable", "min_consumers": 1, "max_consumers": 1, "batch_max_wait_ms": 50,
            "contract": {"on_violation": "reject_record", "fields": contract_fields}})
    profile(fields)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    await publish_raw(amqp_url, tenant_id, [[{"v": "ok", "k": 1}, {"v": "ok", "k": 2, "extra": 7}]], ["a"])
    db = mongo[f"tenant_{tenant_id}"]

    async def landed() -> bool:
        return await db["_rejects"].count_documents({"kind": "contract"}) == 1
    await await_until(landed, what="the contract's reject")
    reject = await db["_rejects"].find_one({})
    assert reject["_id"] == "stream:a:1" and reject["record"] == {"v": "ok", "k": 2, "extra": 7}

    status, answer = await _replay(http, rd.url, tenant_id)  # the same contract: still rejected
    assert answer["still_rejected"] == 1 and await db["events"].count_documents({}) == 1
    profile({**fields, "extra": "int"})  # the tenant widens its contract

    async def reloaded() -> bool:
        profile_now = rd.daemon.tenants.get(tenant_id)
        return profile_now is not None and "extra" in profile_now.stream.contract.fields
    await await_until(reloaded, what="the new contract")
    status, answer = await _replay(http, rd.url, tenant_id)
    assert status == 200 and answer["written"] == 1, answer
    assert sorted([d["_id"] async for d in db["events"].find({})]) == ["m:a:0", "m:a:1"]
    assert await db["_rejects"].count_documents({}) == 0


async def test_a_whole_message_that_fails_again_keeps_its_reject(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"rescan_interval_s": 0.5})

    def profile(fields: dict[str, str]) -> None:
        _profile(settings, tenant_id, stream={
            "app": "fixable", "min_consumers": 1, "max_consumers": 1, "batch_max_wait_ms": 50,
            "contract": {"on_violation": "reject_file", "fields": fields}})
    profile({"v": "string", "k": "int", "fixed": "bool"})
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    await publish_raw(amqp_url, tenant_id, [[{"v": "ok", "k": 1}, {"v": "ok", "k": 2, "extra": 7}]], ["w"])
    db = mongo[f"tenant_{tenant_id}"]

    async def landed() -> bool:
        return await db["_rejects"].count_documents({}) == 1
    await await_until(landed, what="the message's reject")
    before = await db["_rejects"].find_one({})
    assert before["_id"] == "stream:w" and before["kind"] == "contract" and before["record"] is None

    status, answer = await _replay(http, rd.url, tenant_id)  # the same contract: the message fails again
    assert status == 200 and answer["still_rejected"] == 1 and answer["written"] == 0, answer
    after = await db["_rejects"].find_one({})
    assert after is not None and after["_id"] == "stream:w" and after["raw"] == before["raw"]
    assert await db["events"].count_documents({}) == 0

    profile({"v": "string", "k": "int", "fixed": "bool", "extra": "int"})

    async def reloaded() -> bool:
        now = rd.daemon.tenants.get(tenant_id)
        return now is not None and "extra" in now.stream.contract.fields
    await await_until(reloaded, what="the new contract")
    status, answer = await _replay(http, rd.url, tenant_id)
    assert answer["written"] == 2 and answer["still_rejected"] == 0, answer
    assert sorted([d["_id"] async for d in db["events"].find({})]) == ["m:w:0", "m:w:1"]
    assert await db["_rejects"].count_documents({}) == 0
