"""Typed events: docs/logging.md and the event types agree both ways; the package emits only
event types, never logs by name; the bus delivers, counts and logs a failing subscriber."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mysimbdp.events import EVENTS, Event, EventBus
from mysimbdp.events.bus import FAILURE_LOG_EVERY_S
from mysimbdp.events.catalog import (
    BatchFileCommitted,
    StreamAckFailed,
    StreamConsumersChanged,
    StreamReport,
    UploadRejected,
)
from mysimbdp.logs import configure_logging, write_event

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "logging.md").read_text()

# ---- docs/logging.md, read as a table of events ---------------------------------------------

_ROW = re.compile(r"^\|\s*(`[^|]+`(?:\s*/\s*`[^|]+`)*)\s*\|\s*([a-z]+)\s*\|(.*?)\|(.*)\|\s*$")
_NAME = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)`")
_FIELD = re.compile(r"`([a-z_][a-z0-9_]*)`")


def _outside_parens(text: str) -> str:
    out, depth = [], 0
    for ch in text:
        depth += ch == "("
        if depth == 0:
            out.append(ch)
        depth -= ch == ")" and depth > 0
    return "".join(out)


def _fields_of(cell: str) -> list[str]:
    """Backticked names outside parentheses (those inside list values or say more)."""
    cell = _outside_parens(cell)
    cell = re.sub(r"for `[^`]+`,", "", cell)  # "or, for `bad_name`, only `name_bytes`": a value
    return _FIELD.findall(cell)


def documented_events(text: str = DOC) -> dict[str, tuple[str, list[str]]]:
    """Event name -> (level, fields) as docs/logging.md gives them.

    Besides a row's own cell: "same as `x`" takes x's fields, "the outcome fields" and "the
    fields above" the field table before it, "the report fields above" the paragraph that lists
    them; every ``batch.file.*`` event carries ``tenant`` and ``file`` (said once, above its
    table); ``exception`` is the traceback every error may add, not a field of the type.
    """
    events: dict[str, tuple[str, list[str]]] = {}
    lines = text.splitlines()
    table: list[str] = []
    outcome: list[str] = []
    report: list[str] = []
    in_table = False
    for i, line in enumerate(lines):
        if line.startswith("| field | meaning |"):
            in_table, table = True, []
            continue
        if in_table:
            if line.startswith("|---"):
                continue
            cell = re.match(r"^\|\s*(`[^|]+`(?:,\s*`[^|]+`)*)\s*\|[^|]*\|\s*$", line)
            if cell:
                table += _FIELD.findall(cell.group(1))
                continue
            in_table = False
            if "records_in" in table:
                outcome = list(table)
        if line.startswith("`stream.report` is emitted"):
            paragraph = " ".join(lines[i:i + 8]).split("Windows without")[0]
            report = _fields_of(paragraph.split("exactly:")[1])
        row = _ROW.match(line)
        if not row or row.group(2) == "level":
            continue
        names, level, cell = _NAME.findall(row.group(1)), row.group(2), row.group(3)
        if "same as" in cell:
            fields = list(events[_NAME.findall(cell)[0]][1])
        else:
            fields = (outcome if "outcome fields" in cell else []) + (report if "report fields above" in cell else [])
            fields += _fields_of(cell) + (table if "the fields above" in cell else [])
        for name in names:
            listed = (["tenant", "file"] if name.startswith("batch.file.") else []) + fields
            events[name] = (level, [f for n, f in enumerate(listed) if f not in listed[:n] and f != "exception"])
    if "`source:" in text and "besides the report" in " ".join(lines):  # the note under the monitor table
        events["stream.report"][1].append("source")
    return events


def test_the_docs_parse_finds_every_event() -> None:
    """The parse itself: all tables read (a broken pattern must not make the next test pass)."""
    docs = documented_events()
    assert len(docs) >= 90
    assert docs["batch.file.committed"][1][:4] == ["tenant", "file", "sha256", "bytes"]
    assert docs["stream.batch.committed"][1][-1] == "oldest_latency_ms"
    assert "source" in docs["stream.report"][1] and "window_end" in docs["stream.report"][1]
    assert docs["upload.rejected"][1] == ["tenant", "code", "status", "reason", "name", "name_bytes"]


def test_every_documented_event_has_its_type_with_exactly_its_fields() -> None:
    docs = documented_events()
    missing = sorted(set(docs) - set(EVENTS))
    assert not missing, f"documented in docs/logging.md but no event type in mysimbdp.events: {missing}"
    wrong = {name: (docs[name], (EVENTS[name].LEVEL, list(EVENTS[name].field_names())))
             for name in docs if (EVENTS[name].LEVEL, list(EVENTS[name].field_names())) != docs[name]}
    assert not wrong, f"level or fields differ (docs, type): {wrong}"


def test_every_event_type_is_documented() -> None:
    undocumented = sorted(set(EVENTS) - set(documented_events()))
    assert not undocumented, f"event types missing from docs/logging.md: {undocumented}"


def test_the_docs_check_fails_on_a_changed_field() -> None:
    """The check can fail: a field renamed in the docs is caught."""
    changed = DOC.replace("| `stream.drained` | info | `seconds`, `unacked`", "| `stream.drained` | info | `seconds`, `left`")
    assert changed != DOC
    assert documented_events(changed)["stream.drained"][1] != list(EVENTS["stream.drained"].field_names())


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _package_trees() -> list[tuple[str, ast.AST]]:
    return [(str(path.relative_to(REPO)), ast.parse(path.read_text(), str(path)))
            for path in sorted((REPO / "mysimbdp").rglob("*.py"))]


def _names_bound(tree: ast.AST) -> dict[str, set[str]]:
    """What each name of a module may stand for: what it imports (``from mysimbdp.events.catalog import X as Y``), and the
    names a plain assignment gives it (``starting = BatchFileResumed if resumed else BatchFileLoading``,
    or the values of a table ``{"added": TenantAdded, ...}``)."""
    bound: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("mysimbdp.events.catalog", "mysimbdp.events"):
            for alias in node.names:
                bound[alias.asname or alias.name] = {alias.name}
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            values = ([value.body, value.orelse] if isinstance(value, ast.IfExp)
                      else list(value.values) if isinstance(value, ast.Dict) else [value])
            if all(isinstance(v, ast.Name) for v in values):
                bound[node.targets[0].id] = {v.id for v in values if isinstance(v, ast.Name)}
    return bound


def _resolve(name: str, bound: dict[str, set[str]], depth: int = 3) -> set[str]:
    """The names ``name`` stands for, following assignments and imports a few steps."""
    if depth == 0 or name not in bound or bound[name] == {name}:
        return {name}
    return {r for n in bound[name] for r in _resolve(n, bound, depth - 1)}


def _emitted_types(trees: list[tuple[str, ast.AST]]) -> dict[str, str]:
    """The event type made in each emit call (``events.emit(StreamReport(...))``), as the name it
    has in the catalog when its module imports it from there, else as the code calls it."""
    found: dict[str, str] = {}
    for where, tree in trees:
        bound = _names_bound(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit"
                    and node.args and isinstance(node.args[0], ast.Call)):
                made = node.args[0].func
                if isinstance(made, ast.Subscript):  # one of a table's: _CHANGE_EVENTS[kind](...)
                    made = made.value
                name = made.id if isinstance(made, ast.Name) else made.attr if isinstance(made, ast.Attribute) else "?"
                for resolved in _resolve(name, bound):
                    found.setdefault(resolved, where)
    return found


def _names_logged_by_name(trees: list[tuple[str, ast.AST]]) -> dict[str, str]:
    """Every event name passed to a logger call (``log.info("x.y", ...)``)."""
    found: dict[str, str] = {}
    for where, tree in trees:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_METHODS and node.args):
                arg = node.args[0]
                values = [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]
                for value in values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str) \
                            and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", value.value):
                        found.setdefault(value.value, where)
    return found


def test_every_event_emitted_is_a_catalog_type() -> None:
    """What the package emits is an event of the catalog (so documented), never another class."""
    emitted = _emitted_types(_package_trees())
    assert len(emitted) > 50, "the scan found too few emit calls: the pattern no longer matches the code"
    types = {cls.__name__ for cls in EVENTS.values()}
    unknown = {name: where for name, where in emitted.items() if name not in types}
    assert not unknown, f"emitted but not event types of mysimbdp.events.catalog: {unknown}"
    assert {"StreamBatchCommitted", "StreamReport", "StreamConsumerStarted", "StreamIndexFailed"} <= set(emitted)
    # the scan itself: names resolve through imports and assignments; a class of elsewhere stays itself
    sample = [("sample.py", ast.parse("from mysimbdp.events.catalog import HttpError as Failed\n"
                                      "kind = Failed if x else Mystery\n"
                                      "events.emit(kind(path='/'))\n"))]
    assert set(_emitted_types(sample)) == {"HttpError", "Mystery"}


def test_no_event_is_logged_by_name() -> None:
    """An event logged by name (``log.info("stream.report", ...)``) would be written but reach no
    subscriber: every event goes through an emitter."""
    logged = _names_logged_by_name(_package_trees())
    assert not logged, f"events logged by name, not emitted: {logged}"
    # the scan itself finds such a call
    sample = [("sample.py", ast.parse('log.info("stream.report", tenant="t")\n'
                                      'log.warning("a.b" if x else "c.d")\n'))]
    assert _names_logged_by_name(sample) == {"stream.report": "sample.py", "a.b": "sample.py", "c.d": "sample.py"}


# ---- the events themselves -------------------------------------------------------------------

def test_fields_use_documented_names_and_leave_out_absent_optional_ones() -> None:
    changed = StreamConsumersChanged(tenant="a", from_=1, to=2, reason="x")
    assert changed.fields() == {"tenant": "a", "from": 1, "to": 2, "reason": "x"}
    refused = UploadRejected(tenant="a", code="bad_name", status=400, reason="r", name_bytes=3)
    assert "name" not in refused.fields() and refused.fields()["name_bytes"] == 3


def test_a_log_line_reads_back_leniently() -> None:
    e = BatchFileCommitted.from_log_line({"tenant": "a", "bytes": "lots", "seconds": None, "records_in": 2.0})
    assert isinstance(e, BatchFileCommitted)
    assert (e.bytes, e.seconds, e.records_in, e.sha256) == (0, 0.0, 2, None)


def test_written_line_has_the_lead_fields_first(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    configure_logging("info", log_file, console=False)
    try:
        EventBus(write_event).emitter("stream").emit(StreamConsumersChanged(tenant="a", from_=0, to=2, reason="r"))
    finally:
        configure_logging("info", None, console=False)
    line = json.loads(log_file.read_text())
    assert list(line)[:5] == ["ts", "level", "event", "component", "tenant"]
    assert (line["event"], line["component"], line["from"], line["to"]) == ("stream.consumers.changed", "stream", 0, 2)


# ---- the bus ---------------------------------------------------------------------------------

def test_a_failing_subscriber_is_counted_and_logged_and_the_others_still_hear() -> None:
    now = [0.0]
    bus = EventBus(write_event, clock=lambda: now[0])
    heard: list[Event] = []

    def broken(event: Event) -> None:
        raise ValueError("boom")

    bus.subscribe(broken, "broken")
    bus.subscribe(heard.append, "heard")
    event = StreamConsumersChanged(tenant="a", from_=0, to=1, reason="r")
    with capture_logs() as logs:
        for _ in range(3):
            bus.deliver(event)
        now[0] += FAILURE_LOG_EVERY_S
        bus.deliver(event)
    assert len(heard) == 4 and bus.failures["broken"] == 4
    failed = [e for e in logs if e["event"] == "events.subscriber_failed"]
    assert [e["failures"] for e in failed] == [1, 3]  # the first at once, then at most once a minute
    assert failed[0]["subscriber"] == "broken" and "boom" in failed[0]["error"]
    assert failed[0]["event_name"] == "stream.consumers.changed" and failed[0]["log_level"] == "error"


def test_events_reach_the_bus_whatever_the_log_level(tmp_path: Path) -> None:
    log_file = tmp_path / "quiet.jsonl"
    configure_logging("warning", log_file, console=False)
    bus = EventBus(write_event)
    heard: list[Event] = []
    bus.subscribe(heard.append)
    stream = bus.emitter("stream")
    try:
        stream.emit(StreamReport(tenant="t1", app="a", instance="t1-c1", window_start="2026-01-01T00:00:00Z",
                                 window_end="2026-01-01T00:00:01Z", messages=7, documents=7, bytes=70, rejected=0,
                                 avg_ingest_ms=1.0, p95_ingest_ms=2.0, avg_processing_ms=0.5, queue_depth=0))
        stream.emit(StreamAckFailed(tenant="t1", consumer="t1-c1", error="x"))
    finally:
        configure_logging("info", None, console=False)
    assert [e.NAME for e in heard] == ["stream.report", "stream.ack.failed"]
    assert isinstance(heard[0], StreamReport) and heard[0].messages == 7
    written = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert written == ["stream.ack.failed"]


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_type_is_frozen_with_its_name(name: str) -> None:
    cls = EVENTS[name]
    assert cls.NAME == name and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    sample: Any = cls.from_log_line({})
    for field in dataclasses.fields(sample):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(sample, field.name, 1)
