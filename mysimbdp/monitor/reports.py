"""Stream-app reports: what every running stream app instance tells the monitor each period.

A report covers one window (``window_start`` .. ``window_end``) of one instance (consumer) of
one tenant's stream app: how much it ingested and how fast. In-process consumers emit it as
the log event ``stream.report`` (the logs are the monitor's feed); apps running elsewhere
``POST /reports`` the same JSON with the tenant's token. The JSON Schema is served at
``GET /schemas/report.json``; see ``docs/reports.md``.

:class:`ReportWindow` is the accumulator a consumer uses to build its reports.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mysimbdp.tenants import TENANT_ID_RE

__all__ = [
    "REPORT_FIELDS", "SCHEMA_ID", "Report", "ReportWindow", "report_schema",
    "report_from_event", "validation_problem", "window_problem", "clamp_ms", "TokenBuckets",
    "MAX_COUNT", "MAX_MS", "MAX_WINDOW_S", "MAX_AHEAD_S", "MAX_AGE_S", "percentile",
]

SCHEMA_ID = "/schemas/report.json"
_P95_SAMPLES = 2048  # reservoir size: bounded memory whatever the message rate
MAX_COUNT = 10**15  # counts fit a BSON int64 with room to add them up
MAX_MS = 86_400_000.0  # a day: no latency or processing time above it is believable
MAX_WINDOW_S = 7200.0  # a report covers at most two hours (report_interval_s is at most one)
MAX_AHEAD_S = 300.0  # window_end may be this far ahead of the daemon's clock (clock skew)
MAX_AGE_S = 86_400.0  # ... and this far behind it (a report held back by an outage)


class Report(BaseModel):
    """One stream app instance's processing figures over one window."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="mysimbdp stream-app report")

    tenant: str = Field(pattern=TENANT_ID_RE.pattern, description="the tenant id")
    app: str = Field(min_length=1, max_length=100, description="the stream app's entry-point name")
    instance: str = Field(min_length=1, max_length=200,
                          description="the reporting instance (consumer), unique within the tenant")
    window_start: AwareDatetime = Field(description="start of the window, ISO-8601 with a time zone")
    window_end: AwareDatetime = Field(description="end of the window, ISO-8601 with a time zone")
    messages: int = Field(ge=0, le=MAX_COUNT, description="messages acknowledged in the window")
    documents: int = Field(ge=0, le=MAX_COUNT, description="documents written in the window")
    bytes: int = Field(ge=0, le=MAX_COUNT, description="message body bytes ingested in the window")
    rejected: int = Field(ge=0, le=MAX_COUNT, description="records sent to _rejects in the window")
    avg_ingest_ms: float = Field(ge=0, le=MAX_MS, allow_inf_nan=False,
                                 description="mean time from the message timestamp to its committed write")
    p95_ingest_ms: float = Field(ge=0, le=MAX_MS, allow_inf_nan=False,
                                 description="95th percentile of the same")
    avg_processing_ms: float = Field(ge=0, le=MAX_MS, allow_inf_nan=False,
                                     description="mean app + write time per message")
    queue_depth: int | None = Field(None, ge=0, le=MAX_COUNT,
                                    description="messages waiting in the tenant's queue, if known")

    @model_validator(mode="after")
    def _window(self) -> Report:
        if self.window_end < self.window_start:
            raise ValueError("window_end must not be before window_start")
        if self.seconds > MAX_WINDOW_S:
            raise ValueError(f"the window must not be longer than {MAX_WINDOW_S:.0f} s")
        return self

    @property
    def seconds(self) -> float:
        """Length of the window in seconds."""
        return (self.window_end - self.window_start).total_seconds()

    def to_event(self) -> dict[str, Any]:
        """The fields of the ``stream.report`` log event (datetimes as ISO-8601 UTC strings)."""
        data = self.model_dump()
        data["window_start"] = _iso(self.window_start)
        data["window_end"] = _iso(self.window_end)
        return data


REPORT_FIELDS: tuple[str, ...] = tuple(Report.model_fields)


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :class:`Report`, as served at ``/schemas/report.json``."""
    schema = Report.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def report_from_event(event: Mapping[str, Any]) -> Report:
    """Build a report from a ``stream.report`` log event (its other fields are ignored).

    Raises :class:`pydantic.ValidationError` when a field is missing or invalid.
    """
    return Report.model_validate({k: event[k] for k in REPORT_FIELDS if k in event})


def validation_problem(exc: ValidationError) -> tuple[str, str]:
    """``(field, message)`` of the first problem, e.g. ``("messages", "Input should be ...")``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(body)"
    return where, err["msg"]


