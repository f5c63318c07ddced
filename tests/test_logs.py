"""JSON logs: the fields every event carries, the file sink, and the in-process feed."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from mysimbdp.logs import configure_logging, get_logger, subscribe, unsubscribe


def test_events_are_json_lines_with_required_fields(tmp_path: Path) -> None:
    log_file = tmp_path / "log" / "mysimbdp.jsonl"
    configure_logging("info", log_file, console=False)
    get_logger("batch").info("batch.file.committed", tenant="acme", records_written=3)
    get_logger("batch").debug("batch.hidden")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "batch.file.committed"
    assert event["component"] == "batch"
    assert event["tenant"] == "acme"
    assert event["level"] == "info"
    assert event["ts"].endswith("Z") and "T" in event["ts"]
    assert list(event)[:4] == ["ts", "level", "event", "component"]


def test_subscribers_receive_events(tmp_path: Path) -> None:
    configure_logging("info", None, console=False)
    seen: list[dict[str, Any]] = []
    subscribe(seen.append)
    try:
        get_logger("stream").info("stream.report", tenant="t1", messages=5)
    finally:
        unsubscribe(seen.append)
    get_logger("stream").info("stream.report", tenant="t1", messages=6)
    assert [e["messages"] for e in seen] == [5]


def test_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "mysimbdp.jsonl"
    configure_logging("info", log_file, max_bytes=2048, backups=2, console=False)
    for i in range(200):
        get_logger("t").info("test.fill", i=i, pad="x" * 50)
    assert (tmp_path / "mysimbdp.jsonl.1").exists()
    assert not (tmp_path / "mysimbdp.jsonl.3").exists()


def test_feed_hears_info_events_when_outputs_are_quieter(tmp_path: Path) -> None:
    log_file = tmp_path / "quiet.jsonl"
    configure_logging("warning", log_file, console=False)
    seen: list[dict[str, Any]] = []
    subscribe(seen.append)
    try:
        get_logger("stream").info("stream.report", tenant="t1", messages=7)
        get_logger("stream").warning("stream.slow", tenant="t1")
    finally:
        unsubscribe(seen.append)
    assert [e["event"] for e in seen] == ["stream.report", "stream.slow"]
    written = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert written == ["stream.slow"]


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _emitted_events() -> dict[str, str]:
    """Every event name the package logs: the first argument of a logger call, by module."""
    package = Path(__file__).resolve().parent.parent / "mysimbdp"
    events: dict[str, str] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_METHODS and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", node.args[0].value)):
                events.setdefault(node.args[0].value, str(path.relative_to(package.parent)))
    return events


def test_every_logged_event_is_documented() -> None:
    """docs/logging.md is the contract for log analysts: an event the code emits but the page
    does not name is a broken contract."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "logging.md").read_text()
    events = _emitted_events()
    assert len(events) > 50, "the scan found too few logger calls: the pattern no longer matches the code"
    missing = {name: where for name, where in events.items() if f"`{name}`" not in doc}
    assert not missing, f"events logged but not in docs/logging.md: {missing}"
