"""(1) Batch throughput: flights.csv dropped into staging -> committed, against ``insert_many``.

Each repetition loads the file as a new tenant (its own empty database), then writes the
very documents the platform produced into a fresh collection of the same store with
``insert_many(ordered=False)``: the store's bulk intake, the ceiling. The documents are read
back from the tenant's collection (``_id`` included) as the store's own BSON
(``RawBSONDocument``), already built as the platform's columnar path builds them, and cut
into batches of the platform's ``write_batch_size`` before the clock starts; the timed part
is the writes alone, one batch at a time, into a collection with the same indexes as the
platform's (the app declares two). The platform's time runs from the file's appearance in
staging (a rename) to its ``batch.file.committed`` event, so it includes the watcher's
stability wait, parsing, wrangling, encoding, hashing, the ledger and the archive move.
"""

from __future__ import annotations

from typing import Any

from bson.raw_bson import RawBSONDocument

from bench.ceilings import copy_indexes, insert_many_rate, read_documents
from bench.daemon import BenchDaemon
from bench.data import FLIGHTS_ROWS, DataFile, flights_csv, flights_slice
from bench.loads import BATCH_SETTINGS, FLIGHTS_COLLECTION, LoadRun, batch_profile, load_file
from bench.results import Result, Target, metric_from_runs
from bench.session import Session
from mysimbdp.config import BatchSettings

__all__ = ["NAME", "TITLE", "run", "flights_data", "WRITE_BATCH_SIZE"]

NAME = "batch"
TITLE = "Batch throughput against insert_many"
WRITE_BATCH_SIZE = BatchSettings().write_batch_size  # the platform's default, which the daemons use
TARGET = Target(">=", 0.85)


def flights_data(session: Session) -> DataFile:
    """flights.csv, or its first rows at smaller scales."""
    rows = session.scale.flights_rows
    data_dir = session.env.data_dir
    return flights_csv(data_dir) if rows >= FLIGHTS_ROWS else flights_slice(rows, data_dir=data_dir)


async def flights_loads(session: Session, data: DataFile, repeat: int,
                        between: Any = None) -> tuple[list[LoadRun], BenchDaemon | None]:
    """``repeat`` loads of ``data``, each by a new tenant of one daemon; ``between(i, run)``
    runs after each load (the daemon idle)."""
    tenants = [session.env.new_tenant("fl") for _ in range(repeat)]
    runs: list[LoadRun] = []
    daemon = BenchDaemon(session.env, "batch", tenants=[batch_profile(t) for t in tenants],
                         batch=BATCH_SETTINGS)
    async with daemon:
        for i, tenant in enumerate(tenants):
            session.say(f"{NAME}: platform load {i + 1}/{repeat} of {data.rows} rows")
            run = await load_file(daemon, tenant, data, session.scale.timeout_s)
            runs.append(run)
            session.say(f"{NAME}:   {run.rate:,.0f} records/s, {run.cpu_us_per_record:.1f} us CPU/record")
            if between is not None:
                await between(i, run)
    return runs, daemon


async def run(session: Session, result: Result) -> None:
    """Platform and ceiling, alternating, ``repeat`` times each."""
    data = flights_data(session)
    env = session.env
    ceiling_db = env.db(f"bench_ceiling_{env.run_id}")
    documents: list[RawBSONDocument] = []
    ceilings: list[dict[str, Any]] = []
    indexes: list[str] = []

    async def ceiling(i: int, load: LoadRun) -> None:
        platform = env.db(f"tenant_{load.tenant}")[FLIGHTS_COLLECTION]
        if not documents:
            documents.extend(await read_documents(platform))
        indexes[:] = await copy_indexes(platform, ceiling_db[f"ceiling{i}"])
        await env.drop(f"tenant_{load.tenant}")
        session.say(f"{NAME}: ceiling {i + 1}/{session.repeat}: insert_many of {len(documents)} encoded documents")
        timing = await insert_many_rate(ceiling_db[f"ceiling{i}"], documents, WRITE_BATCH_SIZE, env.store_cpu)
        await ceiling_db.drop_collection(f"ceiling{i}")
        ceilings.append(timing.to_json())
        session.say(f"{NAME}:   {timing.rate:,.0f} records/s")

    loads, _ = await flights_loads(session, data, session.repeat, between=ceiling)
    session.memo["flights_loads"] = loads
    await env.drop(ceiling_db.name)

    ratios = [load.rate / c["rate"] for load, c in zip(loads, ceilings, strict=True) if c["rate"]]
    result.settings = {"file": data.path.name, "rows": data.rows, "bytes": data.bytes,
                       "write_batch_size": WRITE_BATCH_SIZE, "daemon_batch_settings": BATCH_SETTINGS,
                       "ceiling_indexes": indexes,
                       "ceiling_documents": "RawBSONDocument read back from the platform's collection, "
                                            "batched before the clock starts; one insert_many at a time"}
    result.add(metric_from_runs("platform_records_per_s", "platform, drop to committed",
                                [r.rate for r in loads], "records/s"))
    result.add(metric_from_runs("ceiling_records_per_s", "ceiling, insert_many(ordered=False) of BSON documents",
                                [c["rate"] for c in ceilings], "records/s"))
    result.add(metric_from_runs("ratio", "platform / ceiling", ratios, "", TARGET,
                                note="median of the per-repetition ratios"))
    platform_runs = [load.to_json() for load in loads]
    _shares(result, platform_runs, ceilings)
    result.runs = [{"platform": p, "ceiling": c} for p, c in zip(platform_runs, ceilings, strict=True)]
    explain(result, session.machine.get("cores"))


def _shares(result: Result, platform: list[dict[str, Any]], ceilings: list[dict[str, Any]]) -> None:
    """How busy the daemon and the store were: where the time of each load went."""
    pairs = [("daemon_cpu_pct", "daemon CPU during the platform load", [r["daemon_cpu_share"] for r in platform]),
             ("store_cpu_platform_pct", "store CPU during the platform load", [r["store_cpu_share"] for r in platform]),
             ("store_cpu_ceiling_pct", "store CPU during the ceiling", [c["store_cpu_share"] for c in ceilings])]
    for key, label, shares in pairs:
        values = [100.0 * v for v in shares if v is not None]
        if values:
            result.add(metric_from_runs(key, label, values, "% of a core"))


def explain(result: Result, cores: int | None) -> None:
    """Say why the ratio target is missed, from the figures themselves."""
    figures = {m.key: m.value for m in result.metrics}
    ratio = figures.get("ratio")
    if ratio is None or TARGET.met(ratio):
        return
    daemon, store_p, store_c = (figures.get(k) for k in ("daemon_cpu_pct", "store_cpu_platform_pct",
                                                         "store_cpu_ceiling_pct"))
    if None in (daemon, store_p, store_c):
        result.notes.append(f"target missed: the platform reaches {ratio:.2f} of the ceiling")
        return
    result.notes.append(
        f"target missed ({ratio:.2f} of the ceiling): the store is the bottleneck of both runs (single-threaded, "
        f"{store_c:.0f} % of a core during the ceiling) but only {store_p:.0f} % busy during the platform's load, "
        f"while the daemon uses {daemon:.0f} % of a core for parsing, wrangling and encoding on this "
        f"{cores}-core machine: the store waits for the daemon or shares the cores with it. "
        "Benchmark 2's profile shows where the daemon's CPU goes.")
