"""Undoing a committed file's load: ``DELETE /tenants/{id}/files/{ledger_id}`` and ``mysimbdp files
undo`` remove exactly the documents and rejects the file wrote (never another file's), mark its
ledger entry ``undone`` with who asked, finish after a SIGKILL mid-undo, and let the same content
be loaded again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient, MongoClient

from mysimbdp.config import Settings
from tests.batch_support import drop, wait_outcome
from tests.conftest import ADMIN_TOKEN
from tests.harness.wait import await_until, wait_until
from tests.test_intake import APP_MODULE, CSV, put, start_env, write_tenant

Db = AsyncMongoClient[dict[str, Any]]
REPO = Path(__file__).resolve().parent.parent


def _csv(rows: int, start: int = 0, bad: frozenset[int] = frozenset()) -> bytes:
    """``id,name`` rows ``start ..``; the rows numbered in ``bad`` have a field too many (parse rejects)."""
    lines = [f"{i},name{i},extra" if i in bad else f"{i},name{i}" for i in range(start, start + rows)]
    return ("id,name\n" + "\n".join(lines) + "\n").encode()


#: 40 rows, two malformed: 38 documents and 2 rejects (5 %, under the default max_error_rate).
LOAD = _csv(40, bad=frozenset({5, 17}))
KEEP = _csv(10, start=1000)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def of_file(content: bytes) -> dict[str, Any]:
    """The documents of the file with this content: ``_id`` starts with ``<sha256[:20]>:``."""
    return {"_id": {"$regex": f"^{sha(content)[:20]}:"}}


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None) -> tuple[int, Any, str]:
    """One request: status, JSON answer (None if not JSON) and the raw text."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers) as resp:
        text = await resp.text()
    try:
        return resp.status, json.loads(text), text
    except ValueError:
        return resp.status, None, text


