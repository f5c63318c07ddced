"""JSON logs: the fields every event carries and the file sink (the event bus: test_events.py)."""

from __future__ import annotations

import json
from pathlib import Path

from mysimbdp.events.catalog import BatchFileCommitted, BatchFileThrottled, StreamConsumersChanged
from mysimbdp.logs import configure_logging, log_only


def test_events_are_json_lines_with_required_fields(tmp_path: Path) -> None:
    log_file = tmp_path / "log" / "mysimbdp.jsonl"
    configure_logging("info", log_file, console=False)
    batch = log_only("batch")
    batch.emit(BatchFileCommitted(tenant="acme", file="f.csv", sha256=None, bytes=10, records_in=3, records_written=3,
                                  records_rejected=0, duplicates=0, records_skipped=0, seconds=0.1,
                                  records_per_s=30.0, mb_per_s=0.0, app="a", ledger_id="l"))
    batch.emit(BatchFileThrottled(tenant="acme", file="g.csv", ledger_id="l", loading=2, limit=2))  # debug
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "batch.file.committed"
    assert event["component"] == "batch"
    assert event["tenant"] == "acme"
    assert event["records_written"] == 3
    assert event["level"] == "info"
    assert event["ts"].endswith("Z") and "T" in event["ts"]
    assert list(event)[:4] == ["ts", "level", "event", "component"]


def test_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "mysimbdp.jsonl"
    configure_logging("info", log_file, max_bytes=2048, backups=2, console=False)
    stream = log_only("stream")
    for i in range(200):
        stream.emit(StreamConsumersChanged(tenant="t", from_=i, to=i + 1, reason="x" * 50))
    assert (tmp_path / "mysimbdp.jsonl.1").exists()
    assert not (tmp_path / "mysimbdp.jsonl.3").exists()
