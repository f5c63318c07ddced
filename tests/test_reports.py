"""The report model, its JSON Schema and the window accumulator consumers use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from mysimbdp.monitor.reports import (
    MAX_MS,
    MAX_WINDOW_S,
    REPORT_FIELDS,
    Report,
    ReportWindow,
    report_from_event,
    report_schema,
    validation_problem,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def body(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tenant": "acme", "app": "sensors", "instance": "acme-1",
        "window_start": "2026-03-01T12:00:00Z", "window_end": "2026-03-01T12:00:10Z",
        "messages": 1000, "documents": 990, "bytes": 123456, "rejected": 10,
        "avg_ingest_ms": 85.5, "p95_ingest_ms": 240.0, "avg_processing_ms": 1.2, "queue_depth": 42,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def test_a_valid_report_round_trips_through_the_log_event() -> None:
    report = Report.model_validate(body())
    event = report.to_event()
    assert event["window_start"] == "2026-03-01T12:00:00Z"
    assert list(event) == list(REPORT_FIELDS)
    assert report_from_event({**event, "event": "stream.report", "ts": "x", "level": "info"}) == report
    assert report.seconds == 10


@pytest.mark.parametrize(("changes", "field"), [
    ({"messages": -1}, "messages"),
    ({"messages": "many"}, "messages"),
    ({"tenant": "Not A Tenant"}, "tenant"),
    ({"avg_ingest_ms": ...}, "avg_ingest_ms"),
    ({"window_end": "2026-03-01T12:00:10"}, "window_end"),  # no time zone
    ({"window_end": "2026-03-01T11:00:00Z"}, "(body)"),  # before the start
    ({"surprise": 1}, "surprise"),
])
def test_invalid_reports_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Report.model_validate(body(**changes))
    assert validation_problem(info.value)[0] == field


def test_queue_depth_is_optional() -> None:
    assert Report.model_validate(body(queue_depth=...)).queue_depth is None


def test_schema_describes_every_field_and_requires_the_contract() -> None:
    schema = report_schema()
    assert schema["$id"] == "/schemas/report.json"
    assert set(schema["properties"]) == set(REPORT_FIELDS)
    assert set(schema["required"]) == set(REPORT_FIELDS) - {"queue_depth"}
    assert schema["additionalProperties"] is False


def test_window_accumulates_and_restarts() -> None:
    window = ReportWindow("acme", "sensors", "acme-1", now=T0)
    window.add([10.0, 20.0, 30.0, 40.0], 8.0, documents=4, bytes=400)
    window.add([100.0], 2.0, documents=0, bytes=50, rejected=1)
    first = window.close(now=T0 + timedelta(seconds=10), queue_depth=7)
    assert (first.messages, first.documents, first.bytes, first.rejected) == (5, 4, 450, 1)
    assert first.avg_ingest_ms == 40.0
    assert first.p95_ingest_ms == 100.0
    assert first.avg_processing_ms == 2.0
    assert first.queue_depth == 7 and first.seconds == 10
    second = window.close(now=T0 + timedelta(seconds=20))
    assert second.window_start == first.window_end
    assert (second.messages, second.avg_ingest_ms, second.p95_ingest_ms) == (0, 0.0, 0.0)


def test_window_memory_is_bounded_under_a_flood() -> None:
    window = ReportWindow("acme", "sensors", "acme-1", now=T0)
    for _ in range(20):
        window.add([float(i) for i in range(1000)], 1.0)
    assert len(window._latencies) <= 2048
    report = window.close(now=T0 + timedelta(seconds=1))
    assert report.messages == 20_000
    assert 900 <= report.p95_ingest_ms <= 999


def test_window_survives_absurd_latencies() -> None:
    """A publisher's clock decides the latencies: a future timestamp (negative), a far past one
    (huge), or none usable (NaN, inf) must still give a valid report, never an exception."""
    window = ReportWindow("acme", "sensors", "acme-1", now=T0)
    window.add([-5_000.0, float("inf"), float("nan"), 1e20, 10.0], -3.0, documents=5)
    report = window.close(now=T0 + timedelta(seconds=10))
    assert report.messages == 5
    assert 0 <= report.avg_ingest_ms <= MAX_MS and 0 <= report.p95_ingest_ms <= MAX_MS
    assert report.avg_processing_ms == 0.0
    # a window left open far too long keeps its last MAX_WINDOW_S seconds
    late = window.close(now=T0 + timedelta(days=3))
    assert late.seconds == MAX_WINDOW_S
