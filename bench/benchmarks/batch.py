"""(1) Batch throughput: flights.csv dropped into staging -> committed, against ``insert_many``.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/batch.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bson.raw_bson import RawBSONDocument

from bench.cli import Session
from bench.data import FLIGHTS_ROWS, DataFile, flights_slice
from bench.loads import (
    BATCH_SETTINGS,
    FLIGHTS_COLLECTION,
    RUNNERS,
    BenchDaemon,
    LoadRun,
    batch_profile,
    copy_indexes,
    insert_many_rate,
    load_file,
    read_documents,
)
from bench.results import Result, Target, metric_from_runs
from mysimbdp.config import BatchSettings

__all__ = ["NAME", "TITLE", "run", "flights_data", "flights_loads", "FlightsLoads", "FIRST_FILE_ROWS", "first_file"]

NAME = "batch"
TITLE = "Batch throughput against insert_many"
WRITE_BATCH_SIZE = BatchSettings().write_batch_size  # the platform's default, which the daemons use
TARGET = Target(">=", 0.85)
#: The worker runner's records/s against the thread runner's (issue 14: within 10 %).
RUNNER_TARGET = Target(">=", 0.90)
#: Rows of the small first file each tenant loads before the measured one (its worker starts).
FIRST_FILE_ROWS = 1000
THREAD = 'runner = "thread"'


def flights_data(session: Session) -> DataFile:
    """flights.csv, or its first rows at smaller scales."""
    return flights_slice(session.scale.flights_rows, data_dir=session.env.data_dir)


def first_file(session: Session) -> DataFile:
    """A small slice from the end of flights.csv (rows the measured load of the smaller scales lacks)."""
    return flights_slice(FIRST_FILE_ROWS, FLIGHTS_ROWS - FIRST_FILE_ROWS, session.env.data_dir)


@dataclass
class FlightsLoads:
    """The loads of :func:`flights_loads`, by runner, one per repetition."""

    loads: dict[str, list[LoadRun]] = field(default_factory=lambda: {r: [] for r in RUNNERS})
    first_files: dict[str, list[LoadRun]] = field(default_factory=lambda: {r: [] for r in RUNNERS})

    def runs(self) -> list[dict[str, Any]]:
        """One raw repetition per round: each runner's first file and load."""
        return [{runner: {"first_file": self.first_files[runner][i].to_json(), "load": self.loads[runner][i].to_json()}
                 for runner in RUNNERS} for i in range(len(self.loads[RUNNERS[0]]))]


async def flights_loads(session: Session, data: DataFile, repeat: int, between: Any = None) -> FlightsLoads:
    """``repeat`` rounds in one daemon; in each, one new tenant per runner (the order alternates
    between rounds) loads a small first file, then ``data``. ``between(i, {runner: run})`` runs
    after each round (the daemon idle)."""
    tenants = [{runner: session.env.new_tenant("fl" + runner[0]) for runner in RUNNERS} for _ in range(repeat)]
    first, out, timeout = first_file(session), FlightsLoads(), session.scale.timeout_s
    profiles = [batch_profile(t, runner) for round_ in tenants for runner, t in round_.items()]
    async with BenchDaemon(session.env, "batch", tenants=profiles, batch=BATCH_SETTINGS) as daemon:
        for i, round_ in enumerate(tenants):
            done: dict[str, LoadRun] = {}
            for runner in RUNNERS if i % 2 == 0 else RUNNERS[::-1]:
                session.say(f"{NAME}: {i + 1}/{repeat}: runner {runner}: first file ({first.rows} rows), "
                            f"then {data.rows} rows")
                out.first_files[runner].append(await load_file(daemon, round_[runner], first, timeout, runner=runner))
                run = done[runner] = await load_file(daemon, round_[runner], data, timeout, runner=runner)
                out.loads[runner].append(run)
                session.say(f"{NAME}:   {run.rate:,.0f} records/s, {run.cpu_us_per_record:.1f} us CPU/record")
            if between is not None:
                await between(i, done)
    return out


