"""(2) Platform cost per record: CPU seconds per flights record, daemon and app worker, and a profile.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/cpu.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from bench.benchmarks.batch import FIRST_FILE_ROWS, THREAD, first_file, flights_data, flights_loads
from bench.cli import Session
from bench.loads import (
    BATCH_SETTINGS,
    RUNNERS,
    BenchDaemon,
    LoadRun,
    batch_profile,
    load_file,
    stream_profile,
    wait_stream_ready,
)
from bench.profile import profiled
from bench.results import Result, Target, metric_from_runs
from tests.harness.daemon import cpu_seconds

__all__ = ["NAME", "TITLE", "run"]

NAME = "cpu"
TITLE = "Platform CPU per record"
#: Issue 14: the columnar path stays within 10 µs of daemon + worker CPU per flights record.
TARGET = Target("<=", 10.0)
#: Issue 19: an idle daemon (one batch and one stream tenant, nothing to do) uses at most 0.2 % of a core.
IDLE_TARGET = Target("<=", 0.2)
#: How long the idle daemon is watched at full scale (after IDLE_SETTLE_S), and at the others.
IDLE_SECONDS = {"full": 60.0}
IDLE_SETTLE_S = 20.0


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user+sys) of each thread of process ``pid`` so far."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            out[int(tid)] = cpu_seconds(f"{pid}/task/{tid}")
    return out


async def idle_cpu(session: Session) -> dict[str, float]:
    """An idle daemon's CPU in % of a core: all of it, its event-loop thread and its other
    threads (the file watchers' notify threads, the thread pool), over ``IDLE_SECONDS``."""
    env = session.env
    batch_tenant, stream_tenant = env.new_tenant("ib"), env.new_tenant("is")
    seconds = IDLE_SECONDS.get(session.scale.name, 5.0)
    settle = IDLE_SETTLE_S if session.scale.name == "full" else 3.0
    session.say(f"{NAME}: an idle daemon, one batch and one stream tenant, {seconds:.0f} s")
    async with BenchDaemon(env, "idle", tenants=[batch_profile(batch_tenant), stream_profile(stream_tenant)]) as daemon:
        await wait_stream_ready(daemon, stream_tenant)
        await asyncio.sleep(settle)
        pid = daemon.pid
        before, t0 = thread_cpu(pid), time.monotonic()
        await asyncio.sleep(seconds)
        after, elapsed = thread_cpu(pid), time.monotonic() - t0
    def pct(tids: list[int]) -> float:
        return sum(after[t] - before.get(t, 0.0) for t in tids) / elapsed * 100.0

    return {"seconds": round(elapsed, 1), "cpu_pct": pct(list(after)), "loop_pct": pct([pid]),
            "threads_pct": pct([t for t in after if t != pid])}


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
    idle = [await idle_cpu(session) for _ in range(min(2, session.repeat))]
    add_idle_figures(result, idle)
    value = result.figure("cpu_us_per_record")
    if value is not None and not TARGET.met(value):  # name the top costs of the profile
        top = (result.profile or {}).get("self", [])[:4]
        costs = ", ".join(f"`{p['function']}` {p['pct']:.0f} %" for p in top)
        result.notes.append(f"target missed: {value:.2f} µs per record. The largest own costs in the profile: {costs}"
                            if top else f"target missed: {value:.2f} µs per record; no profile was taken")


def add_idle_figures(result: Result, idle: list[dict[str, float]]) -> None:
    """The idle daemon's figures, and what its CPU adds to each record of the loads measured."""
    result.settings["idle_seconds"] = idle[0]["seconds"] if idle else None
    for key, label, field, target in [
        ("idle_cpu_pct", "an idle daemon's CPU (one batch and one stream tenant)", "cpu_pct", IDLE_TARGET),
        ("idle_loop_pct", "of which its event-loop thread", "loop_pct", None),
        ("idle_threads_pct", "of which its other threads (file watchers, thread pool)", "threads_pct", None)]:
        result.add(metric_from_runs(key, label, [round(i[field], 3) for i in idle], "% of a core", target,
                                    "user+sys of every thread of the daemon, from /proc/<pid>/task"))
    rate = result.figure("records_per_s")
    idle_pct = result.figure("idle_cpu_pct")
    if rate and idle_pct is not None:
        result.add(metric_from_runs(
            "idle_us_per_record", "the idle daemon's CPU over a load, per record (idle CPU / records/s)",
            [idle_pct / 100.0 / rate * 1e6], "µs", None,
            "the part of the CPU per record that is paid per second, not per record: it grows as the store slows"))


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
