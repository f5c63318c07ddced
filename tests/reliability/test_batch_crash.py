"""Guarantee 1: a committed file's records are in the database exactly once, even when the
daemon is SIGKILLed at random points while loading and started again.

The daemon runs as a child process against the session's store. Each of ``rounds`` rounds
starts it, waits for a random point (a random number of documents written, or a random
delay that may fall before loading starts or while the files are committed) and SIGKILLs
it. Then it is started one last time and must commit every file; the checker counts each
file's keys.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.harness.daemon import Daemon
from tests.harness.wait import wait_until
from tests.reliability.checker import tally
from tests.reliability.harness import suite_settings, write_csv, write_jsonl, write_tenant
from tests.reliability.results import record

GUARANTEE = "1. batch exactly once"


@pytest.fixture
def db(mongo_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    yield client
    client.close()


def _stage(folder: Path, tmp: Path, name: str, keys: list[str]) -> None:
    src = tmp / name
    if name.endswith(".jsonl"):
        write_jsonl(src, ({"key": k, "n": i} for i, k in enumerate(keys)))
    else:
        write_csv(src, keys)
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(src, folder / name)


def test_sigkill_during_loading_leaves_every_record_once(
        tmp_path: Path, mongo_uri: str, amqp_url: str, db: MongoClient[dict[str, Any]],
        rounds: int, full: bool) -> None:
    seed = int(os.environ.get("MYSIMBDP_RELIABILITY_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    tenant = f"crash{uuid.uuid4().hex[:8]}"
    settings = suite_settings(tmp_path, mongo_uri, amqp_url, batch={"write_batch_size": 250})
    write_tenant(settings, tenant, batch={"app": "rel_echo", "max_concurrent_files": 2})
    rows = 40_000 if full else 15_000
    files = {
        "big.csv": [f"c{i:07d}" for i in range(rows)],
        "lines.jsonl": [f"j{i:07d}" for i in range(rows // 2)],
    }
    for name, keys in files.items():
        _stage(settings.staging_dir / tenant, tmp_path, name, keys)
    total = sum(len(k) for k in files.values())
    records = db[f"tenant_{tenant}"]["records"]
    runner = Daemon(settings)
    kills = mid_load = 0
    try:
        for _ in range(rounds):
            runner.start()
            written = records.estimated_document_count()
            # Until a kill has landed mid-load, wait for a random number of documents; then,
            # and once everything is written (the files being committed and archived), at
            # times a random moment, which may fall before loading starts.
            if written >= total or (mid_load and rng.random() < 0.3):
                time.sleep(rng.uniform(0.0, 1.5))
            else:
                target = rng.randint(written, total)
                deadline = time.monotonic() + 60
                while records.estimated_document_count() < target and time.monotonic() < deadline:
                    time.sleep(0.02)
            runner.kill()
            kills += 1
            if 0 < records.estimated_document_count() < total:
                mid_load += 1
        if not runner.alive():
            runner.start()
        ledger = db["mysimbdp"]["files"]
        wait_until(lambda: ledger.count_documents({"tenant": tenant, "state": "committed"}) >= len(files),
                   180, f"{len(files)} files committed after {kills} kills")
        crashes = runner.crashes
    finally:
        runner.stop()

    found = [d["key"] for d in records.find({}, {"key": 1})]
    expected = [k for keys in files.values() for k in keys]
    t = tally(expected, found)
    entries = list(ledger.find({"tenant": tenant}))
    rejected = [e for e in entries if e["state"] != "committed"]
    reject_entries = db[f"tenant_{tenant}"]["_rejects"].count_documents({})
    record(GUARANTEE, "daemon SIGKILLed at random points while loading, then restarted",
           "test_sigkill_during_loading_leaves_every_record_once", injected=kills, checked=len(expected),
           lost=t.lost + reject_entries, duplicated=t.duplicated, unexpected=t.unexpected, crashes=crashes,
           note=f"seed {seed}, {mid_load} kills mid-load")
    assert mid_load >= 1, f"seed {seed}: no kill landed while documents were being written"
    assert t.ok, f"seed {seed}: {t}"
    assert not rejected, [(e["name"], e["state"], e.get("code"), e.get("reason"), e.get("attempts")) for e in entries]
    assert reject_entries == 0
    assert sorted(e["name"] for e in entries) == sorted(files), entries
    assert crashes == 0
