"""A daemon killed (SIGKILL) in the middle of a file resumes it at the next start: every record exactly once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from pymongo import MongoClient

from mysimbdp.config import Settings
from tests.batch_support import drop, write_profile

ROWS = 4000


def test_kill_mid_file_then_resume_loads_each_record_once(
        spawn_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        mongo_uri: str) -> None:
    settings = settings_factory(extra_apps={"batch_slow": "tests.plugins.batch_slow"},
                                batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5, "write_batch_size": 200})
    write_profile(settings, tenant_id, "batch_slow")
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    items = client[f"tenant_{tenant_id}"]["records"]
    files = client["mysimbdp"]["files"]
    try:
        dp = spawn_daemon(settings)
        drop(settings, tenant_id, "numbers.csv", "n\n" + "".join(f"{i}\n" for i in range(ROWS)))
        deadline = time.monotonic() + 60
        while items.count_documents({}) < ROWS // 4:
            assert time.monotonic() < deadline, dp.log_path.read_text()[-3000:]
            time.sleep(0.05)
        dp.proc.send_signal(signal.SIGKILL)
        dp.proc.wait(10)
        written_before = items.count_documents({})
        assert 0 < written_before < ROWS, "the kill must land mid-file"
        [entry] = list(files.find({"tenant": tenant_id}))
        assert entry["state"] == "loading"

        dp2 = spawn_daemon(settings)
        deadline = time.monotonic() + 90
        while files.find_one({"_id": entry["_id"]})["state"] == "loading":
            assert time.monotonic() < deadline, dp2.log_path.read_text()[-3000:]
            time.sleep(0.1)
        done = files.find_one({"_id": entry["_id"]})
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
    finally:
        client.close()
