"""The file lifecycle: constraint violations with reason files, duplicates, malformed records,
failing apps, fair scheduling across tenants, onboarding and offboarding while running."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mysimbdp.config import Settings
from tests.batch_support import drop, flights_lines, wait_outcome, write_profile
from tests.harness.wait import await_until

APPS = {"batch_plain": "tests.plugins.batch_apps", "batch_raising": "tests.plugins.batch_raising",
        "batch_crashing": "tests.plugins.batch_crashing", "batch_slow": "tests.plugins.batch_slow"}


def _csv(rows: int, start: int = 0, width: int = 0) -> str:
    pad = "x" * width
    return "n,name\n" + "".join(f"{i},{pad}row{i}\n" for i in range(start, start + rows))


def _reason(settings: Settings, tenant: str, name: str) -> dict[str, Any]:
    path = settings.archive_dir / tenant / "rejected" / f"{name}.reason.json"
    assert (settings.archive_dir / tenant / "rejected" / name).exists() or Path(path).exists()
    return dict(json.loads(path.read_text()))


async def test_constraint_violations_are_rejected_with_reason_files(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, tenant_id, "batch_plain", formats=["csv", "csv.gz"], max_file_bytes=2000,
                  storage_quota_bytes=2500)
    await start_daemon(settings)
    drop(settings, tenant_id, "a.xml", "<a/>")
    drop(settings, tenant_id, "big.csv", _csv(100, width=20))
    drop(settings, tenant_id, "fake.csv.gz", _csv(3))
    drop(settings, tenant_id, "bomb.csv.gz", gzip.compress(_csv(5000).encode()))
    target = tmp_path / "outside.csv"
    target.write_text(_csv(3))
    os.symlink(target, settings.staging_dir / tenant_id / "link.csv")
    expected = {"a.xml": "format", "big.csv": "too_big", "fake.csv.gz": "content", "bomb.csv.gz": "too_big",
                "link.csv": "not_regular"}
    for name, code in expected.items():
        [entry] = await wait_outcome(mongo, tenant_id, name)
        assert (entry["state"], entry["code"]) == ("rejected", code), entry
        reason = _reason(settings, tenant_id, name)
        assert reason["code"] == code and reason["message"] and "records_in" in reason
    assert target.read_text() == _csv(3), "a symlink's target is never touched"
    assert (settings.archive_dir / tenant_id / "rejected" / "link.csv").is_symlink()

    first = _csv(120)  # ~1.2 kB: under max_file_bytes, and the quota holds only one such file
    drop(settings, tenant_id, "ok1.csv", first)
    [entry] = await wait_outcome(mongo, tenant_id, "ok1.csv")
    assert entry["state"] == "committed"
    drop(settings, tenant_id, "copy.csv", first)
    drop(settings, tenant_id, "ok2.csv", _csv(120, start=1000))
    [dup] = await wait_outcome(mongo, tenant_id, "copy.csv")
    assert dup["code"] == "duplicate" and _reason(settings, tenant_id, "copy.csv")["code"] == "duplicate"
    [quota] = await wait_outcome(mongo, tenant_id, "ok2.csv")
    assert quota["code"] == "over_quota"
    assert await mongo[f"tenant_{tenant_id}"].items.count_documents({}) == 120


async def test_too_many_staged_files(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
                                     tenant_id: str, mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, tenant_id, "batch_slow", max_staged_files=2, max_concurrent_files=1)
    for i in range(4):  # all there at start-up: the scan sees them together, oldest first
        drop(settings, tenant_id, f"f{i}.csv", _csv(300, start=i * 1000))
        os.utime(settings.staging_dir / tenant_id / f"f{i}.csv", (1000 + i, 1000 + i))
    await start_daemon(settings)
    states = {}
    for i in range(4):
        [entry] = await wait_outcome(mongo, tenant_id, f"f{i}.csv")
        states[f"f{i}.csv"] = entry.get("code") or entry["state"]
    assert states == {"f0.csv": "committed", "f1.csv": "committed", "f2.csv": "staging_full",
                      "f3.csv": "staging_full"}
    assert "wait for them to load" in _reason(settings, tenant_id, "f2.csv")["message"]


async def test_malformed_records_go_to_rejects_and_the_file_loads(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps=APPS)
    write_profile(settings, tenant_id, "batch_plain")
    await start_daemon(settings)
    rows = _csv(40).splitlines()
    rows[5] = "5,too,many"  # wrong field count
    rows[7] = "7,row7,extra"
    rows[9] = "bad-n,row9"  # the app's int() fails
    rows[11] = "-1,row11"  # the app's mysimbdp_batch_check refuses it
    drop(settings, tenant_id, "mixed.csv", "\n".join(rows) + "\n")
    lines = [json.dumps({"n": i, "name": f"j{i}"}) for i in range(30)]
    lines[3] = '{"n": 3, "name": '  # truncated JSON
    lines[4] = "[1, 2]"  # not an object
    lines.insert(6, json.dumps({"n": 99, "bad": "yes"}))
    lines.insert(7, json.dumps({"n": 98, "skip": "yes"}))
    drop(settings, tenant_id, "mixed.jsonl", "\ufeff" + "\n".join(lines) + "\n")

    [csv_entry] = await wait_outcome(mongo, tenant_id, "mixed.csv")
    assert csv_entry["state"] == "committed"
    assert (csv_entry["records_in"], csv_entry["records_rejected"], csv_entry["records_written"]) == (40, 4, 36)
    [jl] = await wait_outcome(mongo, tenant_id, "mixed.jsonl")
    assert jl["state"] == "committed"
    assert (jl["records_in"], jl["records_rejected"], jl["records_skipped"], jl["records_written"]) == (32, 3, 1, 28)
    rejects = {(r["file"], r["record_number"]): r async for r in mongo[f"tenant_{tenant_id}"]["_rejects"].find({})}
    assert rejects[("mixed.csv", 5)]["reason"] == "expected 2 fields, found 3"
    assert rejects[("mixed.csv", 5)]["raw"] == "5,too,many" and rejects[("mixed.csv", 5)]["kind"] == "parse"
    assert rejects[("mixed.csv", 9)]["raw"] == {"n": "bad-n", "name": "row9"}
    assert "ValueError" in rejects[("mixed.csv", 9)]["reason"]
    assert rejects[("mixed.csv", 11)]["reason"] == "n must not be negative"
    assert rejects[("mixed.csv", 11)]["kind"] == "check"
    assert "not valid JSON" in rejects[("mixed.jsonl", 4)]["reason"]
    assert "expected a JSON object" in rejects[("mixed.jsonl", 5)]["reason"]
    assert rejects[("mixed.jsonl", 7)]["reason"] == "bad is yes"


async def test_failing_apps_fail_their_files_only(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps=APPS)
    raising, crashing, healthy = f"{tenant_id}r", f"{tenant_id}c", f"{tenant_id}h"
    write_profile(settings, raising, "batch_raising")
    write_profile(settings, crashing, "batch_crashing")
    write_profile(settings, healthy, "flights")
    rd = await start_daemon(settings)
    drop(settings, raising, "r.csv", _csv(50))
    drop(settings, crashing, "c.csv", _csv(50))
    drop(settings, healthy, "h.csv", "".join(flights_lines(500)))
    [r] = await wait_outcome(mongo, raising, "r.csv")
    assert r["code"] == "error_rate" and r["records_rejected"] == 50
    assert "100.0%" in _reason(settings, raising, "r.csv")["message"]
    assert await mongo[f"tenant_{raising}"]["_rejects"].count_documents({"reason": {"$regex": "KeyError"}}) == 50
    [c] = await wait_outcome(mongo, crashing, "c.csv")
    assert c["code"] == "app_failed" and "SystemExit" in c["reason"]
    [h] = await wait_outcome(mongo, healthy, "h.csv")
    assert h["state"] == "committed" and h["records_written"] == 500
    assert rd.task.done() is False, "the daemon keeps running"


async def test_onboarding_and_offboarding_while_running(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps=APPS)
    rd = await start_daemon(settings)
    profile = write_profile(settings, tenant_id, "batch_plain")

    async def watched() -> bool:
        return tenant_id in rd.daemon.batch.health()["tenants"]

    await await_until(watched, what="tenant onboarded")
    drop(settings, tenant_id, "one.csv", _csv(10))
    [entry] = await wait_outcome(mongo, tenant_id, "one.csv")
    assert entry["state"] == "committed"

    profile.unlink()

    async def unwatched() -> bool:
        return not await watched()

    await await_until(unwatched, what="tenant offboarded")
    drop(settings, tenant_id, "two.csv", _csv(10, start=100))
    await asyncio.sleep(1.5)  # several rescans: nobody picks the file up
    assert (settings.staging_dir / tenant_id / "two.csv").exists()
    assert await mongo["mysimbdp"]["files"].count_documents({"tenant": tenant_id, "name": "two.csv"}) == 0
    assert await mongo[f"tenant_{tenant_id}"].items.count_documents({}) == 10, "the data stays"

    write_profile(settings, tenant_id, "batch_plain")  # back: the waiting file loads
    [entry] = await wait_outcome(mongo, tenant_id, "two.csv")
    assert entry["state"] == "committed"


async def test_a_tenants_big_file_does_not_hold_back_another_tenant(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5,
                                                        "max_concurrent_files": 2})
    big, small = f"{tenant_id}b", f"{tenant_id}s"
    write_profile(settings, big, "batch_slow", max_concurrent_files=4)
    write_profile(settings, small, "batch_plain")
    await start_daemon(settings)
    for i in range(3):
        drop(settings, big, f"big{i}.csv", _csv(1500, start=i * 10_000))
    await asyncio.sleep(0.6)
    drop(settings, small, "small.csv", _csv(5))
    [s] = await wait_outcome(mongo, small, "small.csv")
    assert s["state"] == "committed"
    # the big tenant may hold one of the two slots only: the small file did not wait for it
    first_big = await mongo["mysimbdp"]["files"].find_one({"tenant": big, "state": "committed"},
                                                         sort=[("committed_at", 1)])
    assert first_big is None or s["committed_at"] < first_big["committed_at"]


async def test_routes_pick_the_app_and_the_time_limit(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5,
                                                        "write_batch_size": 100})
    route = {"pattern": "slow-*.csv", "app": "batch_slow", "max_concurrent_files": 1, "timeout_s": 0.8}
    write_profile(settings, tenant_id, "batch_plain", routes=[route])
    await start_daemon(settings)
    drop(settings, tenant_id, "slow-big.csv", _csv(3000))  # ~3 s of work for a 0.8 s limit
    drop(settings, tenant_id, "quick.csv", _csv(10, start=5000))
    [slow] = await wait_outcome(mongo, tenant_id, "slow-big.csv")
    assert (slow["state"], slow["code"], slow["app"]) == ("rejected", "timeout", "batch_slow")
    assert "0.8 s" in _reason(settings, tenant_id, "slow-big.csv")["message"]
    [quick] = await wait_outcome(mongo, tenant_id, "quick.csv")
    assert (quick["state"], quick["app"]) == ("committed", "batch_plain")
    # the timed-out file's documents were removed: a rejected file leaves nothing behind
    assert await mongo[f"tenant_{tenant_id}"].records.count_documents({}) == 0
    assert await mongo[f"tenant_{tenant_id}"].items.count_documents({}) == 10


async def test_a_long_load_logs_its_progress(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """``batch.file.progress`` follows a load from write to write, counts only growing, the
    last one short of (or at) the committed counts."""
    settings = settings_factory(extra_apps=APPS, batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5,
                                                        "write_batch_size": 100, "progress_interval_s": 0.001})
    write_profile(settings, tenant_id, "batch_plain")
    await start_daemon(settings)
    drop(settings, tenant_id, "long.csv", _csv(2000))
    [entry] = await wait_outcome(mongo, tenant_id, "long.csv")
    assert entry["state"] == "committed"
    events = [json.loads(line) for line in settings.log_file.read_text().splitlines()]
    progress = [e for e in events if e["event"] == "batch.file.progress" and e.get("tenant") == tenant_id]
    assert len(progress) >= 5
    assert {e["file"] for e in progress} == {"long.csv"} and {e["ledger_id"] for e in progress} == {entry["_id"]}
    written = [e["records_written"] for e in progress]
    assert written == sorted(written) and 0 < written[0] and written[-1] <= 2000
    assert all(e["records_in"] >= e["records_written"] and e["seconds"] >= 0 for e in progress)
    [committed] = [e for e in events if e["event"] == "batch.file.committed" and e.get("tenant") == tenant_id]
    assert committed["records_written"] == 2000


TARGET_APPS = {"batch_targets": "tests.plugins.batch_targets"}


@pytest.mark.skipif(bool(os.environ.get("MYSIMBDP_TEST_MONGO_URI")),
                    reason="only the embedded store refuses the collection name 'bad-name'")
async def test_a_write_the_store_refuses_for_good_rejects_the_records_at_once(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """The embedded store refuses every insert into ``bad-name``: each record is a ``write``
    reject with the store's reason, and the file fails on its error rate, never retried."""
    tenant = f"{tenant_id}-dash"
    settings = settings_factory(extra_apps=TARGET_APPS)
    write_profile(settings, tenant, "batch_targets")
    await start_daemon(settings)
    drop(settings, tenant, "rows.csv", _csv(5))
    [entry] = await wait_outcome(mongo, tenant, "rows.csv", timeout=30)
    assert (entry["state"], entry["code"], entry["records_rejected"]) == ("rejected", "error_rate", 5)
    rejects = [r async for r in mongo[f"tenant_{tenant}"]["_rejects"].find({}).sort("record_number", 1)]
    assert [r["record_number"] for r in rejects] == [1, 2, 3, 4, 5]
    assert all(r["kind"] == "write" and "Invalid identifier" in r["reason"] for r in rejects)
    assert rejects[0]["raw"] == {"n": "0", "name": "row0"} and rejects[0]["document_id"].endswith(":1")


