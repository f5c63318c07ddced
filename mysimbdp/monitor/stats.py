"""Ingestion statistics per tenant and for the platform (``mysimbdp stats``, ``GET /tenants/{id}/stats``).

Offline, for log analysts: :func:`compute_from_log` reads ``<var>/log/mysimbdp.jsonl`` and its
rotated files (``.1`` … ``.N``, oldest first), keeps the events of interest and aggregates
them: files committed and rejected (by reason), records, bytes, batch throughput and load
time distributions, stream messages and latency, alerts and scaling decisions. Lines that are
not JSON objects are counted, never fatal.

In the daemon, :class:`LiveStats` aggregates the same events as they happen (a subscriber of
the daemon's event bus, like the metrics), in hourly buckets with bounded samples, so the HTTP
endpoint never reads a file. Both aggregate typed events (:mod:`mysimbdp.events`): a log line
becomes one through :meth:`~mysimbdp.events.Event.from_log_line`, the one lenient reading of
lines any version wrote. See ``docs/monitoring.md``.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from mysimbdp.events import Event, event_class
from mysimbdp.events.catalog import (
    BatchFileCommitted,
    BatchFileRejected,
    MonitorAlert,
    StreamBatchCommitted,
    StreamConsumersChanged,
    StreamReport,
    UploadRejected,
)
from mysimbdp.monitor.reports import percentile

__all__ = [
    "log_files", "read_events", "parse_since", "compute", "compute_from_log", "empty_section",
    "render_text", "PLATFORM", "MAX_DECISIONS", "LiveStats",
]

PLATFORM = "*"
MAX_DECISIONS = 20  # scaling decisions listed per section (the most recent ones)
# the events the statistics count
_TYPES = (BatchFileCommitted, BatchFileRejected, UploadRejected, StreamBatchCommitted, StreamReport,
          StreamConsumersChanged, MonitorAlert)
_EVENTS = frozenset(t.NAME for t in _TYPES)


def log_files(path: Path) -> list[Path]:
    """``path`` and its rotated siblings ``path.1`` … ``path.N`` that exist, oldest first."""
    rotated: list[tuple[int, Path]] = []
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)$")
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            m = pattern.match(candidate.name)
            if m:
                rotated.append((int(m.group(1)), candidate))
    files = [p for _, p in sorted(rotated, reverse=True)]
    if path.exists():
        files.append(path)
    return files


def read_events(paths: Iterable[Path], counts: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of every line of ``paths``; unparsable lines are counted as ``unparsable``."""
    counts = counts if counts is not None else Counter()
    for path in paths:
        with open(path, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                counts["lines"] += 1
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    counts["unparsable"] += 1
                    continue
                if isinstance(event, dict):
                    yield event
                else:
                    counts["unparsable"] += 1


def parse_since(text: str) -> datetime:
    """An ISO-8601 date or time; without a time zone it is UTC. Raises ``ValueError`` saying why."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r} is not an ISO-8601 date or time, e.g. 2026-01-31 or "
                         "2026-01-31T08:00:00Z") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(event: Mapping[str, Any]) -> datetime | None:
    ts = event.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return parse_since(ts)
    except ValueError:
        return None


# ---- aggregation ---------------------------------------------------------------------------

class _Samples:
    """A distribution: exact count, sum, min and max; percentiles from the values kept.

    With ``cap`` None every value is kept (the offline statistics: exact percentiles); with a
    cap, a reservoir sample of ``cap`` values (the daemon's: bounded memory).
    """

    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap
        self.count = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.lo, self.hi = min(self.lo, value), max(self.hi, value)
        if self.cap is None or len(self.values) < self.cap:
            self.values.append(value)
        else:
            slot = random.randrange(self.count)
            if slot < self.cap:
                self.values[slot] = value

    def merge(self, other: _Samples) -> None:
        self.count += other.count
        self.total += other.total
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.values.extend(other.values)
        if self.cap is not None and len(self.values) > self.cap:
            self.values = random.sample(self.values, self.cap)

    def summary(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """Nearest-rank percentiles; None for each key when there are no values (``count`` is 0)."""
        ordered = sorted(self.values)
        out: dict[str, Any] = {}
        for key in keys:
            if key == "count":
                out[key] = self.count
            elif not self.count:
                out[key] = None
            elif key == "mean":
                out[key] = _r(self.total / self.count)
            elif key == "min":
                out[key] = _r(self.lo)
            elif key == "max":
                out[key] = _r(self.hi)
            else:
                out[key] = _r(percentile(ordered, int(key[1:]) / 100, ordered=True))
        return out


class _Totals:
    """Running totals of one tenant (or of the platform)."""

    def __init__(self, cap: int | None = None) -> None:
        self.c: Counter[str] = Counter()
        self.file_reasons: Counter[str] = Counter()
        self.upload_reasons: Counter[str] = Counter()
        self.alert_rules: Counter[str] = Counter()
        self.rates = _Samples(cap)
        self.seconds = _Samples(cap)
        self.report_p95 = _Samples(cap)
        self.flush_latency = _Samples(cap)
        self.report_weighted_ms = 0.0  # sum of the reports' avg_ingest_ms x messages
        self.decisions: list[dict[str, Any]] = []

    def merge(self, other: _Totals) -> None:
        """Add ``other``'s figures to these (the decisions kept are the most recent)."""
        for mine, theirs in ((self.c, other.c), (self.file_reasons, other.file_reasons),
                             (self.upload_reasons, other.upload_reasons), (self.alert_rules, other.alert_rules)):
            mine.update(theirs)
        for name in ("rates", "seconds", "report_p95", "flush_latency"):
            getattr(self, name).merge(getattr(other, name))
        self.report_weighted_ms += other.report_weighted_ms
        self.decisions.extend(other.decisions)
        del self.decisions[:-MAX_DECISIONS]

    def add(self, e: Event, ts: str | None) -> None:
        """Count one event (of the types in ``_TYPES``; others are ignored) logged at ``ts``."""
        match e:
            case BatchFileCommitted():
                self.c["files_committed"] += 1
                self._records(e)
                self.c["bytes"] += e.bytes
                self.seconds.add(e.seconds)
                if e.records_per_s > 0:
                    self.rates.add(e.records_per_s)
                elif e.seconds > 0:
                    self.rates.add(e.records_written / e.seconds)
            case BatchFileRejected():
                self.c["files_rejected"] += 1
                self.c["rejected_bytes"] += e.bytes
                self.file_reasons[e.code or "unknown"] += 1
                self._records(e)
            case UploadRejected():
                self.c["uploads_rejected"] += 1
                self.upload_reasons[e.code or "unknown"] += 1
            case StreamBatchCommitted():
                for key, value in (("messages", e.messages), ("documents", e.documents), ("rejected", e.rejected),
                                   ("duplicates", e.duplicates), ("bytes", e.bytes)):
                    self.c["stream_" + key] += value
                if e.oldest_latency_ms is not None:
                    self.flush_latency.add(e.oldest_latency_ms)
            case StreamReport():
                self.c["reports"] += 1
                if e.messages:
                    self.c["report_messages"] += e.messages
                    self.report_weighted_ms += e.avg_ingest_ms * e.messages
                    self.report_p95.add(e.p95_ingest_ms or 0.0)
            case StreamConsumersChanged():
                before, after = e.from_, e.to
                self.c["scale_up" if after > before else "scale_down" if after < before else "scale_same"] += 1
                self.decisions.append({"ts": ts, "tenant": e.tenant, "from": before, "to": after, "reason": e.reason})
                del self.decisions[:-MAX_DECISIONS]
            case MonitorAlert():
                self.alert_rules[e.rule or "unknown"] += 1

    def _records(self, e: BatchFileCommitted | BatchFileRejected) -> None:
        for key, value in (("records_in", e.records_in), ("records_written", e.records_written),
                           ("records_rejected", e.records_rejected), ("duplicates", e.duplicates)):
            self.c[key] += value

    def result(self) -> dict[str, Any]:
        c = self.c
        weighted = c["report_messages"]
        mean_ms = self.report_weighted_ms / weighted if weighted else None
        total_seconds = self.seconds.total
        return {
            "batch": {
                "files_committed": c["files_committed"], "files_rejected": c["files_rejected"],
                "rejected_by_reason": dict(sorted(self.file_reasons.items())),
                "records_in": c["records_in"], "records_written": c["records_written"],
                "records_rejected": c["records_rejected"], "duplicates": c["duplicates"],
                "bytes": c["bytes"], "rejected_bytes": c["rejected_bytes"],
                "throughput_records_per_s": {
                    **self.rates.summary(("min", "mean", "p50", "p95", "max")),
                    "overall": _r(c["records_written"] / total_seconds) if total_seconds > 0 else None},
                "file_seconds": self.seconds.summary(("count", "min", "mean", "p50", "p95", "max")),
            },
            "uploads": {"rejected": c["uploads_rejected"],
                        "rejected_by_reason": dict(sorted(self.upload_reasons.items()))},
            "stream": {
                "messages": c["stream_messages"], "documents": c["stream_documents"],
                "rejected": c["stream_rejected"], "duplicates": c["stream_duplicates"],
                "bytes": c["stream_bytes"], "reports": c["reports"],
                "ingest_ms": {"mean": _r(mean_ms), **_p95s(self.report_p95)},
                "flush_latency_ms": self.flush_latency.summary(("count", "p50", "p95", "max")),
            },
            "scaling": {
                "alerts": sum(self.alert_rules.values()), "alerts_by_rule": dict(sorted(self.alert_rules.items())),
                "changes": c["scale_up"] + c["scale_down"], "up": c["scale_up"], "down": c["scale_down"],
                "decisions": list(self.decisions),
            },
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _p95s(values: _Samples) -> dict[str, float | None]:
    """The reports' p95 values: the typical one (their median) and the worst."""
    summary = values.summary(("p50", "max"))
    return {"p95": summary["p50"], "max_p95": summary["max"]}


def empty_section() -> dict[str, Any]:
    """The statistics of a tenant with no events."""
    return _Totals().result()


def compute(events: Iterable[Mapping[str, Any]], tenant: str | None = None,
            since: datetime | None = None) -> dict[str, Any]:
    """Aggregate ``events`` per tenant and for the platform (key :data:`PLATFORM`)."""
    sections: dict[str, _Totals] = {}
    platform = _Totals()
    first = last = None
    counted = 0
    for line in events:
        name = line.get("event")
        if name not in _EVENTS:
            continue
        tid = line.get("tenant")
        if not isinstance(tid, str) or (tenant is not None and tid != tenant):
            continue
        ts = line.get("ts")
        if since is not None:
            when = _ts(line)
            if when is None or when < since:
                continue
        cls = event_class(str(name))
        assert cls is not None  # every name of _EVENTS has its type
        e = cls.from_log_line(line)
        stamp = ts if isinstance(ts, str) else None
        sections.setdefault(tid, _Totals()).add(e, stamp)
        platform.add(e, stamp)
        counted += 1
        if isinstance(ts, str):
            first = ts if first is None or ts < first else first
            last = ts if last is None or ts > last else last
    return {
        "source": {"events": counted, "first": first, "last": last, "tenant": tenant,
                   "since": since.isoformat().replace("+00:00", "Z") if since else None},
        "platform": platform.result(),
        "tenants": {tid: sections[tid].result() for tid in sorted(sections)},
    }


def compute_from_log(log_file: Path, tenant: str | None = None, since: datetime | None = None) -> dict[str, Any]:
    """:func:`compute` over ``log_file`` and its rotated files; ``source`` names them."""
    files = log_files(log_file)
    counts: Counter[str] = Counter()
    result = compute(read_events(files, counts), tenant, since)
    result["source"].update(files=[str(f) for f in files], lines=counts["lines"],
                            unparsable_lines=counts["unparsable"])
    return result


# ---- in the daemon -------------------------------------------------------------------------

LIVE_SAMPLES = 256  # values kept per distribution and hour: percentiles are estimates past it
LIVE_HOURS = 24  # hourly buckets kept apart (for ``since``); older ones are merged into one


class LiveStats:
    """The statistics of :func:`compute`, kept in memory from the events as they happen.

    Fed by :meth:`observe` (a subscriber of the event bus, called from any thread: it only
    counts, under a lock). Only tenants for which ``known(tenant)`` is true are kept, so ids that no
    profile declares (an upload to a made-up tenant) cost nothing. Figures are per hour for
    the last :data:`LIVE_HOURS` hours, so :meth:`result` can answer ``since`` to the hour;
    older hours are merged into one bucket that still counts in the totals.
    """

    def __init__(self, known: Callable[[str], bool], now: Callable[[], datetime] | None = None) -> None:
        self._known = known
        self._now = now or (lambda: datetime.now(UTC))
        self.started = self._now()
        self._lock = threading.Lock()
        # tenant -> {hour start: section}; the key datetime.min holds the merged older hours
        self._hours: dict[str, dict[datetime, _Totals]] = {}
        self._events: Counter[str] = Counter()
        self._first: dict[str, str] = {}
        self._last: dict[str, str] = {}

    def observe(self, event: Event) -> None:
        """Count ``event`` if it is an ingestion event of a configured tenant."""
        if not isinstance(event, _TYPES):
            return
        tenant = event.tenant
        if not isinstance(tenant, str) or not self._known(tenant):
            return
        now = self._now()
        hour = now.replace(minute=0, second=0, microsecond=0)
        with self._lock:
            hours = self._hours.setdefault(tenant, {})
            section = hours.get(hour)
            if section is None:
                section = hours[hour] = _Totals(LIVE_SAMPLES)
                self._age(hours, hour)
            ts = _iso(now)
            section.add(event, ts)
            self._events[tenant] += 1
            self._first.setdefault(tenant, ts)
            self._last[tenant] = ts

    def _age(self, hours: dict[datetime, _Totals], current: datetime) -> None:
        oldest = current - timedelta(hours=LIVE_HOURS)
        for start in [h for h in hours if datetime.min.replace(tzinfo=UTC) < h < oldest]:
            older = hours.setdefault(datetime.min.replace(tzinfo=UTC), _Totals(LIVE_SAMPLES))
            older.merge(hours.pop(start))

    def forget(self, tenant: str) -> None:
        """Drop an offboarded tenant's figures."""
        with self._lock:
            for table in (self._hours, self._events, self._first, self._last):
                table.pop(tenant, None)

    def result(self, tenant: str, since: datetime | None = None) -> dict[str, Any]:
        """``tenant``'s statistics (the shape of one tenant in :func:`compute`) and their ``source``.

        ``since`` counts from the start of its hour; before the daemon started (or without
        it) everything since the start counts.
        """
        floor = None if since is None else since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        total = _Totals(LIVE_SAMPLES)
        with self._lock:
            for start, section in self._hours.get(tenant, {}).items():
                if floor is None or start >= floor:
                    total.merge(section)
            first, last, events = self._first.get(tenant), self._last.get(tenant), self._events.get(tenant, 0)
        covered = self.started if floor is None or floor < self.started else floor
        return {"source": {"kind": "in-process", "since": _iso(covered), "daemon_started": _iso(self.started),
                           "events": events if floor is None else None,
                           "first": first if floor is None else None, "last": last},
                **total.result()}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---- plain-text rendering ------------------------------------------------------------------

def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _section_lines(title: str, s: dict[str, Any]) -> list[str]:
    b, u, st, sc = s["batch"], s["uploads"], s["stream"], s["scaling"]
    tp, fs = b["throughput_records_per_s"], b["file_seconds"]
    lines = [title, "=" * len(title)]
    lines += _table([
        # a file's "duplicates" are records an interrupted attempt had already written
        ("batch", "files ok", "files rejected", "records in", "written", "rejected", "already present", "bytes"),
        ("", *(_fmt(b[k]) for k in ("files_committed", "files_rejected", "records_in", "records_written",
                                     "records_rejected", "duplicates", "bytes")))])
    if b["rejected_by_reason"] or u["rejected_by_reason"]:
        rows = [("rejections", "reason", "count")]
        rows += [("files", k, _fmt(v)) for k, v in b["rejected_by_reason"].items()]
        rows += [("uploads", k, _fmt(v)) for k, v in u["rejected_by_reason"].items()]
        lines += ["", *_table(rows)]
    lines += ["", *_table([
        ("distribution", "count", "min", "mean", "p50", "p95", "max"),
        ("records/s per file", _fmt(fs["count"]), _fmt(tp["min"]), _fmt(tp["mean"]), _fmt(tp["p50"]),
         _fmt(tp["p95"]), _fmt(tp["max"])),
        ("seconds per file", _fmt(fs["count"]), _fmt(fs["min"]), _fmt(fs["mean"]), _fmt(fs["p50"]),
         _fmt(fs["p95"]), _fmt(fs["max"])),
        ("stream ingest ms (reports)", _fmt(st["reports"]), "-", _fmt(st["ingest_ms"]["mean"]),
         "-", _fmt(st["ingest_ms"]["p95"]), _fmt(st["ingest_ms"]["max_p95"])),
        ("stream flush latency ms", _fmt(st["flush_latency_ms"]["count"]), "-", "-",
         _fmt(st["flush_latency_ms"]["p50"]), _fmt(st["flush_latency_ms"]["p95"]), _fmt(st["flush_latency_ms"]["max"])),
    ])]
    lines += ["", *_table([
        ("stream", "messages", "documents", "rejected", "duplicates", "bytes", "alerts", "scale up", "scale down"),
        ("", *(_fmt(st[k]) for k in ("messages", "documents", "rejected", "duplicates", "bytes")),
         _fmt(sc["alerts"]), _fmt(sc["up"]), _fmt(sc["down"]))])]
    if sc["decisions"]:
        lines += ["", "scaling decisions (most recent last):"]
        lines += [f"  {d['ts']}  {d['tenant']}  {d['from']} -> {d['to']}  {d['reason'] or ''}".rstrip()
                  for d in sc["decisions"]]
    return lines


def render_text(result: dict[str, Any]) -> str:
    """The statistics as plain tables: the platform first, then each tenant."""
    src = result["source"]
    head = (f"{src.get('events', 0):,} events from {len(src.get('files', []))} file(s)"
            f"{', ' + str(src['unparsable_lines']) + ' unparsable line(s)' if src.get('unparsable_lines') else ''}"
            f"; {src.get('first') or '-'} .. {src.get('last') or '-'}")
    parts = [head, ""]
    if src.get("tenant") is None:
        parts += [*_section_lines("platform (all tenants)", result["platform"]), ""]
    for tid, section in result["tenants"].items():
        parts += [*_section_lines(f"tenant {tid}", section), ""]
    if not result["tenants"]:
        parts.append("no ingestion events matched")
    return "\n".join(parts).rstrip() + "\n"
