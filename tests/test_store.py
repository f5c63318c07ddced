"""The store: the embedded server's life cycle and idempotent writes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mysimbdp.store.embedded import StoreTuning
from mysimbdp.store.mongo import EmbeddedMongo, Store, free_port
from mysimbdp.store.writes import _clash_on_id, insert_idempotent


async def test_embedded_persists_across_restart(tmp_path: Path) -> None:
    store = Store(None, tmp_path)
    await store.start()
    assert store.up
    await store.tenant_db("acme")["things"].insert_one({"_id": 1, "v": "kept"})
    pid = store.embedded.pid  # type: ignore[union-attr]
    await store.stop()
    assert not Path(f"/proc/{pid}").exists()

    again = Store(None, tmp_path)
    await again.start()
    try:
        assert await again.tenant_db("acme")["things"].find_one({"_id": 1}) == {"_id": 1, "v": "kept"}
        assert (tmp_path / "store").is_dir()
    finally:
        await again.stop()


async def test_stale_embedded_server_is_replaced(tmp_path: Path) -> None:
    """A store left by a daemon killed hard is stopped before a new one starts."""
    first = EmbeddedMongo(tmp_path / "store", tmp_path / "store.log")
    first.data_dir.mkdir(parents=True)
    orphan = subprocess.Popen(first.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if first.pid_file.exists():
            break
        await asyncio.sleep(0.05)
    second = EmbeddedMongo(tmp_path / "store", tmp_path / "store.log")
    await second.start()
    try:
        assert orphan.wait(10) is not None
    finally:
        await second.stop()


def test_embedded_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL of the process that started the store leaves no orphan store."""
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from mysimbdp.store.mongo import EmbeddedMongo\n"
        "async def main():\n"
        f"    m = EmbeddedMongo(Path({str(tmp_path)!r}) / 'store', Path({str(tmp_path)!r}) / 'log')\n"
        "    await m.start()\n"
        "    print('PID', m.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = ""
    while not line.startswith("PID "):
        line = parent.stdout.readline()
    child_pid = int(line.split()[1])
    assert Path(f"/proc/{child_pid}").exists()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        if not _alive(child_pid):
            break
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_unreachable_store_is_reported_not_raised(tmp_path: Path) -> None:
    store = Store("mongodb://127.0.0.1:1/", tmp_path)
    await store.start()
    try:
        assert store.up is False
        assert store.health()["reason"]
    finally:
        await store.stop()


async def test_insert_idempotent_counts_duplicates(mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str) -> None:
    coll = mongo[f"tenant_{tenant_id}"]["records"]
    docs = [{"_id": f"f:{i}", "n": i} for i in range(50)]
    first = await insert_idempotent(coll, docs[:30])
    assert (first.written, first.duplicates) == (30, 0)
    again = await insert_idempotent(coll, docs)
    assert (again.written, again.duplicates) == (20, 30)
    assert await coll.count_documents({}) == 50


async def test_insert_idempotent_a_unique_index_clash_is_a_failure_not_a_duplicate(
        mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str) -> None:
    """Only an ``_id`` already present is a duplicate; another unique index refusing a new
    ``_id`` is reported in ``failed`` (a redelivered document clashing on both is a duplicate)."""
    coll = mongo[f"tenant_{tenant_id}"]["records"]
    await coll.create_index([("code", 1)], unique=True)
    await coll.create_index([("a", 1), ("b", 1)], unique=True)
    first = await insert_idempotent(coll, [{"_id": "m1", "code": "A", "a": 1, "b": 1}])
    assert (first.written, first.duplicates, first.failed) == (1, 0, [])
    docs = [
        {"_id": "m1", "code": "A", "a": 1, "b": 1},   # the same document again (all indexes clash)
        {"_id": "m2", "code": "A", "a": 2, "b": 2},   # a new document with a taken code
        {"_id": "m3", "code": "C", "a": 3, "b": 3},   # a new document
        {"_id": "m4", "code": "D", "a": 1, "b": 1},   # a new document clashing on the compound index
        {"_id": "m5", "code": "C", "a": 5, "b": 5},   # clashes with m3 of the same batch
        {"_id": "m1", "code": "Z", "a": 9, "b": 9},   # a taken _id only
    ]
    result = await insert_idempotent(coll, docs)
    assert (result.written, result.duplicates) == (1, 2)
    assert [i for i, _ in result.failed] == [1, 3, 4]
    assert all("unique index" in reason for _, reason in result.failed)
    assert sorted([d["_id"] async for d in coll.find({})]) == ["m1", "m3"]


