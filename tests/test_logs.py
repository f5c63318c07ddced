"""JSON logs: the fields every event carries, the file sink, and the in-process feed."""

from __future__ import annotations

import json
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
