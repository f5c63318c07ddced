"""(4) Stream throughput and latency: weather readings published with ``mysimbdp publish``.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/stream.md``.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from bench.cli import Session
from bench.data import weather_repeated
from bench.loads import (
    RUNNERS,
    STREAM_COLLECTION,
    BareConsumer,
    BenchDaemon,
    BenchError,
    LatencyProbe,
    copy_indexes,
    insert_many_rate,
    platform_reports,
    read_documents,
    stream_profile,
    wait_stream_ready,
)
from bench.profile import profiled
from bench.results import Metric, Result, Target, metric_from_runs
from mysimbdp.stream.records import document_id
from tests.harness.publish import PublishTool
from tests.harness.stats import median, percentile
from tests.harness.wait import wait_documents

__all__ = ["NAME", "TITLE", "run"]

NAME = "stream"
TITLE = "Stream throughput and latency"
RATIO_TARGET = Target(">=", 0.7)
P99_TARGET = Target("<=", 250.0)
#: The benchmark tenant's ``[stream]`` values. The platform's defaults (prefetch 500 under
#: batch_max_messages 1000) let a consumer hold only half a batch, so a batch never fills and
#: every flush waits batch_max_wait_ms; the tenant here holds two batches and flushes after
#: 50 ms, as a tenant that cares for throughput and latency would set it.
TENANT_STREAM: dict[str, Any] = {"prefetch": 2000, "batch_max_messages": 1000, "batch_max_wait_ms": 50}
PREFETCH = TENANT_STREAM["prefetch"]
BATCH = TENANT_STREAM["batch_max_messages"]
#: Daemon CPU per message of the throughput run before tenant apps ran in worker processes
#: (bench/results/stream.json at commit 16804d2, measured on 68d2e65): what issue 14 compares with.
BEFORE_WORKERS_US = 105.8
THREAD = 'runner = "thread"'


def _published_rate(summary: str) -> float | None:
    """The msg/s figure of a ``mysimbdp publish`` summary line."""
    found = re.search(r"([\d,.]+) msg/s", summary)
    return float(found[1].replace(",", "")) if found else None


async def _new_tenant(session: Session, daemon: BenchDaemon, prefix: str, runner: str | None = None) -> str:
    tenant = session.env.new_tenant(prefix)
    daemon.write_tenant(stream_profile(tenant, stream=TENANT_STREAM, runner=runner))
    await wait_stream_ready(daemon, tenant)
    return tenant


async def _offboard(session: Session, daemon: BenchDaemon, tenant: str) -> None:
    daemon.remove_tenant(tenant)
    await session.env.drop(f"tenant_{tenant}")


async def _platform(session: Session, daemon: BenchDaemon, i: int, messages: int | None = None,
                    runner: str = "process") -> tuple[dict[str, Any], str]:
    env, data = session.env, weather_repeated(messages or session.scale.stream_messages, session.env.data_dir)
    tenant = await _new_tenant(session, daemon, "st" + runner[0], runner)
    readings, prefix = env.db(f"tenant_{tenant}")[STREAM_COLLECTION], f"thr{runner[0]}{i}"
    publisher = PublishTool(env.amqp_url, tenant, data.path, prefix)
    cpu0, store0 = daemon.cpu(), env.store_cpu()
    await publisher.start()
    done = await wait_documents(readings, data.rows, session.scale.timeout_s, daemon.alive)
    cpu1, store1 = daemon.cpu(), env.store_cpu()
    summary = await publisher.wait(60)
    first = await readings.find_one({"_id": document_id(f"{prefix}-0", None)}, {"received_at": 1})
    if first is None:
        raise BenchError(f"the first message ({prefix}-0) is not in {tenant}'s readings")
    seconds, busy, cpu = done - first["received_at"].timestamp(), time.time() - publisher.started, cpu1 - cpu0

    def us(cpu_seconds: float) -> float:
        return round(cpu_seconds / data.rows * 1e6, 2)

    return {"runner": runner, "messages": data.rows, "seconds": round(seconds, 3), "rate": round(data.rows / seconds, 1),
            "cpu_us_per_message": us(cpu.total), "daemon_cpu_us_per_message": us(cpu.daemon),
            "worker_cpu_us_per_message": us(cpu.workers), "workers_alive_at_end": cpu1.live_workers,
            "daemon_cpu_share": round(cpu.total / busy, 3),
            "store_cpu_share": round((store1 - store0) / busy, 3) if store0 is not None and store1 is not None else None,
            "publisher": summary, "platform_reports": platform_reports(daemon, tenant)}, tenant


async def _broker_ceiling(session: Session, i: int) -> dict[str, Any]:
    env, data = session.env, weather_repeated(session.scale.stream_messages, session.env.data_dir)
    key = f"ceil{env.run_id}{i}"
    consumer = BareConsumer(env.amqp_url, "mysimbdp.ingest", f"bench.ceiling.{key}", key, PREFETCH)
    await consumer.start(data.rows)
    publisher = PublishTool(env.amqp_url, key, data.path, f"ceil{i}")
    await publisher.start()
    summary = await publisher.wait(session.scale.timeout_s)
    return {**await consumer.wait(session.scale.timeout_s), "publisher": summary}


async def _latency(session: Session, daemon: BenchDaemon, rate: int, i: int) -> dict[str, Any]:
    data = weather_repeated(int(rate * session.scale.latency_seconds), session.env.data_dir)
    tenant = await _new_tenant(session, daemon, "lt")
    prefix = f"lat{rate}r{i}"
    probe = LatencyProbe(session.env.db(f"tenant_{tenant}")[STREAM_COLLECTION], prefix, data.rows, rate)
    publisher = PublishTool(session.env.amqp_url, tenant, data.path, prefix, rate=rate)
    await publisher.start()
    timeout = session.scale.latency_seconds + 120
    summary = (await asyncio.gather(probe.run(publisher.started, timeout), publisher.wait(timeout)))[1]
    lat = probe.latencies_ms
    out = {"offered_msgs_per_s": rate, "messages": data.rows, "sampled": len(lat),
           "published_msgs_per_s": _published_rate(summary),
           **{f"p{p}_ms": round(percentile(lat, p) or 0, 1) for p in (50, 95, 99)}, "max_ms": round(max(lat), 1),
           "poll_ms_median": round((median(probe.poll_seconds) or 0) * 1000, 1),
           "publisher": summary, "platform_reports": platform_reports(daemon, tenant)}
    await _offboard(session, daemon, tenant)
    return out


async def _profile(session: Session, daemon: BenchDaemon, result: Result) -> None:
    """One more throughput run with py-spy sampling the daemon (not counted in the figures)."""
    session.say(f"{NAME}: profiled throughput run (py-spy)")
    messages = max(1000, session.scale.stream_messages // 4)
    _, tenant = await profiled(result, daemon.pid, daemon.base, _platform(session, daemon, session.repeat, messages),
                               f"{messages} weather messages, publish to committed, app in a worker process")
    await _offboard(session, daemon, tenant)


async def run(session: Session, result: Result) -> None:
    """Throughput with both ceilings, then the latency runs, ``repeat`` times each."""
    env, scale = session.env, session.scale
    ceiling_db = env.db(f"bench_stream_ceiling_{env.run_id}")
    documents: list[Any] = []
    runs: list[dict[str, Any]] = []
    latency: dict[int, list[dict[str, Any]]] = {}
    indexes: list[str] = []
    async with BenchDaemon(env, "stream") as daemon:
        for i in range(session.repeat):
            both: dict[str, tuple[dict[str, Any], str]] = {}
            for runner in RUNNERS if i % 2 == 0 else RUNNERS[::-1]:
                session.say(f"{NAME}: {i + 1}/{session.repeat}: platform, runner {runner}, "
                            f"{scale.stream_messages} messages")
                both[runner] = await _platform(session, daemon, i, runner=runner)
            platform, tenant = both["process"]
            readings = env.db(f"tenant_{tenant}")[STREAM_COLLECTION]
            documents = documents or await read_documents(readings)
            indexes = await copy_indexes(readings, ceiling_db[f"c{i}"])
            for _, each in both.values():
                await _offboard(session, daemon, each)
            session.say(f"{NAME}: broker ceiling (bare consumer), store ceiling (insert_many)")
            broker = await _broker_ceiling(session, i)
            store = await insert_many_rate(ceiling_db[f"c{i}"], documents, BATCH, env.store_cpu)
            await ceiling_db.drop_collection(f"c{i}")
            lower = min(broker["rate"], store["rate"])
            runs.append({"platform": platform, "platform_thread": both["thread"][0], "broker_ceiling": broker,
                         "store_ceiling": store, "ratio": round(platform["rate"] / lower, 4) if lower else None})
            for rate in scale.latency_rates:
                session.say(f"{NAME}: {i + 1}/{session.repeat}: latency at {rate:,} msg/s "
                            f"for {scale.latency_seconds:g}s")
                latency.setdefault(rate, []).append(await _latency(session, daemon, rate, i))
        await _profile(session, daemon, result)
    await env.drop(ceiling_db.name)
    result.settings = {"messages": scale.stream_messages,
                       "tenant_profile": stream_profile("<id>", stream=TENANT_STREAM)["stream"],
                       "latency_seconds": scale.latency_seconds, "offered_loads": list(scale.latency_rates),
                       "publisher": "mysimbdp publish (one record per message, confirms, window 2000)",
                       "ceiling_prefetch": PREFETCH, "ceiling_insert_batch": BATCH,
                       "ceiling_indexes": indexes if runs else []}
    _figures(result, runs, latency)
    result.runs = [{**r, "latency": [latency[rate][k] for rate in latency]} for k, r in enumerate(runs)]


def _figures(result: Result, runs: list[dict[str, Any]], latency: dict[int, list[dict[str, Any]]]) -> None:
    """Throughput against the ceilings, CPU per message against the figure before workers, latency."""
    process, thread = [r["platform"] for r in runs], [r["platform_thread"] for r in runs]
    total = [p["cpu_us_per_message"] for p in process]
    for key, label, values, unit, target, note in [
        ("platform_msgs_per_s", "platform, publish to committed (app in a worker process)", [p["rate"] for p in process],
         "msg/s", None, ""),
        ("thread_msgs_per_s", f"platform, publish to committed, {THREAD}", [t["rate"] for t in thread], "msg/s",
         None, ""),
        ("broker_ceiling_msgs_per_s", "ceiling: bare aio-pika consumer, ack only",
         [r["broker_ceiling"]["rate"] for r in runs], "msg/s", None, ""),
        ("store_ceiling_docs_per_s", "ceiling: insert_many of the same readings", [r["store_ceiling"]["rate"] for r in runs],
         "docs/s", None, ""),
        ("cpu_us_per_message", "daemon + worker CPU per message, app in a worker process", total, "µs", None,
         "user+sys of the daemon and of its app workers over the throughput run, per message"),
        ("daemon_cpu_us_per_message", "of which the daemon", [p["daemon_cpu_us_per_message"] for p in process], "µs",
         None, ""),
        ("worker_cpu_us_per_message", "of which the workers", [p["worker_cpu_us_per_message"] for p in process], "µs",
         None, ""),
        ("thread_cpu_us_per_message", f"daemon CPU per message, {THREAD}", [t["cpu_us_per_message"] for t in thread],
         "µs", None, "")]:
        result.add(metric_from_runs(key, label, values, unit, target, note))
    result.add(Metric("before_workers_cpu_us_per_message", "daemon CPU per message before apps ran in workers",
                      BEFORE_WORKERS_US, "µs", note="commit 68d2e65, app in the daemon's threads "
                      "(bench/results/stream.json of commit 16804d2)"))
    result.add(metric_from_runs("cpu_vs_before_workers", "daemon + worker CPU per message / the figure before workers",
                                [v / BEFORE_WORKERS_US for v in total], "×"))
    result.add(metric_from_runs("ratio", "platform / the lower ceiling", [r["ratio"] for r in runs if r["ratio"]],
                                "", RATIO_TARGET, note="median of the per-repetition ratios"))
    for rate, lats in latency.items():
        achieved = [lat["published_msgs_per_s"] for lat in lats if lat["published_msgs_per_s"]]
        result.add(metric_from_runs(f"published_msgs_per_s_at_{rate}", f"load the publisher reached, asked for {rate:,} msg/s",
                                    achieved, "msg/s"))
        if achieved and (median(achieved) or 0) < 0.9 * rate:
            result.notes.append(
                f"at {rate:,} msg/s asked, the publish tool reached only {median(achieved):,.0f} msg/s on this machine "
                "(it shares the two cores with RabbitMQ, the store and the daemon): the latencies at that load are "
                "those of the load actually offered, queueing included")
        for pct in (50, 95, 99):
            result.add(metric_from_runs(f"latency_p{pct}_ms_at_{rate}", f"latency p{pct} at {rate:,} msg/s",
                                        [lat[f"p{pct}_ms"] for lat in lats], "ms",
                                        P99_TARGET if pct == 99 and rate == 1000 else None))
    publish_rates = [p for p in (_published_rate(r["platform"]["publisher"]) for r in runs) if p]
    result.add(metric_from_runs("publisher_msgs_per_s", "the publish tool's own rate (throughput run)",
                                publish_rates, "msg/s"))
    publish, platform_rate = median(publish_rates), median([p["rate"] for p in process])
    if publish and platform_rate and platform_rate >= 0.85 * publish:
        result.notes.append(
            f"the platform committed {platform_rate:,.0f} msg/s while the publish tool sent {publish:,.0f} msg/s: "
            "the publisher (one process, publisher confirms) bounds the platform's figure and the bare "
            "consumer's alike, on a machine whose two cores also run RabbitMQ, the store and the daemon")
    p99 = result.figure("latency_p99_ms_at_1000")
    if p99 is not None and not P99_TARGET.met(p99):
        result.notes.append(
            f"latency target missed: p99 {p99:.0f} ms at 1,000 msg/s. A message waits up to the tenant's "
            f"batch_max_wait_ms ({TENANT_STREAM['batch_max_wait_ms']} ms) for its batch to fill before the app runs "
            "and the batch is written; the platform's own view (stream.report events) is in each run's platform_reports")
    if 1000 not in latency:
        result.add(Metric("latency_p99_ms_at_1000", "latency p99 at 1,000 msg/s", None, "ms", P99_TARGET,
                          note="not measured at this scale"))
