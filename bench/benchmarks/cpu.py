"""(2) Platform cost per record: the daemon's CPU seconds per flights record, and a profile.

CPU is user+sys of the daemon's own pid from ``/proc/<pid>/stat`` between the drop and the
``batch.file.committed`` event (the store is another process and is not counted). The loads
are the batch benchmark's when both run in one invocation, else loads of their own. One more
load runs under py-spy (sampling, not counted in the CPU figure) for the top costs.
"""

from __future__ import annotations

from bench.benchmarks.batch import flights_data, flights_loads
from bench.daemon import BenchDaemon
from bench.loads import BATCH_SETTINGS, LoadRun, batch_profile, load_file
from bench.profile import profiled
from bench.results import Result, Target, metric_from_runs
from bench.session import Session

__all__ = ["NAME", "TITLE", "run"]

NAME = "cpu"
TITLE = "Platform CPU per record"
TARGET = Target("<=", 10.0)


async def _profiled_load(session: Session, result: Result) -> None:
    data = flights_data(session)
    tenant = session.env.new_tenant("pr")
    daemon = BenchDaemon(session.env, "profile", tenants=[batch_profile(tenant)], batch=BATCH_SETTINGS)
    session.say(f"{NAME}: profiled load of {data.rows} rows (py-spy)")
    async with daemon:
        _, profile = await profiled(daemon.pid, daemon.base, load_file(daemon, tenant, data, session.scale.timeout_s),
                                    f"{data.path.name}, {data.rows} rows, drop to committed")
    await session.env.drop(f"tenant_{tenant}")
    if isinstance(profile, str):
        result.notes.append(profile)
    else:
        result.profile = profile


async def run(session: Session, result: Result) -> None:
    """CPU per record over ``repeat`` loads (reused from the batch benchmark when it ran)."""
    loads: list[LoadRun] = session.memo.get("flights_loads") or []
    data = flights_data(session)
    if not loads:
        loads, _ = await flights_loads(session, data, session.repeat)
        for load in loads:
            await session.env.drop(f"tenant_{load.tenant}")
    else:
        result.notes.append("the loads are the batch benchmark's of the same invocation")
    result.settings = {"file": data.path.name, "rows": data.rows, "daemon_batch_settings": BATCH_SETTINGS}
    result.add(metric_from_runs("cpu_us_per_record", "daemon CPU per record (user+sys)",
                                [r.cpu_us_per_record for r in loads], "µs", TARGET))
    result.add(metric_from_runs("cpu_seconds", "daemon CPU per load", [r.cpu_seconds for r in loads], "s"))
    result.add(metric_from_runs("records_per_s", "records/s of these loads", [r.rate for r in loads], "records/s"))
    result.runs = [r.to_json() for r in loads]
    await _profiled_load(session, result)
    explain(result)


def explain(result: Result) -> None:
    """When the target is missed, name the top costs of the profile."""
    value = next((m.value for m in result.metrics if m.key == "cpu_us_per_record"), None)
    if value is None or TARGET.met(value):
        return
    top = (result.profile or {}).get("self", [])[:4]
    if not top:
        result.notes.append(f"target missed: {value:.2f} µs per record; no profile was taken")
        return
    costs = ", ".join(f"`{p['function']}` {p['pct']:.0f} %" for p in top)
    result.notes.append(f"target missed: {value:.2f} µs per record. The largest own costs in the profile: {costs}")
