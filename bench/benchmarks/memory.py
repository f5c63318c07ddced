"""(3) Memory and scale: peak RSS and records/s of the daemon loading ~100 MB and ~1 GB files.

The files repeat flights.csv's rows with unique keys (dates shifted by a year per copy).
Each load runs in a fresh daemon, so ``VmHWM`` (the peak RSS since the process started)
belongs to that load alone; the daemon's RSS before the load is reported beside it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from bench.daemon import BenchDaemon
from bench.data import flights_sized
from bench.loads import BATCH_SETTINGS, batch_profile, load_file
from bench.results import Metric, Result, Target, metric_from_runs
from bench.session import Session
from bench.stats import median

__all__ = ["NAME", "TITLE", "run"]

NAME = "memory"
TITLE = "Memory and scale: 100 MB and 1 GB files"
RSS_TARGET = Target("<=", 150.0)
LINEAR_TARGET = Target(">=", 0.9)


def _label(size: int) -> str:
    return f"{size / 1e9:g} GB" if size >= 1e9 else f"{size / 1e6:g} MB"


async def _load(session: Session, size: int) -> dict[str, Any]:
    data = flights_sized(size, session.env.data_dir)
    tenant = session.env.new_tenant("mem")
    daemon = BenchDaemon(session.env, "memory", tenants=[batch_profile(tenant)], batch=BATCH_SETTINGS)
    async with daemon:
        assert daemon.stats is not None
        rss_before = daemon.stats.rss_mb()
        run = await load_file(daemon, tenant, data, session.scale.timeout_s)
    await session.env.drop(f"tenant_{tenant}")
    return {**run.to_json(), "rss_before_mb": round(rss_before, 1), "size_label": _label(size)}


async def run(session: Session, result: Result) -> None:
    """The small file ``repeat`` times, the large one ``large_repeat`` times (it is long)."""
    scale = session.scale
    plan = [(scale.small_bytes, session.repeat), (scale.large_bytes, min(session.repeat, scale.large_repeat))]
    by_size: dict[int, list[dict[str, Any]]] = {}
    for size, reps in plan:
        session.say(f"{NAME}: generating the {_label(size)} file (cached in bench/data)")
        flights_sized(size, session.env.data_dir)
        for i in range(reps):
            session.say(f"{NAME}: {_label(size)} load {i + 1}/{reps}")
            load = await _load(session, size)
            session.say(f"{NAME}:   {load['records_per_s']:,.0f} records/s, peak RSS {load['peak_rss_mb']:.0f} MiB")
            by_size.setdefault(size, []).append(load)
    small, large = by_size[scale.small_bytes], by_size[scale.large_bytes]
    result.settings = {"small": {"bytes": small[0]["bytes"], "records": small[0]["records"], "repeat": len(small)},
                       "large": {"bytes": large[0]["bytes"], "records": large[0]["records"], "repeat": len(large)},
                       "daemon_batch_settings": BATCH_SETTINGS}
    ls, ll = _label(scale.small_bytes), _label(scale.large_bytes)
    result.add(metric_from_runs("peak_rss_large_mb", f"peak RSS, {ll} file", [r["peak_rss_mb"] for r in large],
                                "MiB", RSS_TARGET))
    result.add(metric_from_runs("peak_rss_small_mb", f"peak RSS, {ls} file", [r["peak_rss_mb"] for r in small], "MiB"))
    anon = [r["peak_anon_mb"] for r in large if r.get("peak_anon_mb") is not None]
    if anon:
        result.add(metric_from_runs(
            "peak_anon_large_mb", f"peak anonymous RSS (sampled every 0.1 s), {ll} file", anon, "MiB",
            note="the daemon's own memory, without the shared libraries' file-backed pages, whose "
                 "resident share depends on the page cache (more just after pip wrote them)"))
    result.add(metric_from_runs("rss_before_mb", "RSS of the started daemon before loading",
                                [r["rss_before_mb"] for r in small + large], "MiB"))
    rate_small = median([r["records_per_s"] for r in small])
    rate_large = median([r["records_per_s"] for r in large])
    result.add(metric_from_runs("records_per_s_small", f"records/s, {ls} file", [r["records_per_s"] for r in small],
                                "records/s"))
    result.add(metric_from_runs("records_per_s_large", f"records/s, {ll} file", [r["records_per_s"] for r in large],
                                "records/s"))
    ratio = rate_large / rate_small if rate_small and rate_large else None
    result.add(Metric("rate_ratio", f"records/s {ll} / {ls}", ratio, "", LINEAR_TARGET,
                      note="ratio of the medians; >= 0.9 means the large file is within 10 % of the small one"))
    result.add(metric_from_runs("cpu_us_per_record_large", f"daemon CPU per record, {ll} file",
                                [r["cpu_us_per_record"] for r in large], "µs"))
    floor = _import_rss_mb()
    if floor is not None:
        result.add(Metric("import_rss_mb", "RSS of a Python process that only imports the daemon and the app",
                          floor, "MiB", note="the floor under every daemon figure above"))
    result.runs = small + large
    explain(result, small, large)


def _import_rss_mb() -> float | None:
    """The RSS of a fresh interpreter after importing what the daemon and the flights app import."""
    code = ("import mysimbdp.daemon, mysimbdp.batch.loader, mysimbdp_flights.batch, pyarrow.csv, pyarrow.compute\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')][0])")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return int(out.stdout.strip()) / 1024
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _store_us(runs: list[dict[str, Any]]) -> float | None:
    values = [r["store_cpu_share"] * r["seconds"] / r["records"] * 1e6 for r in runs
              if r.get("store_cpu_share") is not None and r.get("records")]
    return median(values)


def explain(result: Result, small: list[dict[str, Any]], large: list[dict[str, Any]]) -> None:
    """Say why a target is missed: the peak split into before and during the load; the rate
    beside the store's CPU per record, small file against large."""
    figures = {m.key: m.value for m in result.metrics}
    ratio = figures.get("rate_ratio")
    if ratio is not None and not LINEAR_TARGET.met(ratio):
        store_small, store_large = _store_us(small), _store_us(large)
        text = f"linearity target missed: the large file loads at {ratio:.2f} of the small one's rate"
        if store_small and store_large:
            text += (f"; the store spends {store_large:.0f} µs of CPU per record on the large file against "
                     f"{store_small:.0f} µs on the small one (its indexes grow with the collection)")
        result.notes.append(text)
    peak, before, floor = figures.get("peak_rss_large_mb"), figures.get("rss_before_mb"), figures.get("import_rss_mb")
    if peak is None or RSS_TARGET.met(peak) or before is None:
        return
    text = (f"RSS target missed: peak {peak:.0f} MiB, of which {before:.0f} MiB were resident before the load "
            f"began and {peak - before:.0f} MiB came with it")
    if floor is not None:
        text += f"; importing the daemon's and the app's modules alone takes {floor:.0f} MiB"
    result.notes.append(text)