async def run(session: Session, result: Result) -> None:
    """Platform and ceiling, alternating, ``repeat`` times each."""
    data, env = flights_data(session), session.env
    ceiling_db = env.db(f"bench_ceiling_{env.run_id}")
    documents: list[RawBSONDocument] = []
    ceilings: list[dict[str, Any]] = []
    indexes: list[str] = []

    async def ceiling(i: int, done: dict[str, LoadRun]) -> None:
        platform = env.db(f"tenant_{done[RUNNERS[0]].tenant}")[FLIGHTS_COLLECTION]
        documents[:] = documents or await read_documents(platform)
        indexes[:] = await copy_indexes(platform, ceiling_db[f"ceiling{i}"])
        for other in done.values():
            await env.drop(f"tenant_{other.tenant}")
        session.say(f"{NAME}: ceiling {i + 1}/{session.repeat}: insert_many of {len(documents)} encoded documents")
        ceilings.append(await insert_many_rate(ceiling_db[f"ceiling{i}"], documents, WRITE_BATCH_SIZE, env.store_cpu))
        await ceiling_db.drop_collection(f"ceiling{i}")

    both = session.memo["flights_loads"] = await flights_loads(session, data, session.repeat, between=ceiling)
    await env.drop(ceiling_db.name)
    loads, threads = both.loads["process"], both.loads["thread"]
    result.settings = {"file": data.path.name, "rows": data.rows, "bytes": data.bytes,
                       "write_batch_size": WRITE_BATCH_SIZE, "daemon_batch_settings": BATCH_SETTINGS,
                       "runners": list(RUNNERS), "first_file_rows": FIRST_FILE_ROWS, "ceiling_indexes": indexes,
                       "ceiling_documents": "RawBSONDocument read back from the platform's collection, "
                                            "batched before the clock starts; one insert_many at a time"}
    rates = [c["rate"] for c in ceilings]
    for key, label, values, target, note in [
        ("platform_records_per_s", "platform, drop to committed (app in a worker process)", [r.rate for r in loads],
         None, ""),
        ("thread_records_per_s", f"platform, drop to committed, {THREAD}", [r.rate for r in threads], None, ""),
        ("ceiling_records_per_s", "ceiling, insert_many(ordered=False) of BSON documents", rates, None, ""),
        ("ratio", "platform / ceiling", [r.rate / c for r, c in zip(loads, rates, strict=True) if c], TARGET,
         "median of the per-repetition ratios, app in a worker process (the default)"),
        ("thread_ratio", f"platform / ceiling, {THREAD}", [r.rate / c for r, c in zip(threads, rates, strict=True) if c],
         None, ""),
        ("runner_ratio", "worker process / thread runner, records/s",
         [p.rate / t.rate for p, t in zip(loads, threads, strict=True) if t.rate], RUNNER_TARGET,
         "median of the per-repetition ratios of the two loads of a repetition; ≥ 0.90 is within 10 % of the "
         "thread runner")]:
        unit = "" if "ratio" in key else "records/s"
        result.add(metric_from_runs(key, label, values, unit, target, note))
    for runner in RUNNERS:  # what a tenant's first file costs on each runner: for a worker, mostly starting it
        firsts, where = both.first_files[runner], "app in a worker process" if runner == "process" else THREAD
        result.add(metric_from_runs(f"first_file_seconds_{runner}", f"a tenant's first file ({FIRST_FILE_ROWS:,} rows), "
                                    f"drop to committed, {where}", [r.seconds for r in firsts], "s"))
        result.add(metric_from_runs(f"first_file_cpu_seconds_{runner}", f"CPU of that first file (daemon + worker), "
                                    f"{where}", [r.cpu_seconds for r in firsts], "s"))
    platform = [load.to_json() for load in loads]
    for key, label, shares in [
            ("daemon_cpu_pct", "daemon + worker CPU during the platform load", [r["daemon_cpu_share"] for r in platform]),
            ("store_cpu_platform_pct", "store CPU during the platform load", [r["store_cpu_share"] for r in platform]),
            ("store_cpu_ceiling_pct", "store CPU during the ceiling", [c["store_cpu_share"] for c in ceilings])]:
        values = [100.0 * v for v in shares if v is not None]
        if values:
            result.add(metric_from_runs(key, label, values, "% of a core"))
    result.runs = [{**r, "ceiling": c} for r, c in zip(both.runs(), ceilings, strict=True)]
    explain(result, session.machine.get("cores"))


def explain(result: Result, cores: int | None) -> None:
    """Say why a target is missed, from the figures themselves."""
    runner_ratio = result.figure("runner_ratio")
    if runner_ratio is not None and not RUNNER_TARGET.met(runner_ratio):
        result.notes.append(
            f"target missed: with the app in a worker process the load runs at {runner_ratio:.2f} of the thread "
            "runner's records/s; benchmark 2 shows the CPU each side of the pipe spends per record")
    ratio = result.figure("ratio")
    if ratio is None or TARGET.met(ratio):
        return
    daemon, store_p, store_c = (result.figure(k) for k in ("daemon_cpu_pct", "store_cpu_platform_pct",
                                                           "store_cpu_ceiling_pct"))
    if daemon is None or store_p is None or store_c is None:
        result.notes.append(f"target missed: the platform reaches {ratio:.2f} of the ceiling")
        return
    result.notes.append(
        f"target missed ({ratio:.2f} of the ceiling): the store is the bottleneck of both runs (single-threaded, "
        f"{store_c:.0f} % of a core during the ceiling) but only {store_p:.0f} % busy during the platform's load, "
        f"while the daemon uses {daemon:.0f} % of a core for parsing, wrangling and encoding on this "
        f"{cores}-core machine: the store waits for the daemon or shares the cores with it. "
        "Benchmark 2's profile shows where the daemon's CPU goes.")
