"""``POST /tenants/{id}/try`` and ``mysimbdp try``: a dry-run goes through admission, the
reader and the tenant's app and writes nothing; another tenant's token is refused."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from mysimbdp.config import Settings
from tests.batch_support import wait_outcome
from tests.conftest import ADMIN_TOKEN
from tests.test_intake import APP_MODULE, Env, put, start_env, write_tenant

JSONL = b'{"n": 1, "name": "alpha"}\n{"n": 2, "name": null}\nnot json\n{"n": 3.5, "name": "gamma"}\n'


async def _try(http: aiohttp.ClientSession, env: Env, name: str, body: bytes, token: str | None = None,
               **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token or env.token}"}
    async with http.post(f"{env.url}/tenants/{env.tenant}/try", params={"name": name, **params}, data=body,
                         headers=headers) as resp:
        return resp.status, await resp.json()


async def _nothing_written(mongo: AsyncMongoClient[dict[str, Any]], tenant: str) -> None:
    assert await mongo["mysimbdp"]["files"].count_documents({"tenant": tenant}) == 0
    db = mongo[f"tenant_{tenant}"]
    for name in await db.list_collection_names():
        assert await db[name].count_documents({}) == 0, name


async def test_a_dry_run_shows_documents_rejects_and_fields_and_writes_nothing(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE})
    other = f"{tenant_id}x"
    write_tenant(settings, other, f"token-{other}")
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings, formats=["csv", "jsonl"],
                          max_error_rate=0.5, max_file_bytes=100_000)
    status, answer = await _try(http, env, "rows.jsonl", JSONL, limit="2")
    assert status == 200, answer
    assert answer["admitted"] is True and answer["verdict"] == "commit" and answer["collection"] == "rows"
    assert answer["counts"] == {"records_in": 4, "documents": 3, "rejected": 1, "skipped": 0}
    assert answer["rejects_by_kind"] == {"parse": 1}
    assert answer["rejects"][0]["record_number"] == 3 and answer["rejects"][0]["raw"] == "not json"
    # the documents as the load would store them: the deterministic _id, the app's field
    docs = answer["documents"]
    assert len(docs) == 2 and docs[0]["_id"].endswith(":1") and docs[0]["file"] == "rows.jsonl"
    fields = answer["fields"]
    assert fields["n"]["types"] == {"int": 2, "double": 1} and fields["n"]["min"] == 1 and fields["n"]["max"] == 3.5
    assert fields["name"]["nulls"] == 1 and fields["name"]["missing"] == 0
    assert answer["estimate"]["records"] == 4 and answer["estimate"]["based_on"] == "dry_run"
    await _nothing_written(mongo, tenant_id)

    # what the load would refuse: the error rate, and at admission the format
    status, bad = await _try(http, env, "bad.jsonl", b"{}\nx\ny\n")
    assert status == 200 and bad["verdict"] == "reject" and bad["code"] == "error_rate"
    status, refused = await _try(http, env, "rows.xml", b"<a/>")
    assert status == 200 and refused["admitted"] is False and refused["code"] == "format"
    status, big = await _try(http, env, "big.csv", b"a\n" * 60_000)
    assert status == 413 and big["code"] == "too_big"
    await _nothing_written(mongo, tenant_id)

    # another tenant's token: refused, and it learns nothing; no token: 401; the admin's: allowed
    status, body = await _try(http, env, "rows.jsonl", JSONL, token=f"token-{other}")
    assert status == 403 and "alpha" not in str(body)
    async with http.post(f"{env.url}/tenants/{tenant_id}/try", params={"name": "a.csv"}, data=b"a\n1\n") as resp:
        assert resp.status == 401
    status, _ = await _try(http, env, "rows.jsonl", JSONL, token=ADMIN_TOKEN)
    assert status == 200

    # once the content is loaded, a dry-run of it says the load would refuse it as a duplicate
    assert (await put(http, env, "rows.jsonl", JSONL))[0] == 201
    await wait_outcome(mongo, tenant_id, "rows.jsonl")
    status, again = await _try(http, env, "copy.jsonl", JSONL)
    assert status == 200 and again["admitted"] is False and again["code"] == "duplicate"
    status, other_content = await _try(http, env, "more.jsonl", b'{"n": 9}\n')
    assert other_content["estimate"]["based_on"] == "recent_loads"


async def test_the_try_command_prints_the_verdict(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    env = await start_env(start_daemon, settings_factory, tenant_id, formats=["jsonl"], max_error_rate=0.5)
    token_file = tmp_path / "token"
    token_file.write_text(env.token)
    token_file.chmod(0o600)
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(JSONL)

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from mysimbdp.cli import main; main()", "--config-dir", str(tmp_path), "try",
            str(sample), "--tenant", tenant_id, "--token-file", str(token_file), "--url", env.url, *args,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode() + err.decode()

    code, out = await cli()
    assert code == 0, out
    assert "verdict: would commit" in out and "records 4, documents 3, rejected 1" in out
    assert "record 3 parse" in out
    code, out = await cli("--name", "sample.csv")  # judged by another name: not an allowed format
    assert code == 1 and "not admitted (format)" in out
    await _nothing_written(mongo, tenant_id)


async def test_a_dry_run_stops_an_app_stuck_before_its_first_record(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession) -> None:
    """The dry-run's time limit covers the app's start and its target hook, not only its records."""
    settings = settings_factory(extra_apps={"hostile": "tests.plugins.hostile"}, batch={"try_timeout_s": 2})
    tenant = f"{tenant_id}-target-hang"  # the hostile app's target hook sleeps an hour for it
    write_tenant(settings, tenant, f"token-{tenant}", app="hostile", formats=["jsonl"])
    rd = await start_daemon(settings)
    env = Env(rd.url, tenant, f"token-{tenant}", settings, rd.daemon)
    for _ in range(2):  # the slot is free again after the first
        status, answer = await asyncio.wait_for(_try(http, env, "a.jsonl", b'{"n": 1}\n'), 30)
        assert status == 200, answer
        assert answer["verdict"] == "reject" and answer["code"] == "timeout", answer
        assert answer["estimate"]["dry_run_s"] < 10


async def test_a_dry_run_answer_stays_bounded_whatever_the_file_holds(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """A hostile tenant's 12 MB of large records: the answer shows documents only up to
    MAX_SHOWN_BYTES (and says it cut them), counts every one, and shows a broken record's raw
    input cut to its first 2,000 characters."""
    import orjson

    from mysimbdp.batch.trial import MAX_SHOWN_BYTES

    env = await start_env(start_daemon, settings_factory, tenant_id, formats=["jsonl"], max_error_rate=0.5,
                          max_file_bytes=20_000_000)
    big = "x" * 400_000
    lines = [orjson.dumps({"n": i, "name": big}) for i in range(30)] + [b"y" * 5000]
    status, answer = await _try(http, env, "big.jsonl", b"\n".join(lines) + b"\n", limit="100")
    assert status == 200, answer
    assert answer["verdict"] == "commit"
    assert answer["counts"] == {"records_in": 31, "documents": 30, "rejected": 1, "skipped": 0}
    shown = answer["documents"]
    assert answer["documents_cut"] is True and 1 <= len(shown) < 30
    assert sum(len(orjson.dumps(d)) for d in shown) <= MAX_SHOWN_BYTES
    assert [d["n"] for d in shown] == list(range(len(shown)))  # the first ones, in order
    assert answer["fields"]["n"]["max"] == 29  # the summary still covers every document
    reject = answer["rejects"][0]
    assert reject["kind"] == "parse" and reject["raw"] == "y" * 2000
    await _nothing_written(mongo, tenant_id)