def window_problem(report: Report, now: datetime | None = None) -> str | None:
    """Why ``report``'s window is not believable now (``window_end`` too far ahead or behind), or None.

    Kept out of the model, which stays a pure description of the contract: whether a window
    is recent depends on the clock of the daemon that receives it.
    """
    now = now or datetime.now(UTC)
    ahead = (report.window_end - now).total_seconds()
    if ahead > MAX_AHEAD_S:
        return f"window_end is {ahead:.0f} s ahead of the platform's clock (at most {MAX_AHEAD_S:.0f} s)"
    if -ahead > MAX_AGE_S:
        return f"window_end is more than {MAX_AGE_S:.0f} s in the past"
    return None


def clamp_ms(value: float) -> float:
    """A latency or duration in ms made safe for a report: 0 for negative or NaN, at most :data:`MAX_MS`.

    A message's timestamp comes from its publisher: one in the future gives a negative
    latency, one from long ago an absurd one; neither may break a report.
    """
    if not value > 0:  # negative, zero, NaN
        return 0.0
    return min(float(value), MAX_MS)


class TokenBuckets:
    """Per-key token buckets: ``rate`` tokens a second, at most ``burst`` saved up.

    :meth:`take` spends one token of a key and answers 0.0, or answers how many seconds
    until one is available. Pure arithmetic on the ``now`` it is given; keys that are full
    again are forgotten, so memory follows the keys active within ``burst / rate`` seconds.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float) -> float:
        """Spend one token of ``key``: 0.0 when allowed, else the seconds to wait."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 1024:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[key]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ReportWindow:
    """Accumulates one instance's figures and turns them into a :class:`Report` each period.

    Call :meth:`add` for every committed flush, then :meth:`close` at the end of the period;
    it returns the report and starts the next window. Memory is bounded: the p95 is computed
    from a reservoir sample of the latencies.
    """

    def __init__(self, tenant: str, app: str, instance: str, now: datetime | None = None) -> None:
        self.tenant, self.app, self.instance = tenant, app, instance
        self._start = now or datetime.now(UTC)
        self._reset()
        self._rng = random.Random(f"{tenant}/{instance}")

    def _reset(self) -> None:
        self.messages = self.documents = self.bytes = self.rejected = 0
        self._ingest_sum = self._processing_sum = 0.0
        self._latencies: list[float] = []
        self._seen = 0

    def add(self, ingest_ms: list[float] | tuple[float, ...], processing_ms: float, *,
            documents: int = 0, bytes: int = 0, rejected: int = 0) -> None:
        """Record one flush: each message's ingest time and the flush's total processing time."""
        self.messages += len(ingest_ms)
        self.documents += documents
        self.bytes += bytes
        self.rejected += rejected
        self._processing_sum += clamp_ms(processing_ms)
        for raw in ingest_ms:
            value = clamp_ms(raw)
            self._ingest_sum += value
            self._seen += 1
            if len(self._latencies) < _P95_SAMPLES:
                self._latencies.append(value)
            else:
                slot = self._rng.randrange(self._seen)
                if slot < _P95_SAMPLES:
                    self._latencies[slot] = value

    def close(self, now: datetime | None = None, queue_depth: int | None = None) -> Report:
        """The report of the window ending ``now``; the next window starts there.

        Never raises for the figures it was given: latencies were clamped as they came, a
        window longer than :data:`MAX_WINDOW_S` keeps its last part, counts are capped.
        """
        end = now or datetime.now(UTC)
        start = max(self._start, end - timedelta(seconds=MAX_WINDOW_S))
        n = self.messages
        report = Report(
            tenant=self.tenant, app=self.app, instance=self.instance,
            window_start=start, window_end=max(end, start),
            messages=_count(n), documents=_count(self.documents), bytes=_count(self.bytes),
            rejected=_count(self.rejected),
            avg_ingest_ms=min(round(self._ingest_sum / n, 3), MAX_MS) if n else 0.0,
            p95_ingest_ms=round(float(percentile(self._latencies, 0.95)), 3),
            avg_processing_ms=min(round(self._processing_sum / n, 3), MAX_MS) if n else 0.0,
            queue_depth=None if queue_depth is None else _count(queue_depth),
        )
        self._start = report.window_end
        self._reset()
        return report


def _count(value: int) -> int:
    return min(max(int(value), 0), MAX_COUNT)


def percentile(values: list[float], q: float, *, ordered: bool = False) -> float:
    """Nearest-rank percentile of ``values`` (already sorted when ``ordered``), one of the values
    as it is; 0.0 for no values."""
    if not values:
        return 0.0
    if not ordered:
        values = sorted(values)
    return values[max(1, math.ceil(q * len(values))) - 1]
