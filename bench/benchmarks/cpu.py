"""(2) Platform cost per record: CPU seconds per flights record, daemon and app worker, and a profile.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/cpu.md``.
"""

from __future__ import annotations

from bench.benchmarks.batch import FIRST_FILE_ROWS, THREAD, first_file, flights_data, flights_loads
from bench.cli import Session
from bench.loads import BATCH_SETTINGS, RUNNERS, BenchDaemon, LoadRun, batch_profile, load_file
from bench.profile import profiled
from bench.results import Result, Target, metric_from_runs

__all__ = ["NAME", "TITLE", "run"]

NAME = "cpu"
TITLE = "Platform CPU per record"
#: Issue 14: the columnar path stays within 10 µs of daemon + worker CPU per flights record.
TARGET = Target("<=", 10.0)


async def _profiled_load(session: Session, result: Result) -> None:
    data, tenant, timeout = flights_data(session), session.env.new_tenant("pr"), session.scale.timeout_s
    session.say(f"{NAME}: profiled load of {data.rows} rows (py-spy, daemon and worker)")
    async with BenchDaemon(session.env, "profile", tenants=[batch_profile(tenant)], batch=BATCH_SETTINGS) as daemon:
        await load_file(daemon, tenant, first_file(session), timeout)  # starts the worker
        await profiled(result, daemon.pid, daemon.base, load_file(daemon, tenant, data, timeout),
                       f"{data.path.name}, {data.rows} rows, drop to committed, app in a worker process")
    await session.env.drop(f"tenant_{tenant}")


async def run(session: Session, result: Result) -> None:
    """CPU per record of both runners over ``repeat`` rounds (the batch benchmark's, when it ran)."""
    both, data = session.memo.get("flights_loads"), flights_data(session)
    if both is None:
        both = await flights_loads(session, data, session.repeat)
        for loads in (*both.loads.values(), *both.first_files.values()):
            for load in loads:
                await session.env.drop(f"tenant_{load.tenant}")
    else:
        result.notes.append("the loads are the batch benchmark's of the same invocation")
    result.settings = {"file": data.path.name, "rows": data.rows, "runners": list(RUNNERS),
                       "first_file_rows": FIRST_FILE_ROWS, "daemon_batch_settings": BATCH_SETTINGS}
    add_figures(result, both.loads["process"], both.loads["thread"])
    result.runs = both.runs()
    await _profiled_load(session, result)
    value = result.figure("cpu_us_per_record")
    if value is not None and not TARGET.met(value):  # name the top costs of the profile
        top = (result.profile or {}).get("self", [])[:4]
        costs = ", ".join(f"`{p['function']}` {p['pct']:.0f} %" for p in top)
        result.notes.append(f"target missed: {value:.2f} µs per record. The largest own costs in the profile: {costs}"
                            if top else f"target missed: {value:.2f} µs per record; no profile was taken")


def add_figures(result: Result, process: list[LoadRun], thread: list[LoadRun]) -> None:
    """The CPU figures of paired loads (``process[i]`` and ``thread[i]`` ran in one repetition)."""
    for key, label, values, unit, target, note in [
        ("cpu_us_per_record", "daemon + worker CPU per record, app in a worker process",
         [r.cpu_us_per_record for r in process], "µs", TARGET,
         "user+sys of the daemon and of its app worker, per flights record"),
        ("daemon_cpu_us_per_record", "of which the daemon", [r.us_per_record(r.daemon_cpu_seconds) for r in process],
         "µs", None, ""),
        ("worker_cpu_us_per_record", "of which the worker", [r.us_per_record(r.worker_cpu_seconds) for r in process],
         "µs", None, ""),
        ("thread_cpu_us_per_record", f"daemon CPU per record, {THREAD}", [r.cpu_us_per_record for r in thread], "µs",
         None, ""),
        ("worker_cost_us_per_record", "the worker process's cost: worker runner - thread runner",
         [p.cpu_us_per_record - t.cpu_us_per_record for p, t in zip(process, thread, strict=True)], "µs", None,
         "median of the per-repetition differences"),
        ("cpu_seconds", "daemon + worker CPU per load, app in a worker process", [r.cpu_seconds for r in process], "s",
         None, ""),
        ("thread_cpu_seconds", f"daemon CPU per load, {THREAD}", [r.cpu_seconds for r in thread], "s", None, ""),
        ("records_per_s", "records/s of these loads, app in a worker process", [r.rate for r in process], "records/s",
         None, ""),
        ("thread_records_per_s", f"records/s of these loads, {THREAD}", [r.rate for r in thread], "records/s", None, ""),
    ]:
        result.add(metric_from_runs(key, label, values, unit, target, note))
