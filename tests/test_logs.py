"""JSON logs: the fields every event carries and the file sink (the event bus: test_events.py)."""

from __future__ import annotations

import json
from pathlib import Path

from mysimbdp.logs import configure_logging, get_logger


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


def test_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "mysimbdp.jsonl"
    configure_logging("info", log_file, max_bytes=2048, backups=2, console=False)
    for i in range(200):
        get_logger("t").info("test.fill", i=i, pad="x" * 50)
    assert (tmp_path / "mysimbdp.jsonl.1").exists()
    assert not (tmp_path / "mysimbdp.jsonl.3").exists()
