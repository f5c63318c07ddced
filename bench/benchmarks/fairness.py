"""(5) Fairness: tenant B's small file while tenant A loads a 1 GB file.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/fairness.md``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.cli import Session
from bench.data import flights_sized, flights_slice
from bench.loads import BATCH_SETTINGS, BenchDaemon, BenchError, batch_profile, load_file
from bench.results import Result, Target, metric_from_runs
from tests.harness.stats import median

__all__ = ["NAME", "TITLE", "run"]

NAME = "fairness"
TITLE = "Fairness: a small file beside another tenant's 1 GB file"
TARGET = Target("<=", 2.0)
IDLE_SAMPLES = 3


async def _repetition(session: Session, i: int) -> dict[str, Any]:
    scale, env = session.scale, session.env
    big, rows = flights_sized(scale.fairness_big_bytes, env.data_dir), scale.fairness_small_rows
    smalls = [flights_slice(rows, k * rows, env.data_dir) for k in range(IDLE_SAMPLES + 1)]
    a, b = env.new_tenant("fa"), env.new_tenant("fb")
    # A's load is abandoned (the daemon killed): only B's time matters here
    async with BenchDaemon(env, "fairness", tenants=[batch_profile(a), batch_profile(b)], batch=BATCH_SETTINGS,
                           kill=True) as daemon:
        idle = [(await load_file(daemon, b, small, scale.timeout_s)).seconds for small in smalls[:IDLE_SAMPLES]]
        daemon.drop_file(a, big.path, f"big-{i}.csv")
        await asyncio.sleep(scale.fairness_delay_s)
        busy = await load_file(daemon, b, smalls[IDLE_SAMPLES], scale.timeout_s)
        if daemon.log.find("batch.file.committed", tenant=a):
            raise BenchError(f"tenant A's {big.bytes / 1e6:.0f} MB file committed before B's file: "
                             "it is too small to measure fairness at this scale")
    for tenant in (a, b):
        await env.drop(f"tenant_{tenant}")
    idle_s = median(idle) or 0.0
    return {"b_idle_seconds": [round(x, 3) for x in idle], "b_idle_median_s": round(idle_s, 3),
            "b_busy_seconds": round(busy.seconds, 3), "ratio": round(busy.seconds / idle_s, 3) if idle_s else None,
            "a_bytes": big.bytes, "b_rows": rows}


async def run(session: Session, result: Result) -> None:
    """``repeat`` repetitions, each on a fresh daemon."""
    runs = []
    for i in range(session.repeat):
        session.say(f"{NAME}: repetition {i + 1}/{session.repeat}")
        runs.append(await _repetition(session, i))
    result.settings = {"a_bytes": runs[0]["a_bytes"], "b_rows": session.scale.fairness_small_rows,
                       "delay_s": session.scale.fairness_delay_s, "idle_samples": IDLE_SAMPLES,
                       "daemon_batch_settings": BATCH_SETTINGS, "tenant_profile": batch_profile("<id>")["batch"]}
    result.add(metric_from_runs("b_idle_seconds", "B alone on the idle platform, drop to committed",
                                [r["b_idle_median_s"] for r in runs], "s"))
    result.add(metric_from_runs("b_busy_seconds", "B while A loads its large file",
                                [r["b_busy_seconds"] for r in runs], "s"))
    result.add(metric_from_runs("ratio", "B beside A / B alone", [r["ratio"] for r in runs if r["ratio"]], "×",
                                TARGET, note="median of the per-repetition ratios"))
    result.runs = runs
    ratio = result.figure("ratio")
    if ratio is not None and not TARGET.met(ratio):
        result.notes.append(f"target missed: B's small file takes {ratio:.1f}× its idle time while A loads; "
                            "see the runs for each repetition's times")