@pytest.mark.parametrize(("error", "on_id"), [
    ({"code": 11000, "keyPattern": {"_id": 1}, "keyValue": {"_id": "m1"},
      "errmsg": "E11000 duplicate key error collection: t.records index: _id_ dup key: { _id: \"m1\" }"}, True),
    ({"code": 11000, "keyPattern": {"code": 1}, "keyValue": {"code": "A"},
      "errmsg": "E11000 duplicate key error collection: t.records index: code_1 dup key: { code: \"A\" }"}, False),
    ({"code": 11000, "errmsg": "E11000 duplicate key error collection: t.records index: _id_ dup key: { _id: 1 }"},
     True),
    ({"code": 11000, "errmsg": "UNIQUE constraint failed: records._id"}, True),
    ({"code": 11000, "errmsg": "UNIQUE constraint failed: index 'idx_records_code'"}, False),
])
def test_clash_on_id_reads_both_servers_errors(error: dict[str, Any], on_id: bool) -> None:
    """The shapes of MongoDB's (keyPattern, errmsg) and NX-27017's (errmsg only) duplicate-key errors."""
    assert _clash_on_id(error) is on_id


@pytest.mark.parametrize("n", [0])
async def test_insert_idempotent_empty(mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str, n: int) -> None:
    result = await insert_idempotent(mongo[f"tenant_{tenant_id}"]["records"], [])
    assert (result.written, result.duplicates, result.failed) == (0, 0, [])


async def test_embedded_store_restarts_after_a_crash(tmp_path: Path) -> None:
    store = Store(None, tmp_path, check_interval_s=0.2)
    await store.start()
    try:
        await store.tenant_db("acme")["things"].insert_one({"_id": 1})
        first_pid = store.embedded.pid  # type: ignore[union-attr]
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        for _ in range(150):
            await asyncio.sleep(0.1)
            if store.embedded.pid != first_pid and store.up:  # type: ignore[union-attr]
                break
        assert store.embedded.pid != first_pid  # type: ignore[union-attr]
        assert store.up
        assert await store.tenant_db("acme")["things"].count_documents({}) == 1
    finally:
        await store.stop()


async def test_insert_idempotent_refuses_what_mongodb_would(mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str) -> None:
    """Too large or unencodable documents are reported by index; the others are written."""
    coll = mongo[f"tenant_{tenant_id}"]["records"]
    docs = [{"_id": "ok-1"}, {"_id": "big", "x": "y" * (16 * 1024 * 1024)}, {"_id": "int", "n": 2**70},
            {"_id": "ok-2"}]
    result = await insert_idempotent(coll, docs)
    assert result.written == 2
    assert [i for i, _ in result.failed] == [1, 2]
    assert "16777216" in result.failed[0][1]
    assert sorted([d["_id"] async for d in coll.find({})]) == ["ok-1", "ok-2"]


async def test_embedded_store_that_cannot_start_is_reported_and_retried(tmp_path: Path) -> None:
    """Its data folder is unusable (a file stands there): the store starts down with the reason,
    and once the folder can be made, a later attempt starts the server."""
    (tmp_path / "store").write_text("not a folder")
    store = Store(None, tmp_path, check_interval_s=0.2)
    await store.start()
    try:
        assert store.up is False
        assert "embedded store failed to start" in str(store.health()["reason"])
        (tmp_path / "store").unlink()
        for _ in range(200):
            await asyncio.sleep(0.1)
            if store.up:
                break
        assert store.up, store.reason
        await store.tenant_db("acme")["things"].insert_one({"_id": 1})
        assert await store.tenant_db("acme")["things"].count_documents({}) == 1
    finally:
        await store.stop()


async def test_embedded_store_listens_on_its_port_and_says_where(tmp_path: Path) -> None:
    """The configured port, and the URI written to <var>/store/uri for analysts; a second
    store wanting the same port is down with a reason that names the setting."""
    port = free_port()
    store = Store(None, tmp_path / "a", port=port)
    await store.start()
    try:
        assert store.up and store.uri == f"mongodb://127.0.0.1:{port}/"
        assert (tmp_path / "a" / "store" / "uri").read_text() == store.uri + "\n"
        other = Store(None, tmp_path / "b", port=port, check_interval_s=60)
        await other.start()
        try:
            assert other.up is False and "MYSIMBDP_STORE_PORT" in str(other.reason)
            assert not (tmp_path / "b" / "store" / "uri").exists()
        finally:
            await other.stop()
    finally:
        await store.stop()