async def wait_undone(http: aiohttp.ClientSession, url: str, token: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``GET`` the file until its state is ``undone``; the answer."""
    async def undone() -> dict[str, Any] | None:
        status, body, _ = await call(http, "GET", url, token)
        assert status == 200, body
        assert body["state"] in ("committed", "undoing", "undone"), body
        return body if body["state"] == "undone" else None
    found: dict[str, Any] = await await_until(undone, timeout, f"{url} to be undone", 0.1)
    return found


async def ledger_entry(mongo: Db, entry_id: str) -> dict[str, Any]:
    entry = await mongo["mysimbdp"]["files"].find_one({"_id": entry_id})
    assert entry is not None, entry_id
    return entry


async def test_a_tenant_undoes_a_committed_file_and_may_load_it_again(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Db, events: list[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE})
    other = f"{tenant_id}x"
    write_tenant(settings, other, f"token-{other}")  # known to the daemon from its start
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings, formats=["csv"])
    status, loaded = await put(http, env, "load.csv", LOAD)
    assert status == 201, loaded
    status, kept = await put(http, env, "keep.csv", KEEP)
    assert status == 201, kept
    [entry] = await wait_outcome(mongo, tenant_id, "load.csv")
    [keep] = await wait_outcome(mongo, tenant_id, "keep.csv")
    assert entry["_id"] == loaded["id"] and (entry["state"], keep["state"]) == ("committed", "committed")
    assert (entry["records_written"], entry["records_rejected"], keep["records_written"]) == (38, 2, 10)
    db = mongo[f"tenant_{tenant_id}"]
    rows, rejects = db["rows"], db["_rejects"]
    assert await rows.count_documents(of_file(LOAD)) == 38
    assert await rows.count_documents(of_file(KEEP)) == 10
    assert await rejects.count_documents({"ledger_id": entry["_id"]}) == 2
    url = f"{env.url}/tenants/{tenant_id}/files/{entry['_id']}"

    # another tenant's token: refused, learns nothing of the file, and changes nothing
    status, _, text = await call(http, "DELETE", url, f"token-{other}")
    assert status == 403
    assert "load.csv" not in text and sha(LOAD) not in text and "records" not in text
    status, body, _ = await call(http, "DELETE", f"{env.url}/tenants/{other}/files/{entry['_id']}", f"token-{other}")
    assert (status, body["code"]) == (404, "unknown_file")  # not its file under its own id either
    assert (await call(http, "DELETE", url))[0] == 401
    assert (await ledger_entry(mongo, entry["_id"]))["state"] == "committed"
    assert await rows.count_documents(of_file(LOAD)) == 38

    status, body, _ = await call(http, "DELETE", url, env.token)
    assert status in (200, 202), body
    assert body["id"] == entry["_id"] and body["state"] == ("undone" if status == 200 else "undoing"), body
    seen = await wait_undone(http, url, env.token)
    assert (seen["documents_removed"], seen["rejects_removed"], seen["undo_by"]) == (38, 2, "tenant")

    # exactly the file's documents and rejects are gone; the other file's are all there
    assert await rows.count_documents(of_file(LOAD)) == 0
    assert await rows.count_documents({"file": "load.csv"}) == 0
    assert await rows.count_documents(of_file(KEEP)) == 10
    assert await rows.count_documents({}) == 10
    assert await rejects.count_documents({"ledger_id": entry["_id"]}) == 0
    undone = await ledger_entry(mongo, entry["_id"])
    assert undone["state"] == "undone"
    assert undone["documents_removed"] == entry["records_written"] == 38
    assert undone["rejects_removed"] == entry["records_rejected"] == 2
    assert (undone["undo_documents"], undone["undo_rejects"]) == (38, 2)
    assert undone["undo_by"] == "tenant" and isinstance(undone["undone_at"], datetime)
    assert undone["undone_at"] >= undone["committed_at"]
    assert (await ledger_entry(mongo, keep["_id"]))["state"] == "committed"
    by_event = {e["event"]: e for e in events if e.get("ledger_id") == entry["_id"]}
    assert {k: by_event["batch.file.undoing"][k] for k in ("tenant", "file", "by", "documents", "rejects")} == {
        "tenant": tenant_id, "file": "load.csv", "by": "tenant", "documents": 38, "rejects": 2}
    assert (by_event["batch.file.undone"]["documents"], by_event["batch.file.undone"]["rejects"]) == (38, 2)
    assert "batch.file.undo_failed" not in by_event

    # asking again: 200, and nothing changes
    status, body, _ = await call(http, "DELETE", url, env.token)
    assert (status, body["state"], body["documents_removed"]) == (200, "undone", 38), body
    assert await ledger_entry(mongo, entry["_id"]) == undone
    assert await rows.count_documents(of_file(KEEP)) == 10

    # the same content again: not refused as a duplicate, loaded again in full under a new id
    status, again = await put(http, env, "load.csv", LOAD)
    assert status == 201, again
    assert again["id"] != entry["_id"] and again["sha256"] == entry["sha256"]
    [reloaded] = await wait_outcome(mongo, tenant_id, "load.csv")
    assert reloaded["_id"] == again["id"] and reloaded["state"] == "committed", reloaded
    assert (reloaded["records_written"], reloaded["records_rejected"]) == (38, 2)
    assert await rows.count_documents(of_file(LOAD)) == 38
    assert await rows.count_documents({}) == 48
    assert await rejects.count_documents({"ledger_id": again["id"]}) == 2
    assert (await ledger_entry(mongo, entry["_id"]))["state"] == "undone"


async def test_an_operator_undoes_a_dropped_file_which_loads_again_when_put_back(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Db) -> None:
    """The admin token may undo (``undo_by`` "operator"); the very file (same inode, same
    modification time) moved back from the archive into staging is a new entry and loads again."""
    env = await start_env(start_daemon, settings_factory, tenant_id, formats=["csv"])
    drop(env.settings, tenant_id, "drop.csv", KEEP)
    [entry] = await wait_outcome(mongo, tenant_id, "drop.csv")
    assert entry["state"] == "committed", entry
    rows = mongo[f"tenant_{tenant_id}"]["rows"]
    assert await rows.count_documents(of_file(KEEP)) == 10
    url = f"{env.url}/tenants/{tenant_id}/files/{entry['_id']}"
    status, body, _ = await call(http, "DELETE", url, ADMIN_TOKEN)
    assert status in (200, 202), body
    seen = await wait_undone(http, url, env.token)
    assert (seen["undo_by"], seen["documents_removed"], seen["rejects_removed"]) == ("operator", 10, 0)
    assert await rows.count_documents({}) == 0

    archived = Path(entry["archive_path"])
    os.rename(archived, env.folder / "drop.csv")  # keeps the inode and the modification time

    async def loaded_again() -> dict[str, Any] | None:
        return await mongo["mysimbdp"]["files"].find_one(
            {"tenant": tenant_id, "name": "drop.csv", "state": {"$in": ["committed", "rejected"]}})
    again = await await_until(loaded_again, 30, "drop.csv loaded again", 0.1)
    assert again["_id"] != entry["_id"] and again["state"] == "committed", again
    assert again["records_written"] == 10
    assert await rows.count_documents(of_file(KEEP)) == 10
    assert (await ledger_entry(mongo, entry["_id"]))["state"] == "undone"


async def test_only_a_committed_file_of_the_tenant_is_undone(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Db) -> None:
    """409 ``not_committed`` for a staged file and for one rejected at admission; 404 for an unknown id."""
    # the watcher waits 30 s for a dropped or uploaded file to be stable: the upload stays staged
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE},
                                batch={"stable_after_s": 30, "rescan_interval_s": 0.5})
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings, formats=["csv"])
    status, staged = await put(http, env, "wait.csv", CSV)
    assert status == 201, staged
    target = env.settings.staging_dir.parent / "outside.csv"
    target.write_bytes(CSV)
    env.folder.mkdir(parents=True, exist_ok=True)
    os.symlink(target, env.folder / "link.csv")  # not a regular file: rejected at admission, at once
    [rejected] = await wait_outcome(mongo, tenant_id, "link.csv")
    assert (rejected["state"], rejected["code"]) == ("rejected", "not_regular"), rejected
    base = f"{env.url}/tenants/{tenant_id}/files"

    for entry_id, state in ((staged["id"], "staged"), (rejected["_id"], "rejected")):
        status, body, _ = await call(http, "DELETE", f"{base}/{entry_id}", env.token)
        assert (status, body["code"]) == (409, "not_committed"), body
        assert (await ledger_entry(mongo, entry_id))["state"] == state
    status, body, _ = await call(http, "DELETE", f"{base}/{'0' * 32}", env.token)
    assert (status, body["code"]) == (404, "unknown_file"), body
    status, body, _ = await call(http, "DELETE", f"{base}/{'0' * 32}", ADMIN_TOKEN)
    assert (status, body["code"]) == (404, "unknown_file"), body
    assert target.read_bytes() == CSV


async def test_the_cli_lists_and_undoes_a_file(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Db, tmp_path: Path) -> None:
    env = await start_env(start_daemon, settings_factory, tenant_id, formats=["csv"])
    status, body = await put(http, env, "cli.csv", LOAD)
    assert status == 201, body
    [entry] = await wait_outcome(mongo, tenant_id, "cli.csv")
    assert entry["state"] == "committed", entry
    token_file = tmp_path / "token"
    token_file.write_text(env.token)
    token_file.chmod(0o600)

    async def cli(*argv: str) -> tuple[int, list[str], str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from mysimbdp.cli import main; main()", "--config-dir", str(tmp_path),
            "files", *argv, "--tenant", tenant_id, "--token-file", str(token_file), "--url", env.url,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode().splitlines(), err.decode()

    code, lines, err = await cli("list")
    assert code == 0, err
    [line] = [line for line in lines if entry["_id"] in line]
    assert line.split() == [entry["_id"], "committed", "38", "cli.csv"]

    code, lines, err = await cli("undo", entry["_id"])
    assert code == 0, err
    assert lines[-1] == ("undone: cli.csv: 38 documents and 2 rejects removed; "
                         "the same content may be loaded again"), lines
    assert await mongo[f"tenant_{tenant_id}"]["rows"].count_documents(of_file(LOAD)) == 0
    assert await mongo[f"tenant_{tenant_id}"]["_rejects"].count_documents({"ledger_id": entry["_id"]}) == 0

    code, lines, err = await cli("list")
    assert code == 0, err
    [line] = [line for line in lines if entry["_id"] in line]
    assert line.split()[:2] == [entry["_id"], "undone"] and line.endswith("cli.csv")
    code, lines, err = await cli("undo", entry["_id"])  # again: already undone, at once
    assert code == 0 and lines[-1].startswith("undone: cli.csv: 38 documents"), (lines, err)
    code, lines, err = await cli("undo", "0" * 32)
    assert code == 1 and "(HTTP 404 unknown_file)" in err, (lines, err)



#: A file whose undo takes several chunks of 5,000 (``mysimbdp.batch.undo.CHUNK``): 12 of them.
BIG_ROWS = 25_000
OTHER_ROWS = 1_000


def _delete(url: str, token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def test_a_daemon_killed_mid_undo_finishes_it_at_restart(
        spawn_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo_uri: str) -> None:
    """SIGKILL while the file's documents are half removed: the next daemon on the same settings
    takes the ``undoing`` entry up and finishes it; exactly the file's documents are gone and the
    counts it ends with are the file's, not what the killed undo left. Asking again while the undo
    runs answers 202 and does not disturb it; the same content dropped meanwhile (another name)
    waits in staging until the undo is done, then loads in full."""
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE}, cluster={"lease_s": 3})
    token = f"token-{tenant_id}"
    write_tenant(settings, tenant_id, token, formats=["csv"])
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    try:
        files, rows = client["mysimbdp"]["files"], client[f"tenant_{tenant_id}"]["rows"]
        big, other = _csv(BIG_ROWS), _csv(OTHER_ROWS, start=10 * BIG_ROWS)
        dp = spawn_daemon(settings)
        drop(settings, tenant_id, "other.csv", other)
        drop(settings, tenant_id, "big.csv", big)

        def outcome(name: str) -> dict[str, Any] | None:
            return files.find_one({"tenant": tenant_id, "name": name, "state": {"$in": ["committed", "rejected"]}})
        entry = wait_until(lambda: outcome("big.csv"), 60, "big.csv loaded", 0.1, alive=dp.alive)
        kept = wait_until(lambda: outcome("other.csv"), 60, "other.csv loaded", 0.1, alive=dp.alive)
        assert (entry["state"], entry["records_written"]) == ("committed", BIG_ROWS), entry
        assert (kept["state"], kept["records_written"]) == ("committed", OTHER_ROWS), kept
        assert rows.count_documents({}) == BIG_ROWS + OTHER_ROWS

        url = f"{dp.url}/tenants/{tenant_id}/files/{entry['_id']}"
        status, first = _delete(url, token)
        assert (status, first["state"]) == (202, "undoing"), first
        status, again = _delete(url, token)  # asked again while it runs: the same undo goes on
        assert (status, again["state"], again["undoing_at"]) == (202, "undoing", first["undoing_at"]), again
        drop(settings, tenant_id, "big-again.csv", big)  # the same content: waits for the undo

        def half_removed() -> bool:  # at least a chunk gone, at most half of the file
            left = rows.estimated_document_count()
            assert left > OTHER_ROWS, "the undo finished before the kill: nothing was half done"
            return OTHER_ROWS + BIG_ROWS // 2 < left < OTHER_ROWS + BIG_ROWS
        wait_until(half_removed, 30, "the undo under way", 0.02, alive=dp.alive, where=f"; see {dp.logs[-1]}")
        dp.kill()
        left = rows.count_documents(of_file(big))
        assert 0 < left < BIG_ROWS, "the kill must land mid-undo"
        killed = files.find_one({"_id": entry["_id"]})
        assert killed is not None and killed["state"] == "undoing" and killed["undo_documents"] == BIG_ROWS, killed
        assert not dp.log.find("batch.file.undo_failed"), "asking again disturbed the running undo"

        dp.start()  # the same settings: the same instance, which takes its undo up at once
        done = wait_until(lambda: _unless_undoing(files.find_one({"_id": entry["_id"]})), 30,
                          "the undo to finish after the restart", 0.1, alive=dp.alive, where=f"; see {dp.logs[-1]}")
        assert done["state"] == "undone", done
        assert (done["documents_removed"], done["rejects_removed"], done["undo_by"]) == (BIG_ROWS, 0, "tenant")
        resumed = dp.log.find("batch.file.undoing", ledger_id=entry["_id"], resumed=True)
        assert resumed and resumed[-1]["documents"] == BIG_ROWS, resumed
        assert dp.log.find("batch.file.undone", ledger_id=entry["_id"], documents=BIG_ROWS)

        # the copy waited (it was neither rejected nor loaded while the undo ran), then loaded in full
        reloaded = wait_until(lambda: outcome("big-again.csv"), 60, "big-again.csv loaded", 0.1, alive=dp.alive)
        assert reloaded["state"] == "committed", reloaded
        assert (reloaded["records_written"], reloaded["duplicates"]) == (BIG_ROWS, 0), reloaded
        assert reloaded["loading_at"] >= done["undone_at"]
        assert files.count_documents({"tenant": tenant_id, "name": "big-again.csv"}) == 1
        # the undone file's documents: not one left (the copy's have the same _ids, and its own name)
        assert rows.count_documents({"file": "big.csv"}) == 0
        assert rows.count_documents({"file": "big-again.csv"}) == rows.count_documents(of_file(big)) == BIG_ROWS
        assert rows.count_documents(of_file(other)) == rows.count_documents({"file": "other.csv"}) == OTHER_ROWS
        assert rows.count_documents({}) == BIG_ROWS + OTHER_ROWS
        assert (files.find_one({"_id": kept["_id"]}) or {}).get("state") == "committed"
        assert files.find_one({"_id": entry["_id"]}) == done
    finally:
        client.close()


def _unless_undoing(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    assert entry is not None
    return None if entry["state"] == "undoing" else entry


async def test_an_undo_waits_for_a_replay_and_a_tenants_undos_run_in_turn(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Db) -> None:
    env = await start_env(start_daemon, settings_factory, tenant_id, formats=["csv"])
    ids = []
    for name, content in (("load.csv", LOAD), ("keep.csv", KEEP)):
        status, body = await put(http, env, name, content)
        assert status == 201, body
        ids.append(body["id"])
        await wait_outcome(mongo, tenant_id, name)
    base = f"{env.url}/tenants/{tenant_id}/files"
    files = mongo["mysimbdp"]["files"]
    # a replay of the file's rejects holds it (it writes into the file's ids): no undo meanwhile
    await files.update_one({"_id": ids[0]}, {"$set": {"replay_until": datetime.now().timestamp() + 60}})
    status, body, _ = await call(http, "DELETE", f"{base}/{ids[0]}", env.token)
    assert (status, body["code"]) == (409, "replay_running"), body
    assert (await ledger_entry(mongo, ids[0]))["state"] == "committed"
    await files.update_one({"_id": ids[0]}, {"$set": {"replay_until": 0.0}})
    # both of the tenant's files at once: one runs, the other waits its turn; both end undone
    for entry_id in ids:
        status, body, _ = await call(http, "DELETE", f"{base}/{entry_id}", env.token)
        assert status in (200, 202), body
    for entry_id in ids:
        done = await wait_undone(http, f"{base}/{entry_id}", env.token)
        assert done["documents_removed"] == (await ledger_entry(mongo, entry_id))["records_written"]
    assert await mongo[f"tenant_{tenant_id}"]["rows"].count_documents({}) == 0
