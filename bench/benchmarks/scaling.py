"""(6) Scaling reaction: a slow stream app under a step load from idle.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/scaling.md``.
"""

from __future__ import annotations

import time
from typing import Any

from bench.apps import CAPACITY_PER_CONSUMER, SLOW_MS
from bench.cli import Session
from bench.data import weather_repeated
from bench.loads import (
    STREAM_COLLECTION,
    BenchDaemon,
    BenchError,
    event_time,
    stream_profile,
    wait_stream_ready,
)
from bench.results import Result, metric_from_runs
from mysimbdp.stream.records import document_id
from tests.harness.publish import PublishTool
from tests.harness.wait import await_until, wait_documents

__all__ = ["NAME", "TITLE", "run", "profiles"]

NAME = "scaling"
TITLE = "Scaling reaction to a step load"
APP = "bench_slow"
PROFILE_STREAM: dict[str, Any] = {"min_consumers": 1, "max_consumers": 8, "prefetch": 200,
                                  "batch_max_messages": 100, "batch_max_wait_ms": 200}
PROFILE_MONITOR: dict[str, Any] = {"max_avg_ingest_ms": 1000.0, "max_queue_depth": 500, "breaches_before_alert": 2,
                                   "idle_reports_before_scale_down": 3}


def profiles(session: Session) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tenant's ``[stream]`` and ``[monitor]``: report every ``monitor_period_s``, cool down twice that."""
    period = session.scale.monitor_period_s
    return {**PROFILE_STREAM, "report_interval_s": period}, {**PROFILE_MONITOR, "cooldown_s": 2 * period}


async def _repetition(session: Session, daemon: BenchDaemon, i: int) -> dict[str, Any]:
    scale, minimum = session.scale, PROFILE_STREAM["min_consumers"]
    rate = scale.scaling_rate_factor * CAPACITY_PER_CONSUMER
    data = weather_repeated(int(rate * scale.scaling_load_seconds), session.env.data_dir)
    tenant = session.env.new_tenant("sc")
    stream, monitor = profiles(session)
    daemon.write_tenant(stream_profile(tenant, APP, stream, monitor))
    await wait_stream_ready(daemon, tenant)
    readings = session.env.db(f"tenant_{tenant}")[STREAM_COLLECTION]
    publisher = PublishTool(session.env.amqp_url, tenant, data.path, f"step{i}", rate=rate)
    await publisher.start()
    await publisher.wait(scale.scaling_load_seconds * 3 + 60)
    load_end = time.time()
    drained = await wait_documents(readings, data.rows, scale.timeout_s, daemon.alive)
    first = await readings.find_one({"_id": document_id(f"step{i}-0", None)}, {"received_at": 1})
    if first is None:
        raise BenchError(f"the first message (step{i}-0) is not in {tenant}'s readings")
    load_start = first["received_at"].timestamp()

    def changes() -> list[dict[str, Any]]:
        return [c for c in daemon.log.find("stream.consumers.changed", tenant=tenant) if event_time(c) >= load_start]

    wait_s = 120 + 10 * stream["report_interval_s"]
    try:
        back: dict[str, Any] | None = await await_until(
            lambda: next((c for c in changes() if c.get("to") == minimum and int(c.get("from", 0)) > minimum
                          and event_time(c) > load_start), None),
            wait_s, f"{tenant} back at min_consumers", 0.02, daemon.alive)
    except TimeoutError:
        back = None  # reported, with the monitor's last words, instead of failing the benchmark
    timeline = changes()
    ups = [c for c in timeline if int(c.get("to", 0)) > int(c.get("from", 0))]
    if not ups:
        raise BenchError(f"the monitor never added a consumer for {tenant}; see {daemon.log.path}")
    daemon.remove_tenant(tenant)
    await session.env.drop(f"tenant_{tenant}")
    last_events = [{k: e.get(k) for k in ("ts", "event", "consumers", "reason", "rule", "observed")}
                   for e in daemon.log.events if e.get("tenant") == tenant
                   and str(e.get("event", "")).startswith(("monitor.", "stream.consumer"))][-10:]
    return {
        "offered_msgs_per_s": rate, "messages": data.rows, "load_seconds": round(load_end - load_start, 2),
        "first_scale_up_s": round(event_time(ups[0]) - load_start, 2),
        "max_consumers_reached": max(int(c["to"]) for c in ups),
        "drained_after_load_s": round(drained - load_end, 2), "drained_after_start_s": round(drained - load_start, 2),
        "back_to_min_after_load_s": round(event_time(back) - load_end, 2) if back else None,
        "not_back_at_min_within_s": None if back else wait_s, "monitor_last_events": [] if back else last_events,
        "timeline": [{"t": round(event_time(c) - load_start, 2), "from": c.get("from"), "to": c.get("to"),
                      "reason": c.get("reason")} for c in timeline],
    }


async def run(session: Session, result: Result) -> None:
    """``repeat`` step loads, each by a new tenant of one daemon."""
    runs, scale = [], session.scale
    async with BenchDaemon(session.env, "scaling", extra_apps={APP: "bench.apps"}) as daemon:
        for i in range(session.repeat):
            session.say(f"{NAME}: {i + 1}/{session.repeat}: step load of "
                        f"{scale.scaling_rate_factor:g}x one consumer for {scale.scaling_load_seconds:g}s")
            runs.append(await _repetition(session, daemon, i))
    result.settings = {"app": f"{APP} ({SLOW_MS:g} ms per record, {CAPACITY_PER_CONSUMER:g} msg/s per consumer)",
                       "offered_msgs_per_s": scale.scaling_rate_factor * CAPACITY_PER_CONSUMER,
                       "load_seconds": scale.scaling_load_seconds,
                       "stream": profiles(session)[0], "monitor": profiles(session)[1]}
    back = [r["back_to_min_after_load_s"] for r in runs if r["back_to_min_after_load_s"] is not None]
    for key, label, values, unit in [
            ("first_scale_up_s", "first scale-up after the load began", [r["first_scale_up_s"] for r in runs], "s"),
            ("max_consumers", "consumers at the peak", [r["max_consumers_reached"] for r in runs], ""),
            ("drained_after_load_s", "backlog drained, after the load stopped",
             [r["drained_after_load_s"] for r in runs], "s"),
            ("back_to_min_after_load_s", "back at min_consumers, after the load stopped", back, "s")]:
        result.add(metric_from_runs(key, label, values, unit))
    for k, r in enumerate(runs):
        if r["back_to_min_after_load_s"] is None:
            result.notes.append(f"step load {k + 1}: the consumers were not back at min_consumers "
                                f"{r['not_back_at_min_within_s']:g} s after the load stopped; the monitor's last "
                                "events are in the run's monitor_last_events")
    result.runs = runs