async def test_insert_idempotent_splits_large_batches_into_several_commands(
        mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bytes or documents one command may carry, the documents go in several
    commands; each command's write errors keep their position in the whole batch."""
    from mysimbdp.store import writes as store

    coll = mongo[f"tenant_{tenant_id}"]["records"]
    await coll.create_index([("code", 1)], unique=True)
    await insert_idempotent(coll, [{"_id": "f:7", "code": "c7"}, {"_id": "other", "code": "taken"}])
    sent: list[int] = []
    real = store._insert_command

    async def counting(collection: Any, raws: Any) -> Any:
        sent.append(len(raws))
        return await real(collection, raws)

    monkeypatch.setattr(store, "_insert_command", counting)
    monkeypatch.setattr(store, "COMMAND_MAX_DOCUMENTS", 4)
    docs: list[dict[str, Any]] = [{"_id": f"f:{i}", "code": f"c{i}"} for i in range(10)]
    docs[9]["code"] = "taken"  # a new _id refused by the unique index, in the third command
    result = await insert_idempotent(coll, docs)
    assert sent == [4, 4, 2]
    assert (result.written, result.duplicates) == (8, 1)  # f:7 was there already
    assert [i for i, _ in result.failed] == [9]
    assert await coll.count_documents({}) == 10

    sent.clear()
    monkeypatch.setattr(store, "COMMAND_MAX_DOCUMENTS", 100_000)
    monkeypatch.setattr(store, "COMMAND_MAX_BYTES", 100)  # each document is ~30 bytes
    result = await insert_idempotent(coll, [{"_id": f"g:{i}", "code": f"d{i}"} for i in range(7)])
    assert sent == [3, 3, 1]
    assert (result.written, result.duplicates, result.failed) == (7, 0, [])


def test_command_slices_put_a_document_over_the_bytes_bound_alone() -> None:
    from mysimbdp.store import writes as store

    small, big = 20, store.COMMAND_MAX_BYTES + 1
    assert list(store._command_slices([small, big, small])) == [(0, 1), (1, 2), (2, 3)]
    assert list(store._command_slices([small] * 3)) == [(0, 3)]
    assert list(store._command_slices([store.COMMAND_MAX_BYTES // 2 + 1] * 3)) == [(0, 1), (1, 2), (2, 3)]


def _pragmas(conn: Any) -> dict[str, Any]:
    return {name: conn.db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("cache_size", "page_size", "wal_autocheckpoint", "journal_size_limit", "journal_mode",
                         "synchronous", "auto_vacuum")}


def test_the_embedded_stores_connections_get_the_platforms_tuning(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every database NX-27017 opens gets the page cache and checkpoint interval asked for; a
    new one gets the page size too, an existing one keeps its own; WAL mode with ``synchronous
    = NORMAL`` (1) and incremental auto-vacuum (2) stay as NX-27017 sets them."""
    from neosqlite import Connection

    from mysimbdp.store.embedded import configure_connections

    monkeypatch.setattr(Connection, "_configure_connection", Connection._configure_connection)
    before = Connection(str(tmp_path / "before.db"))
    before.db.execute("CREATE TABLE t (x)")
    assert _pragmas(before) == {"cache_size": -2000, "page_size": 4096, "wal_autocheckpoint": 1000,
                                "journal_size_limit": -1, "journal_mode": "wal", "synchronous": 1, "auto_vacuum": 2}
    before.close()
    tuning = StoreTuning(cache_mib=32, page_size=1024, wal_autocheckpoint=5000, journal_size_limit_mib=2)
    assert configure_connections(tuning)
    assert configure_connections(StoreTuning())  # once only, however often it is asked: the first stays
    new = Connection(str(tmp_path / "after.db"))
    old = Connection(str(tmp_path / "before.db"))
    try:
        assert _pragmas(new) == {"cache_size": -32 * 1024, "page_size": 1024, "wal_autocheckpoint": 5000,
                                 "journal_size_limit": 2 * 1024 * 1024, "journal_mode": "wal", "synchronous": 1,
                                 "auto_vacuum": 2}
        new["c"].insert_one({"_id": "a", "n": 1})
        assert new["c"].find_one({"_id": "a"})["n"] == 1
        assert {**_pragmas(old), "page_size": 0} == {**_pragmas(new), "page_size": 0}
        assert _pragmas(old)["page_size"] == 4096  # a database with tables keeps its pages
    finally:
        new.close()
        old.close()


def test_store_tuning_goes_through_the_command_line() -> None:
    tuning = StoreTuning(cache_mib=8, page_size=4096, wal_autocheckpoint=1000, journal_size_limit_mib=1)
    args = [*tuning.args(), "--data-dir", "d", "--port", "1"]
    assert StoreTuning.from_args(args) == (tuning, ["--data-dir", "d", "--port", "1"])
    assert StoreTuning.from_args(["--port", "1"]) == (StoreTuning(), ["--port", "1"])


async def test_the_embedded_store_runs_with_its_page_cache(tmp_path: Path) -> None:
    store = EmbeddedMongo(tmp_path / "store", tmp_path / "store.log", tuning=StoreTuning(cache_mib=8))
    assert store.command()[1:5] == ["-m", "mysimbdp.store.embedded", "--cache-mib", "8"]
    await store.start()
    try:
        cmdline = Path(f"/proc/{store.pid}/cmdline").read_bytes().split(b"\0")
        assert b"mysimbdp.store.embedded" in cmdline and b"--data-dir" in cmdline
    finally:
        await store.stop()
