"""The ceilings: what the same store and broker take from a client doing no platform work.

* :func:`insert_many_rate` - already-built documents written with ``insert_many(ordered=False)``
  in batches, one write at a time, the store's bulk intake. The documents are BSON
  (``RawBSONDocument``) before the clock starts, as the platform's columnar path hands them
  to the driver: only the writes are timed, not the client's encoding.
* :class:`BareConsumer` - an aio-pika consumer that acknowledges each message and does
  nothing else, the broker's delivery ceiling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aio_pika
import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

__all__ = ["read_documents", "copy_indexes", "insert_many_rate", "BareConsumer", "Timing"]


class Timing:
    """Records written (or messages handled), the seconds it took and, when known, the
    store's CPU seconds meanwhile."""

    __slots__ = ("records", "seconds", "store_cpu_seconds")

    def __init__(self, records: int, seconds: float, store_cpu_seconds: float | None = None) -> None:
        self.records = records
        self.seconds = seconds
        self.store_cpu_seconds = store_cpu_seconds

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, float | None]:
        """``{"records", "seconds", "rate", "store_cpu_share"}``."""
        share = (round(self.store_cpu_seconds / self.seconds, 3)
                 if self.store_cpu_seconds is not None and self.seconds > 0 else None)
        return {"records": self.records, "seconds": round(self.seconds, 4), "rate": round(self.rate, 1),
                "store_cpu_share": share}


async def read_documents(collection: Any, limit: int | None = None) -> list[RawBSONDocument]:
    """The documents of ``collection`` as the platform wrote them (``_id`` included), as the
    store's own BSON bytes: already built, nothing left to encode."""
    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    cursor = raw.find({}, batch_size=10_000)
    if limit is not None:
        cursor = cursor.limit(limit)
    return [doc async for doc in cursor]


async def copy_indexes(source: Any, target: Any) -> list[str]:
    """Create on ``target`` the indexes ``source`` has (but ``_id``): the ceiling writes into a
    collection indexed like the platform's, so both pay the same index maintenance."""
    created = []
    for name, info in (await source.index_information()).items():
        if name == "_id_":
            continue
        options = {k: v for k, v in info.items() if k in ("unique", "sparse")}
        await target.create_index(list(info["key"]), name=name, **options)
        created.append(name)
    return created


async def insert_many_rate(collection: Any, documents: Sequence[Mapping[str, Any]], batch_size: int,
                           store_cpu: Callable[[], float | None] | None = None) -> Timing:
    """Write ``documents`` with ``insert_many(ordered=False)`` in batches of ``batch_size``,
    one write at a time; only the writes are timed.

    Documents that are not ``RawBSONDocument`` yet are encoded first, with the collection's
    codec options, and every batch is sliced off before the clock starts. ``store_cpu``
    reads the store's CPU seconds, to report how busy the store was.
    """
    options = collection.codec_options
    docs = [d if isinstance(d, RawBSONDocument) else RawBSONDocument(bson.encode(d, codec_options=options))
            for d in documents]
    batches = [docs[start:start + batch_size] for start in range(0, len(docs), batch_size)]
    cpu0 = store_cpu() if store_cpu else None
    t0 = time.perf_counter()
    for batch in batches:
        await collection.insert_many(batch, ordered=False)
    seconds = time.perf_counter() - t0
    cpu1 = store_cpu() if store_cpu else None
    return Timing(len(docs), seconds, cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)


class BareConsumer:
    """An aio-pika consumer that acknowledges every message and does nothing else.

    :attr:`first_published` is the publish time (header ``timestamp_ms``) of the first
    message it got, :attr:`last_ack` the wall-clock time of its last acknowledgement.
    """

    def __init__(self, amqp_url: str, queue: str, prefetch: int) -> None:
        self.amqp_url, self.queue_name, self.prefetch = amqp_url, queue, prefetch
        self.count = 0
        self.first_published: float | None = None
        self.last_ack = 0.0
        self._connection: Any = None
        self._expected = 0
        self._done = asyncio.Event()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if self.first_published is None:
            stamp = (message.headers or {}).get("timestamp_ms")
            self.first_published = float(stamp) / 1000.0 if isinstance(stamp, int | float) else time.time()
        await message.ack()
        self.count += 1
        self.last_ack = time.time()
        if self.count >= self._expected:
            self._done.set()

    async def start(self, expected: int) -> None:
        """Connect and begin consuming; done after ``expected`` messages."""
        self._expected = expected
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await channel.get_queue(self.queue_name, ensure=True)
        await queue.consume(self._on_message)

    async def wait(self, timeout: float) -> Timing:
        """Wait for every expected message; publish of the first -> last acknowledgement."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        finally:
            await self._connection.close()
        assert self.first_published is not None
        return Timing(self.count, self.last_ack - self.first_published)
