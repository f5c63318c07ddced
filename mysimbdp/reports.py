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
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mysimbdp.tenants import TENANT_ID_RE

__all__ = [
    "REPORT_EVENT", "REPORT_FIELDS", "SCHEMA_ID", "Report", "ReportWindow", "report_schema",
    "report_from_event", "validation_problem",
]

REPORT_EVENT = "stream.report"
SCHEMA_ID = "/schemas/report.json"
_P95_SAMPLES = 2048  # reservoir size: bounded memory whatever the message rate


class Report(BaseModel):
    """One stream app instance's processing figures over one window."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="mysimbdp stream-app report")

    tenant: str = Field(pattern=TENANT_ID_RE.pattern, description="the tenant id")
    app: str = Field(min_length=1, max_length=100, description="the stream app's entry-point name")
    instance: str = Field(min_length=1, max_length=200,
                          description="the reporting instance (consumer), unique within the tenant")
    window_start: AwareDatetime = Field(description="start of the window, ISO-8601 with a time zone")
    window_end: AwareDatetime = Field(description="end of the window, ISO-8601 with a time zone")
    messages: int = Field(ge=0, description="messages acknowledged in the window")
    documents: int = Field(ge=0, description="documents written in the window")
    bytes: int = Field(ge=0, description="message body bytes ingested in the window")
    rejected: int = Field(ge=0, description="records sent to _rejects in the window")
    avg_ingest_ms: float = Field(ge=0, allow_inf_nan=False,
                                 description="mean time from the message timestamp to its committed write")
    p95_ingest_ms: float = Field(ge=0, allow_inf_nan=False,
                                 description="95th percentile of the same")
    avg_processing_ms: float = Field(ge=0, allow_inf_nan=False,
                                     description="mean app + write time per message")
    queue_depth: int | None = Field(None, ge=0,
                                    description="messages waiting in the tenant's queue, if known")

    @model_validator(mode="after")
    def _window(self) -> Report:
        if self.window_end < self.window_start:
            raise ValueError("window_end must not be before window_start")
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
        self._processing_sum += processing_ms
        for value in ingest_ms:
            self._ingest_sum += value
            self._seen += 1
            if len(self._latencies) < _P95_SAMPLES:
                self._latencies.append(value)
            else:
                slot = self._rng.randrange(self._seen)
                if slot < _P95_SAMPLES:
                    self._latencies[slot] = value

    def close(self, now: datetime | None = None, queue_depth: int | None = None) -> Report:
        """The report of the window ending ``now``; the next window starts there."""
        end = now or datetime.now(UTC)
        n = self.messages
        report = Report(
            tenant=self.tenant, app=self.app, instance=self.instance,
            window_start=self._start, window_end=max(end, self._start),
            messages=n, documents=self.documents, bytes=self.bytes, rejected=self.rejected,
            avg_ingest_ms=round(self._ingest_sum / n, 3) if n else 0.0,
            p95_ingest_ms=round(_percentile(self._latencies, 0.95), 3),
            avg_processing_ms=round(self._processing_sum / n, 3) if n else 0.0,
            queue_depth=queue_depth,
        )
        self._start = report.window_end
        self._reset()
        return report


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])
