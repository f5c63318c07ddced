"""``mysimbdp stats`` over a recorded log (rotated files included) gives the right figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mysimbdp.cli import main
from mysimbdp.events.catalog import (
    BatchFileCommitted,
    BatchFileRejected,
    DaemonStopped,
    MonitorAlert,
    StreamBatchCommitted,
    StreamConsumersChanged,
    StreamReport,
    UploadRejected,
)
from mysimbdp.logs import configure_logging, log_only
from mysimbdp.monitor import stats


def record_log(log_file: Path) -> None:
    """A small but complete day of the platform, written by the real logging into rotated files."""
    configure_logging("info", log_file, max_bytes=4096, backups=20, console=False)
    batch, stream, monitor = log_only("batch"), log_only("stream"), log_only("monitor")
    for i, (n, seconds) in enumerate([(1000, 1.0), (2000, 2.0), (3000, 1.5), (100, 0.1)]):
        batch.emit(BatchFileCommitted(tenant="acme", file=f"f{i}.csv", sha256="0" * 64, bytes=n * 100,
                                      records_in=n + 5, records_written=n, records_rejected=5, duplicates=0,
                                      records_skipped=0, seconds=seconds, records_per_s=round(n / seconds, 3),
                                      mb_per_s=1.0, app="a", ledger_id=f"l{i}"))
    for file, code, reason, size in (("x.pdf", "format", "not allowed", 10), ("dup.csv", "duplicate", "seen", 20)):
        batch.emit(BatchFileRejected(tenant="acme", file=file, sha256=None, bytes=size, records_in=0,
                                     records_written=0, records_rejected=0, duplicates=0, records_skipped=0,
                                     seconds=0.0, records_per_s=0.0, mb_per_s=0.0, code=code, reason=reason,
                                     ledger_id=None))
    batch.emit(BatchFileCommitted(tenant="zeta", file="z.csv", sha256=None, bytes=50, records_in=10,
                                  records_written=10, records_rejected=0, duplicates=0, records_skipped=0,
                                  seconds=0.5, records_per_s=20.0, mb_per_s=0.0, app="a", ledger_id="lz"))
    log_only("upload").emit(UploadRejected(tenant="zeta", code="too_big", status=413, reason="too big"))
    for k in range(30):  # enough volume to rotate several times
        stream.emit(StreamBatchCommitted(tenant="zeta", consumer="zeta-c1", batches=1, messages=10, documents=9,
                                         rejected=1, duplicates=0, bytes=1000, seconds=0.05,
                                         oldest_latency_ms=float(100 + k)))
    for avg, messages in ((100.0, 100), (400.0, 300)):
        stream.emit(StreamReport(tenant="zeta", app="s", instance="zeta-c1", window_start="2026-01-01T00:00:00Z",
                                 window_end="2026-01-01T00:00:10Z", messages=messages, documents=messages, bytes=1,
                                 rejected=0, avg_ingest_ms=avg, p95_ingest_ms=avg * 2, avg_processing_ms=1.0,
                                 queue_depth=0))
    monitor.emit(MonitorAlert(tenant="zeta", rule="latency", observed=400.0, threshold=300.0, consumers=1))
    stream.emit(StreamConsumersChanged(tenant="zeta", from_=1, to=2, reason="monitor scale-up: x"))
    stream.emit(StreamConsumersChanged(tenant="zeta", from_=2, to=1, reason="monitor scale-down: y"))
    log_only("daemon").emit(DaemonStopped())
    configure_logging("info", None, console=False)  # close the file


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    log_file = tmp_path / "log" / "mysimbdp.jsonl"
    record_log(log_file)
    with open(log_file, "a") as fh:
        fh.write("this line is not JSON\n")
    return log_file


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["stats", *args])
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_rotated_files_are_read_oldest_first(recorded: Path) -> None:
    files = stats.log_files(recorded)
    assert len(files) > 2 and files[-1] == recorded
    assert files[0].name.endswith(f".{len(files) - 1}")


def test_figures_per_tenant_and_platform(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--log", str(recorded), "--json")
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    assert data["source"]["unparsable_lines"] == 1
    assert len(data["source"]["files"]) > 2
    acme = data["tenants"]["acme"]["batch"]
    assert (acme["files_committed"], acme["files_rejected"]) == (4, 2)
    assert acme["rejected_by_reason"] == {"duplicate": 1, "format": 1}
    assert acme["records_written"] == 6100 and acme["records_rejected"] == 20
    assert acme["bytes"] == 610_000
    assert acme["throughput_records_per_s"] == {"min": 1000.0, "mean": 1250.0, "p50": 1000.0, "p95": 2000.0,
                                                 "max": 2000.0, "overall": round(6100 / 4.6, 3)}
    assert acme["file_seconds"] == {"count": 4, "min": 0.1, "mean": 1.15, "p50": 1.0, "p95": 2.0, "max": 2.0}
    zeta = data["tenants"]["zeta"]
    assert zeta["stream"]["messages"] == 300 and zeta["stream"]["documents"] == 270
    assert zeta["stream"]["ingest_ms"] == {"mean": (100 * 100 + 400 * 300) / 400, "p95": 200.0, "max_p95": 800.0}
    assert zeta["stream"]["flush_latency_ms"] == {"count": 30, "p50": 114.0, "p95": 128.0, "max": 129.0}
    assert zeta["uploads"]["rejected_by_reason"] == {"too_big": 1}
    assert (zeta["scaling"]["up"], zeta["scaling"]["down"], zeta["scaling"]["alerts"]) == (1, 1, 1)
    assert [d["reason"] for d in zeta["scaling"]["decisions"]] == ["monitor scale-up: x", "monitor scale-down: y"]
    platform = data["platform"]
    assert platform["batch"]["files_committed"] == 5
    assert platform["batch"]["records_written"] == 6110
    assert platform["stream"]["messages"] == 300


def test_tenant_and_since_filters(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--log", str(recorded), "--json", "--tenant", "zeta")
    data = json.loads(out)
    assert list(data["tenants"]) == ["zeta"]
    assert data["platform"]["batch"]["files_committed"] == 1
    code, out, _ = run_cli(capsys, "--log", str(recorded), "--json", "--since", "2999-01-01")
    assert json.loads(out)["tenants"] == {}


def test_plain_tables(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--log", str(recorded))
    assert code == 0
    assert "platform (all tenants)" in out and "tenant acme" in out and "tenant zeta" in out
    assert "duplicate" in out and "1 -> 2  monitor scale-up: x" in out
    assert "1 unparsable line" in out
    rates = next(line for line in out.splitlines() if line.startswith("records/s per file"))
    assert rates.split()[-6:] == ["5", "20.0", "1,004.0", "1,000.0", "2,000.0", "2,000.0"]  # platform: min to max
    assert "already present" in out  # a batch file's duplicates: what an interrupted attempt wrote


def test_errors_are_one_line(tmp_path: Path, recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--log", str(recorded), "--since", "last tuesday")
    assert code == 2 and "ISO-8601" in err
    code, _, err = run_cli(capsys, "--log", str(tmp_path / "nowhere.jsonl"))
    assert code == 1 and "no log" in err
