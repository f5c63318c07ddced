"""A daemon killed (SIGKILL) in the middle of a file resumes it at the next start: every record exactly once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from structlog.testing import capture_logs

from mysimbdp.config import Settings
from mysimbdp.store.mongo import EmbeddedMongo
from tests.batch_support import drop, write_profile
from tests.harness.wait import await_until, wait_until

ROWS = 4000


def _settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(extra_apps={"batch_slow": "tests.plugins.batch_slow"},
                            batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5, "write_batch_size": 200})


@dataclass
class Crash:
    """A tenant with the slow test app, and a client of the store to watch its load."""

    settings: Settings
    client: MongoClient[dict[str, Any]]
    tenant: str

    @property
    def items(self) -> Any:
        """The app's collection."""
        return self.client[f"tenant_{self.tenant}"]["records"]

    @property
    def files(self) -> Any:
        """The file ledger."""
        return self.client["mysimbdp"]["files"]


@pytest.fixture
def crash(settings_factory: Callable[..., Settings], tenant_id: str, mongo_uri: str) -> Iterator[Crash]:
    settings = _settings(settings_factory)
    write_profile(settings, tenant_id, "batch_slow")
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    try:
        yield Crash(settings, client, tenant_id)
    finally:
        client.close()


def _kill_mid_file(spawn_daemon: Callable[..., Any], settings: Settings, tenant: str,
                   client: MongoClient[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """Drop ``numbers.csv``, SIGKILL the daemon a quarter of the way in; its ledger entry, documents written."""
    items = client[f"tenant_{tenant}"]["records"]
    dp = spawn_daemon(settings)
    drop(settings, tenant, "numbers.csv", "n\n" + "".join(f"{i}\n" for i in range(ROWS)))
    wait_until(lambda: items.count_documents({}) >= ROWS // 4, 60, "a quarter of the file loaded", 0.05,
               alive=dp.alive, where=f"; see {dp.logs[-1]}")
    dp.kill()
    written_before = items.count_documents({})
    assert 0 < written_before < ROWS, "the kill must land mid-file"
    [entry] = list(client["mysimbdp"]["files"].find({"tenant": tenant}))
    assert entry["state"] == "loading"
    return entry, written_before


def _restart_until_done(spawn_daemon: Callable[..., Any], settings: Settings, files: Any,
                        entry: dict[str, Any]) -> dict[str, Any]:
    dp = spawn_daemon(settings)
    done: dict[str, Any] = wait_until(lambda: _unless_loading(files.find_one({"_id": entry["_id"]})), 90,
                                      "the resumed file to finish", 0.1, alive=dp.alive, where=f"; see {dp.logs[-1]}")
    return done


def _unless_loading(entry: dict[str, Any]) -> dict[str, Any] | None:
    return None if entry["state"] == "loading" else entry


def test_kill_mid_file_then_resume_loads_each_record_once(
        spawn_daemon: Callable[..., Any], crash: Crash, tenant_id: str) -> None:
    settings, client = crash.settings, crash.client
    items, files = crash.items, crash.files
    entry, written_before = _kill_mid_file(spawn_daemon, settings, tenant_id, client)
    done = _restart_until_done(spawn_daemon, settings, files, entry)
    assert done["state"] == "committed", done
    assert done["attempts"] == 2
    assert done["records_in"] == ROWS
    assert done["records_written"] + done["duplicates"] == ROWS
    assert done["duplicates"] >= written_before
    assert items.count_documents({}) == ROWS
    assert sorted(d["n"] for d in items.find({}, {"n": 1})) == list(range(ROWS))
    assert files.count_documents({"tenant": tenant_id}) == 1
    log = (settings.var_dir / "log" / "mysimbdp.jsonl").read_text()
    assert '"event":"batch.file.resumed"' in log


def test_a_resumed_file_is_not_refused_by_limits_edited_meanwhile(
        spawn_daemon: Callable[..., Any], crash: Crash, tenant_id: str) -> None:
    """The file was admitted before the crash: a quota and a staged-files limit lowered while the
    daemon was down apply to new files, not to the one resuming (it ends with every record once)."""
    settings, client = crash.settings, crash.client
    items, files = crash.items, crash.files
    entry, _ = _kill_mid_file(spawn_daemon, settings, tenant_id, client)
    write_profile(settings, tenant_id, "batch_slow", storage_quota_bytes=1000, max_staged_files=1)
    # a new file: refused by the lowered limits (which one first depends on the order of hand-over)
    drop(settings, tenant_id, "new.csv", "n\n" + "".join(f"{i}\n" for i in range(ROWS, ROWS + 300)))
    done = _restart_until_done(spawn_daemon, settings, files, entry)
    assert done["state"] == "committed", done
    assert done["attempts"] == 2 and done["records_in"] == ROWS
    assert items.count_documents({}) == ROWS
    assert sorted(d["n"] for d in items.find({}, {"n": 1})) == list(range(ROWS))
    new = wait_until(lambda: files.find_one({"tenant": tenant_id, "name": "new.csv", "state": "rejected"}), 30,
                     "new.csv rejected", 0.1)
    assert new["code"] in ("over_quota", "staging_full"), new


def test_a_resumed_file_refused_at_restart_leaves_no_documents(
        spawn_daemon: Callable[..., Any], crash: Crash, tenant_id: str) -> None:
    """The tenant's profile names an app that is not installed when the file resumes: the file is
    rejected (``no_app``) and the documents of its first pass are removed."""
    settings, client = crash.settings, crash.client
    items, files = crash.items, crash.files
    entry, written_before = _kill_mid_file(spawn_daemon, settings, tenant_id, client)
    assert written_before > 0
    write_profile(settings, tenant_id, "not_installed")
    done = _restart_until_done(spawn_daemon, settings, files, entry)
    assert (done["state"], done["code"]) == ("rejected", "no_app"), done
    assert items.count_documents({}) == 0
    assert (settings.archive_dir / tenant_id / "rejected" / "numbers.csv").is_file()
    log = (settings.var_dir / "log" / "mysimbdp.jsonl").read_text()
    assert '"event":"batch.file.rolled_back"' in log


async def test_a_store_outage_past_the_write_deadline_defers_the_file_which_resumes(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        tmp_path: Path) -> None:
    """The store stops mid-file: the loader retries its write for ``write_retry_deadline_s``,
    then the file is deferred (not held until its timeout rejects it); once the store is back
    the file resumes and every record is in the collection exactly once."""
    server = EmbeddedMongo(tmp_path / "store", tmp_path / "store.log")
    await server.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=500)
    try:
        settings = settings_factory(
            extra_apps={"batch_slow": "tests.plugins.batch_slow"}, mongo_uri=server.uri,
            batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5, "write_batch_size": 100,
                   "write_retry_deadline_s": 1.0})
        write_profile(settings, tenant_id, "batch_slow")
        await start_daemon(settings)
        records = client[f"tenant_{tenant_id}"]["records"]
        with capture_logs() as events:
            drop(settings, tenant_id, "slow.csv", "n\n" + "".join(f"{i}\n" for i in range(ROWS)))
            await await_until(lambda: _more_than(records, 200), what="the load under way")
            await server.stop()

            async def deferred() -> bool:
                return any(e["event"] == "batch.file.deferred" for e in events)
            await await_until(deferred, timeout=30, what="the file deferred")
            assert any(e["event"] == "batch.store_retry" for e in events)
        await server.start()

        async def committed() -> bool:
            entry = await client["mysimbdp"]["files"].find_one({"tenant": tenant_id, "name": "slow.csv"})
            return entry is not None and entry.get("state") == "committed"
        await await_until(committed, timeout=90, what="the file resumed and committed")
        assert await records.count_documents({}) == ROWS
        assert sorted([d["n"] async for d in records.find({}, {"n": 1})]) == list(range(ROWS))
    finally:
        await client.close()
        await server.stop()


async def _more_than(collection: Any, n: int) -> bool:
    try:
        return bool(await collection.count_documents({}) > n)
    except Exception:
        return False
