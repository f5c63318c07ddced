"""(2) Platform cost per record: CPU seconds per flights record, daemon and app worker, and a profile.

CPU is user+sys read from ``/proc`` between the drop and the ``batch.file.committed``
event: the daemon's own pid, and its app workers (the ``python -m mysimbdp.apps.runner.worker``
children it starts for a tenant's app: their own CPU while they run, and the daemon's
``cutime``/``cstime`` for those it reaped). The store is another process and is not
counted. The loads are the batch benchmark's when both run in one invocation, else loads
of their own: in each repetition one tenant whose app runs in a worker process (the
default) and one with ``runner = "thread"`` load flights.csv in the same daemon, one after
the other, each after a small first file that started its worker. The worker's cost is the
difference of the two loads of a repetition. One more load (worker runner) runs under py-spy
(sampling the daemon and its worker, not counted in the CPU figures) for the top costs.
"""

from __future__ import annotations

from bench.benchmarks.batch import (
    FIRST_FILE_ROWS,
    FlightsLoads,
    first_file,
    flights_data,
    flights_loads,
)
from bench.daemon import BenchDaemon
from bench.loads import BATCH_SETTINGS, RUNNERS, LoadRun, batch_profile, load_file
from bench.profile import profiled
from bench.results import Result, Target, metric_from_runs
from bench.session import Session

__all__ = ["NAME", "TITLE", "run"]

NAME = "cpu"
TITLE = "Platform CPU per record"
#: Issue 14: the columnar path stays within 10 µs of daemon + worker CPU per flights record.
TARGET = Target("<=", 10.0)
THREAD = 'runner = "thread"'


async def _profiled_load(session: Session, result: Result) -> None:
    data = flights_data(session)
    tenant = session.env.new_tenant("pr")
    daemon = BenchDaemon(session.env, "profile", tenants=[batch_profile(tenant)], batch=BATCH_SETTINGS)
    session.say(f"{NAME}: profiled load of {data.rows} rows (py-spy, daemon and worker)")
    async with daemon:
        await load_file(daemon, tenant, first_file(session), session.scale.timeout_s)  # starts the worker
        _, profile = await profiled(daemon.pid, daemon.base, load_file(daemon, tenant, data, session.scale.timeout_s),
                                    f"{data.path.name}, {data.rows} rows, drop to committed, app in a worker "
                                    "process", subprocesses=True)
    await session.env.drop(f"tenant_{tenant}")
    if isinstance(profile, str):
        result.notes.append(profile)
    else:
        result.profile = profile


async def run(session: Session, result: Result) -> None:
    """CPU per record of both runners over ``repeat`` rounds (the batch benchmark's, when it ran)."""
    both: FlightsLoads | None = session.memo.get("flights_loads")
    data = flights_data(session)
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
    explain(result)


def add_figures(result: Result, process: list[LoadRun], thread: list[LoadRun]) -> None:
    """The CPU figures of paired loads (``process[i]`` and ``thread[i]`` ran in one repetition)."""
    def us(loads: list[LoadRun], part: str) -> list[float]:
        return [r.us_per_record(getattr(r, part)) for r in loads]

    result.add(metric_from_runs("cpu_us_per_record", "daemon + worker CPU per record, app in a worker process",
                                [r.cpu_us_per_record for r in process], "µs", TARGET,
                                note="user+sys of the daemon and of its app worker, per flights record"))
    result.add(metric_from_runs("daemon_cpu_us_per_record", "of which the daemon", us(process, "daemon_cpu_seconds"),
                                "µs"))
    result.add(metric_from_runs("worker_cpu_us_per_record", "of which the worker", us(process, "worker_cpu_seconds"),
                                "µs"))
    result.add(metric_from_runs("thread_cpu_us_per_record", f"daemon CPU per record, {THREAD}",
                                [r.cpu_us_per_record for r in thread], "µs"))
    result.add(metric_from_runs("worker_cost_us_per_record", "the worker process's cost: worker runner - thread runner",
                                [p.cpu_us_per_record - t.cpu_us_per_record for p, t in zip(process, thread, strict=True)],
                                "µs", note="median of the per-repetition differences"))
    result.add(metric_from_runs("cpu_seconds", "daemon + worker CPU per load, app in a worker process",
                                [r.cpu_seconds for r in process], "s"))
    result.add(metric_from_runs("thread_cpu_seconds", f"daemon CPU per load, {THREAD}",
                                [r.cpu_seconds for r in thread], "s"))
    result.add(metric_from_runs("records_per_s", "records/s of these loads, app in a worker process",
                                [r.rate for r in process], "records/s"))
    result.add(metric_from_runs("thread_records_per_s", f"records/s of these loads, {THREAD}",
                                [r.rate for r in thread], "records/s"))


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