async def test_a_batch_app_targeting_rejects_fails_the_file(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    tenant = f"{tenant_id}-rejects"
    settings = settings_factory(extra_apps=TARGET_APPS)
    write_profile(settings, tenant, "batch_targets")
    await start_daemon(settings)
    drop(settings, tenant, "rows.csv", _csv(5))
    [entry] = await wait_outcome(mongo, tenant, "rows.csv", timeout=30)
    assert (entry["state"], entry["code"]) == ("rejected", "app_failed")
    assert "declares an invalid target collection '_rejects'" in entry["reason"]
    assert await mongo[f"tenant_{tenant}"]["_rejects"].count_documents({}) == 0


async def test_two_instances_on_one_staging_folder_load_each_file_once(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    """Two daemons watch one folder: the ledger's claim, not the watcher, decides who loads a file.
    Before claims, both loaded a file and the loser rolled back the winner's committed records."""
    batch = {"stable_after_s": 0.2, "rescan_interval_s": 0.5, "max_concurrent_files": 2}
    a = settings_factory(extra_apps=APPS, instance_id="inst-a", batch=batch)
    b = settings_factory(extra_apps=APPS, instance_id="inst-b", var_dir=tmp_path / "var-b", batch=batch)
    write_profile(a, tenant_id, "batch_slow", max_concurrent_files=3, max_staged_files=100)
    names = [f"f{i:02d}.csv" for i in range(12)]
    for i, name in enumerate(names):
        drop(a, tenant_id, name, _csv(150, start=i * 1000))
    await asyncio.gather(start_daemon(a), start_daemon(b))
    for name in names:
        [entry] = await wait_outcome(mongo, tenant_id, name, timeout=120)
        assert entry["state"] == "committed" and entry["records_written"] == 150, entry
    files = mongo["mysimbdp"]["files"]
    entries = [d async for d in files.find({"tenant": tenant_id})]
    assert sorted(d["name"] for d in entries) == names  # one entry per file, none rejected
    owners = {d["owner"] for d in entries}
    assert owners == {"inst-a", "inst-b"}, "the work is shared"
    archived = [p.name for s in (a, b) for p in (s.archive_dir / tenant_id / "done").glob("*.csv")]
    assert sorted(archived) == names  # one archive copy of each file, in its loader's archive
    assert await mongo[f"tenant_{tenant_id}"].records.count_documents({}) == 12 * 150
    assert sorted({d["n"] async for d in mongo[f"tenant_{tenant_id}"].records.find({}, {"n": 1})}) == sorted(
        i * 1000 + r for i in range(12) for r in range(150))
    assert not list((a.staging_dir / tenant_id).glob("*.csv"))


async def test_a_file_taken_over_meanwhile_is_left_to_the_new_owner(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """The fencing: while this instance loads, another takes the file over in the ledger (as it
    would after this one paused past its lease). This one stops: no commit, no archive, no
    rollback of what the other writes, and it says why."""
    settings = settings_factory(extra_apps=APPS, instance_id="inst-a", cluster={"lease_s": 2, "heartbeat_s": 0.2})
    write_profile(settings, tenant_id, "batch_slow")
    await start_daemon(settings)
    drop(settings, tenant_id, "slow.csv", _csv(3000))
    files = mongo["mysimbdp"]["files"]
    entry = await await_until(lambda: files.find_one({"tenant": tenant_id, "state": "loading"}), 30,
                              "the file to load", 0.05)
    await await_until(lambda: mongo[f"tenant_{tenant_id}"].records.find_one({}), 30, "a first write", 0.05)
    taken = await files.find_one_and_update({"_id": entry["_id"], "lease": entry["lease"]},
                                            {"$set": {"owner": "inst-b", "lease_until": 4e9}, "$inc": {"lease": 1}})
    assert taken is not None
    lost = await await_until(lambda: [e for e in events if e["event"] == "batch.file.lease_lost"] or None, 10,
                             "batch.file.lease_lost", 0.05)
    assert lost[0]["owner"] == "inst-b" and lost[0]["step"] == "renew" and lost[0]["ledger_id"] == entry["_id"]
    await asyncio.sleep(1.0)
    after = await files.find_one({"_id": entry["_id"]})
    assert after is not None and (after["state"], after["owner"], after["lease"]) == ("loading", "inst-b",
                                                                                      entry["lease"] + 1)
    names = {e["event"] for e in events if e.get("file") == "slow.csv"}
    assert not names & {"batch.file.committed", "batch.file.rejected", "batch.file.rolled_back",
                        "batch.file.interrupted"}, names
    assert (settings.staging_dir / tenant_id / "slow.csv").exists()  # the new owner archives it
    assert not (settings.archive_dir / tenant_id / "done").exists() or not list(
        (settings.archive_dir / tenant_id / "done").iterdir())
    assert await mongo[f"tenant_{tenant_id}"].records.count_documents({}) > 0  # nothing rolled back


async def test_renewing_while_settling_is_no_lost_lease(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Claims renewed all the time: a renewal that meets a file this instance has just committed
    (no longer ``loading``) is no lost lease; it neither logs one nor stops the commit before
    its archive and its ``batch.file.committed``."""
    settings = settings_factory(extra_apps=APPS, instance_id="inst-a", cluster={"heartbeat_s": 0.01},
                                batch={"stable_after_s": 0.1, "rescan_interval_s": 0.3, "max_concurrent_files": 4})
    write_profile(settings, tenant_id, "batch_plain", max_concurrent_files=4, max_staged_files=100)
    names = [f"r{i:02d}.csv" for i in range(16)]
    for i, name in enumerate(names):
        drop(settings, tenant_id, name, _csv(40, start=i * 100))
    await start_daemon(settings)
    for name in names:
        await wait_outcome(mongo, tenant_id, name, timeout=60)
    await await_until(lambda: sum(e["event"] in ("batch.file.committed", "batch.file.rejected") for e in events)
                      >= len(names) or None, 30, "an outcome event for every file", 0.05)
    assert not [e for e in events if e["event"] in ("batch.file.lease_lost", "batch.file.interrupted")]
    committed = sorted(e["file"] for e in events if e["event"] == "batch.file.committed")
    assert committed == names
    assert sorted(p.name for p in (settings.archive_dir / tenant_id / "done").glob("*.csv")) == committed
