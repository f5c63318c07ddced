"""(7) Against the seeds' approach: one ``insert_one`` per record vs the platform, same store.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/insert_one.md``.
"""

from __future__ import annotations

import csv
import time
from typing import Any

from bench.cli import Session
from bench.data import DataFile, flights_slice
from bench.loads import BATCH_SETTINGS, BenchDaemon, BenchSkipped, batch_profile, load_file
from bench.results import Result, metric_from_runs
from mysimbdp.apps import App, BatchContext
from mysimbdp.apps.plugins import get_plugin_manager

__all__ = ["NAME", "TITLE", "run", "insert_one_script"]

NAME = "insert_one"
TITLE = "Against one insert_one per record"


async def insert_one_script(collection: Any, data: DataFile) -> dict[str, Any]:
    """The seeds' script: csv rows -> the app's per-record wrangle -> ``insert_one`` each."""
    wrangle = App(get_plugin_manager(), "flights").hook("mysimbdp_batch_wrangle")
    if wrangle is None:
        raise BenchSkipped("the 'flights' app has no per-record hook to script with")
    ctx = BatchContext("script", "flights", data.path.name, "", "csv")
    written, t0 = 0, time.perf_counter()
    with open(data.path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            await collection.insert_one(wrangle(record=row, context=ctx))
            written += 1
    seconds = time.perf_counter() - t0
    return {"records": written, "seconds": round(seconds, 3), "records_per_s": round(written / seconds, 1)}


async def run(session: Session, result: Result) -> None:
    """Platform and script alternately, ``repeat`` times each."""
    env, data = session.env, flights_slice(session.scale.insert_one_rows, data_dir=session.env.data_dir)
    tenants = [env.new_tenant("io") for _ in range(session.repeat)]
    script_db = env.db(f"bench_script_{env.run_id}")
    pairs: list[dict[str, Any]] = []
    async with BenchDaemon(env, "insert-one", tenants=[batch_profile(t) for t in tenants],
                           batch=BATCH_SETTINGS) as daemon:
        for i, tenant in enumerate(tenants):
            session.say(f"{NAME}: {i + 1}/{session.repeat}: platform, then script, {data.rows} rows")
            load = await load_file(daemon, tenant, data, session.scale.timeout_s)
            script = await insert_one_script(script_db[f"run{i}"], data)
            pairs.append({"platform": load.to_json(), "script": script,
                          "factor": round(load.rate / script["records_per_s"], 2)})
            await env.drop(f"tenant_{tenant}")
    await env.drop(script_db.name)
    result.settings = {"file": data.path.name, "rows": data.rows, "daemon_batch_settings": BATCH_SETTINGS}
    result.add(metric_from_runs("platform_records_per_s", "platform, drop to committed",
                                [p["platform"]["records_per_s"] for p in pairs], "records/s"))
    result.add(metric_from_runs("script_records_per_s", "script, one insert_one per record",
                                [p["script"]["records_per_s"] for p in pairs], "records/s"))
    result.add(metric_from_runs("factor", "platform / script", [p["factor"] for p in pairs], "×",
                                note="median of the per-repetition factors"))
    result.runs = pairs
