"""The tenant publish tool (the ingestmessage client): records of a file to the ingest exchange.

Reads CSV or JSON Lines (optionally gzip-compressed), publishes one message per record (or
one JSON array per ``batch`` records) with routing key ``<tenant>`` or ``<tenant>.<type>``,
publisher confirms pipelined over a window of in-flight messages, ``message_id``
``<prefix>-<n>`` and ``timestamp`` set (plus header ``timestamp_ms``, milliseconds, for
latency). ``--id-prefix`` pins the prefix: publishing the same file again with the same
prefix and batch size writes nothing twice. See ``docs/stream.md``.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import aio_pika
import orjson
from aio_pika.abc import AbstractExchange
from aio_pika.exceptions import DeliveryError, PublishError

from mysimbdp.errors import BrokerUnavailable, MysimbdpError
from mysimbdp.stream.records import TIMESTAMP_MS_HEADER

__all__ = ["PublishResult", "PublishRefused", "read_records", "group", "publish_records", "TIMESTAMP_MS_HEADER"]

Progress = Callable[[int, int, float], None]  # (sent, confirmed, seconds)


class PublishRefused(MysimbdpError):
    """The broker refused the publication (credentials, permissions, routing)."""


@dataclass
class PublishResult:
    """The summary of one run."""

    sent: int = 0
    confirmed: int = 0
    nacked: int = 0
    unroutable: int = 0
    records: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Confirmed messages per second."""
        return self.confirmed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for people."""
        extra = "".join(f", {n} {what}" for n, what in ((self.nacked, "nacked"), (self.unroutable, "unroutable")) if n)
        return (f"sent {self.sent}, confirmed {self.confirmed}{extra} ({self.records} records) "
                f"in {self.seconds:.2f} s, {self.rate:,.0f} msg/s")


def _open_text(path: Path, on_open: Callable[[BinaryIO], None] | None) -> IO[str]:
    raw = open(path, "rb")
    if on_open is not None:
        on_open(raw)
    binary: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw  # type: ignore[assignment]
    return io.TextIOWrapper(binary, encoding="utf-8", newline="")


def read_records(path: Path, on_open: Callable[[BinaryIO], None] | None = None) -> Iterator[dict[str, Any]]:
    """The records of a CSV (header row; values as text) or JSON Lines file (``.gz`` too).

    ``on_open`` is handed the file as opened on disk (compressed bytes for ``.gz``): its
    ``tell()`` against the file's size is how far the reading got, for a progress bar.
    Raises :class:`MysimbdpError` naming the line of an invalid JSON Lines record.
    """
    name = path.name.removesuffix(".gz")
    if not name.endswith((".csv", ".jsonl", ".ndjson", ".json")):
        raise MysimbdpError(f"{path}: unknown format; use a .csv or .jsonl file (optionally .gz)")
    if name.endswith(".csv"):
        with _open_text(path, on_open) as fh:
            yield from csv.DictReader(fh)
        return
    with _open_text(path, on_open) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise MysimbdpError(f"{path}:{number}: not valid JSON: {exc}") from None
            if not isinstance(record, dict):
                raise MysimbdpError(f"{path}:{number}: a record must be a JSON object")
            yield record


def group(records: Iterable[dict[str, Any]], batch: int) -> Iterator[tuple[int, bytes]]:
    """``(records in it, body)`` per message: one record, or a JSON array of up to ``batch``."""
    if batch <= 1:
        for record in records:
            yield 1, orjson.dumps(record)
        return
    chunk: list[dict[str, Any]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= batch:
            yield len(chunk), orjson.dumps(chunk)
            chunk = []
    if chunk:
        yield len(chunk), orjson.dumps(chunk)


class _Pipeline:
    """``window`` publishers share one source of messages; each awaits its message's confirm.

    So up to ``window`` messages are unconfirmed at once, without a task per message.
    """

    def __init__(self, exchange: AbstractExchange, key: str, source: Iterator[tuple[int, bytes]],
                 prefix: str, rate: float | None, result: PublishResult) -> None:
        self.exchange, self.key, self.prefix, self.rate, self.result = exchange, key, prefix, rate, result
        self._source = enumerate(source)
        self.t0 = time.monotonic()
        self.failure: BaseException | None = None

    async def run(self, window: int) -> None:
        await asyncio.gather(*(self._worker() for _ in range(window)))
        if self.failure is not None:
            raise self.failure

    async def _worker(self) -> None:
        for n, (count, body) in self._source:
            if self.failure is not None:
                return
            if self.rate:
                ahead = self.t0 + n / self.rate - time.monotonic()
                if ahead > 0.001:
                    await asyncio.sleep(ahead)
            now = datetime.now(UTC)
            message = aio_pika.Message(
                body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"{self.prefix}-{n}", timestamp=now,
                headers={TIMESTAMP_MS_HEADER: int(now.timestamp() * 1000)})
            self.result.sent += 1
            self.result.records += count
            try:
                await self.exchange.publish(message, self.key, mandatory=True)
                self.result.confirmed += 1
            except PublishError:
                self.result.unroutable += 1
            except DeliveryError:
                self.result.nacked += 1
            except Exception as exc:  # the channel was closed: refused, or the broker went away
                if self.failure is None:
                    self.failure = exc
                return


async def _report_progress(result: PublishResult, t0: float, progress: Progress, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        progress(result.sent, result.confirmed, time.monotonic() - t0)


async def publish_records(url: str, exchange: str, routing_key: str, records: Iterable[dict[str, Any]], *,
                          batch: int = 1, rate: float | None = None, window: int = 2000,
                          id_prefix: str | None = None, progress: Progress | None = None,
                          progress_every_s: float = 0.5) -> PublishResult:
    """Publish ``records``; returns the counts once every message is confirmed (or refused).

    Raises :class:`BrokerUnavailable` when the broker cannot be reached and
    :class:`PublishRefused` when it refuses the publication (e.g. another tenant's key).
    """
    prefix = id_prefix or uuid.uuid4().hex[:12]
    result = PublishResult()
    try:
        connection = await aio_pika.connect(url, timeout=10, client_properties={"connection_name": "mysimbdp publish"})
    except Exception as exc:
        raise BrokerUnavailable(f"cannot connect to the broker: {type(exc).__name__}: {exc}") from None
    t0 = time.monotonic()
    reporter = None
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        pipe = _Pipeline(await channel.get_exchange(exchange, ensure=False), routing_key,
                         group(records, batch), prefix, rate, result)
        if progress is not None:
            reporter = asyncio.create_task(_report_progress(result, t0, progress, progress_every_s))
        await pipe.run(window)
    except MysimbdpError:
        raise
    except Exception as exc:
        raise PublishRefused(
            f"the broker refused the publication with routing key {routing_key!r} on {exchange!r}: "
            f"{type(exc).__name__}: {exc}; check the tenant's credentials and routing key "
            "(`mysimbdp tenants provision <tenant>` issues them)") from None
    finally:
        result.seconds = time.monotonic() - t0
        if reporter is not None:
            reporter.cancel()
        try:
            await connection.close()
        except Exception:
            pass
    return result
