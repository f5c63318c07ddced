"""(3) Memory and scale: peak RSS and records/s of the daemon loading ~100 MB and ~1 GB files.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/memory.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from typing import Any

from bench.cli import Session
from bench.data import flights_sized
from bench.loads import BATCH_SETTINGS, BenchDaemon, batch_profile, load_file
from bench.results import Metric, Result, Target, metric_from_runs
from tests.harness.daemon import status_mb
from tests.harness.stats import median, spread

__all__ = ["NAME", "TITLE", "run", "Progress"]

NAME = "memory"
TITLE = "Memory and scale: 100 MB and 1 GB files"
RSS_TARGET = Target("<=", 150e6 / 2**20)  # 150 MB = 143.05 MiB: the figures are in MiB
LINEAR_TARGET = Target(">=", 0.9)
TENTHS = 10


def _label(size: int) -> str:
    return f"{size / 1e9:g} GB" if size >= 1e9 else f"{size / 1e6:g} MB"


class Progress:
    """Samples a load's progress while the ``async with`` block runs: at each
    ``batch.file.progress`` event of the tenant (the daemon logs one every ``every_s``, its
    ``progress_interval_s``), the seconds, the documents written so far and the store's and
    the daemon's CPU seconds.

    The count comes from the daemon's log, not from the store: counting the collection
    (``estimated_document_count``) is a scan of the whole table on the embedded store, whose
    cost grows with the collection and was taken from the load it measured.
    """

    def __init__(self, daemon: BenchDaemon, tenant: str, every_s: float) -> None:
        self.daemon, self.tenant, self.every_s = daemon, tenant, every_s
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._seen = 0

    def take(self, count: int) -> None:
        """One sample at ``count`` documents (never fewer than the last: documents are only added)."""
        count = max(count, self.samples[-1]["count"]) if self.samples else count
        with contextlib.suppress(OSError):
            self.samples.append({"t": time.monotonic(), "count": count, "store": self.daemon.env.store_cpu(),
                                 "daemon": self.daemon.cpu().total})

    async def _run(self) -> None:
        # the events the load's own wait reads into the tail (reading here too would hide them from it)
        events = self.daemon.log.events
        while True:
            await asyncio.sleep(0.02)
            for event in events[self._seen:]:
                if event.get("event") == "batch.file.progress" and event.get("tenant") == self.tenant:
                    self.take(int(event.get("records_written", 0)) + int(event.get("records_rejected", 0)))
            self._seen = len(events)

    async def __aenter__(self) -> Progress:
        self.take(0)  # before the drop: the collection is new and empty
        self._seen = len(self.daemon.log.events)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def tenths(self, records: int) -> list[dict[str, Any]]:
        """Rate and CPU per record in each tenth of ``records``, interpolated between samples."""
        if len(self.samples) < 2 or records <= 0:
            return []
        rows, step = [], records / TENTHS
        for k in range(TENTHS):
            a, b = self._at(k * step), self._at((k + 1) * step)
            seconds = b["t"] - a["t"]
            store = (b["store"] - a["store"]) / step * 1e6 if None not in (a["store"], b["store"]) else None
            rows.append({"tenth": k + 1, "documents_at_end": round((k + 1) * step), "seconds": round(seconds, 2),
                         "records_per_s": round(step / seconds, 1) if seconds > 0 else None,
                         "store_cpu_us_per_record": round(store, 2) if store is not None else None,
                         "daemon_cpu_us_per_record": round((b["daemon"] - a["daemon"]) / step * 1e6, 2)})
        return rows

    def _at(self, count: float) -> dict[str, Any]:
        """The sample at ``count`` documents, linear between the two samples around it."""
        samples = self.samples
        if count <= samples[0]["count"]:
            # The last sample before the first write: the file's hashing, the ledger and the
            # stability wait come before any document and belong to no tenth.
            return [s for s in samples if s["count"] == samples[0]["count"]][-1]
        for prev, cur in zip(samples, samples[1:], strict=False):
            if cur["count"] >= count:
                frac = (count - prev["count"]) / (cur["count"] - prev["count"])
                return {k: (None if prev[k] is None or cur[k] is None else prev[k] + frac * (cur[k] - prev[k]))
                        for k in ("t", "count", "store", "daemon")}
        return samples[-1]


async def _load(session: Session, size: int, progress: bool = False) -> dict[str, Any]:
    data, tenant, scale = flights_sized(size, session.env.data_dir), session.env.new_tenant("mem"), session.scale
    extra: dict[str, Any] = {}
    async with BenchDaemon(session.env, "memory", tenants=[batch_profile(tenant)],
                           batch={**BATCH_SETTINGS, "progress_interval_s": scale.progress_every_s}) as daemon:
        rss_before = status_mb(daemon.pid, "VmRSS")
        if progress:
            async with Progress(daemon, tenant, scale.progress_every_s) as sampler:
                run = await load_file(daemon, tenant, data, scale.timeout_s)
            sampler.take(run.records)  # the last sample, at the commit: every record is written
            extra = {"progress_every_s": sampler.every_s, "progress_samples": len(sampler.samples),
                     "tenths": sampler.tenths(run.records)}
        else:
            run = await load_file(daemon, tenant, data, scale.timeout_s)
    await session.env.drop(f"tenant_{tenant}")
    return {**run.to_json(), "rss_before_mb": round(rss_before, 1), "size_label": _label(size), **extra}


async def run(session: Session, result: Result) -> None:
    """The small file at least ``small_repeat`` times, the large one ``large_repeat`` times
    (it is long), its progress sampled."""
    scale = session.scale
    small_reps = session.repeat_override or max(session.repeat, scale.small_repeat)
    by_size: dict[int, list[dict[str, Any]]] = {}
    for size, reps, progress in [(scale.small_bytes, small_reps, False),
                                 (scale.large_bytes, min(session.repeat, scale.large_repeat), True)]:
        session.say(f"{NAME}: generating the {_label(size)} file (cached in bench/data)")
        flights_sized(size, session.env.data_dir)
        for i in range(reps):
            session.say(f"{NAME}: {_label(size)} load {i + 1}/{reps}")
            by_size.setdefault(size, []).append(await _load(session, size, progress))
    small, large = by_size[scale.small_bytes], by_size[scale.large_bytes]
    result.settings = {"small": {"bytes": small[0]["bytes"], "records": small[0]["records"], "repeat": len(small)},
                       "large": {"bytes": large[0]["bytes"], "records": large[0]["records"], "repeat": len(large)},
                       "progress_every_s": scale.progress_every_s, "daemon_batch_settings": BATCH_SETTINGS}
    ls, ll = _label(scale.small_bytes), _label(scale.large_bytes)
    result.add(metric_from_runs("peak_rss_large_mb", f"peak RSS, {ll} file", [r["peak_rss_mb"] for r in large],
                                "MiB", RSS_TARGET,
                                note="VmHWM in MiB (2^20 bytes); the target, 150 MB (10^6 bytes), is 143 MiB"))
    result.add(metric_from_runs("peak_rss_small_mb", f"peak RSS, {ls} file", [r["peak_rss_mb"] for r in small], "MiB"))
    anon = [r["peak_anon_mb"] for r in large if r.get("peak_anon_mb") is not None]
    if anon:
        result.add(metric_from_runs(
            "peak_anon_large_mb", f"peak anonymous RSS (sampled every 0.1 s), {ll} file", anon, "MiB",
            note="the daemon's own memory, without the shared libraries' file-backed pages, whose "
                 "resident share depends on the page cache (more just after pip wrote them)"))
    result.add(metric_from_runs("rss_before_mb", "RSS of the started daemon before loading",
                                [r["rss_before_mb"] for r in small + large], "MiB"))
    rates_small, rates_large = [r["records_per_s"] for r in small], [r["records_per_s"] for r in large]
    result.add(metric_from_runs("records_per_s_small", f"records/s, {ls} file", rates_small, "records/s"))
    result.add(metric_from_runs("records_per_s_large", f"records/s, {ll} file", rates_large, "records/s"))
    rate_small, rate_large = median(rates_small), median(rates_large)
    pairings = [rl / rs for rl in rates_large for rs in rates_small if rs]
    result.add(Metric("rate_ratio", f"records/s {ll} / {ls}", rate_large / rate_small if rate_small and rate_large
                      else None, "", LINEAR_TARGET, spread(pairings),
                      note=f"ratio of the medians; min–max over the {len(pairings)} pairing{'s' if len(pairings) != 1 else ''} "
                           f"of a {ll} load with a {ls} load; >= 0.9 means the large file is within 10 % of "
                           "the small one"))
    result.add(metric_from_runs("cpu_us_per_record_large", f"daemon + worker CPU per record, {ll} file",
                                [r["cpu_us_per_record"] for r in large], "µs"))
    for who in ("store", "daemon"):  # CPU per record in the first and the last tenth of the large load
        for which, index in (("first", 0), ("last", -1)):
            values = [r["tenths"][index][f"{who}_cpu_us_per_record"] for r in large if r.get("tenths")]
            values = [v for v in values if v is not None]
            if values:
                result.add(metric_from_runs(f"{who}_cpu_us_{which}_tenth_large",
                                            f"{'daemon + worker' if who == 'daemon' else who} CPU per record, "
                                            f"{which} tenth of the {ll} load", values, "µs"))
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
    return median([r["store_cpu_share"] * r["seconds"] / r["records"] * 1e6 for r in runs
                   if r.get("store_cpu_share") is not None and r.get("records")])


def _growth_text(result: Result, label: str) -> str:
    """How the store's and the daemon's CPU per record changed from the first tenth of the
    large load to the last (empty when the progress was not sampled)."""
    parts = [(who, first, last) for who in ("store", "daemon")
             if (first := result.figure(f"{who}_cpu_us_first_tenth_large"))
             and (last := result.figure(f"{who}_cpu_us_last_tenth_large"))]
    if not parts:
        return ""
    text = "; during the " + label + " load, CPU per record went " + ", ".join(
        f"from {first:.1f} µs in the first tenth to {last:.1f} µs in the last for the {who}" for who, first, last in parts)
    growing = [who for who, first, last in parts if last > 1.1 * first]
    if growing:
        return text + f": the {' and the '.join(growing)}'s cost per record grows as the collection fills"
    return text + ": neither grows by more than 10 % as the collection fills"


def explain(result: Result, small: list[dict[str, Any]], large: list[dict[str, Any]]) -> None:
    """Say why a target is missed: the peak split into before and during the load; the rate
    beside the store's CPU per record, small file against large, and along the large load."""
    ratio = result.figure("rate_ratio")
    if ratio is not None and not LINEAR_TARGET.met(ratio):
        store_small, store_large = _store_us(small), _store_us(large)
        text = f"linearity target missed: the large file loads at {ratio:.2f} of the small one's rate"
        if store_small and store_large:
            text += (f"; the store spends {store_large:.0f} µs of CPU per record on the large file against "
                     f"{store_small:.0f} µs on the small one")
        result.notes.append(text + _growth_text(result, large[0].get("size_label", "large") if large else "large"))
    peak, before, floor = (result.figure(k) for k in ("peak_rss_large_mb", "rss_before_mb", "import_rss_mb"))
    if peak is None or RSS_TARGET.met(peak) or before is None:
        return
    text = (f"RSS target missed: peak {peak:.0f} MiB (target {RSS_TARGET.value:.0f} MiB = 150 MB), of which "
            f"{before:.0f} MiB were resident before the load began and {peak - before:.0f} MiB came with it")
    if floor is not None:
        text += f"; importing the daemon's and the app's modules alone takes {floor:.0f} MiB"
    result.notes.append(text)
