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
from collections.abc import Callable, Sequence
from typing import Any

import aio_pika
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

__all__ = ["read_documents", "copy_indexes", "insert_many_rate", "BareConsumer", "timing"]


def timing(records: int, seconds: float, store_cpu_seconds: float | None = None) -> dict[str, Any]:
    """``{"records", "seconds", "rate", "store_cpu_share"}`` of records written or messages handled."""
    return {"records": records, "seconds": round(seconds, 4), "rate": round(records / seconds if seconds > 0 else 0.0, 1),
            "store_cpu_share": (round(store_cpu_seconds / seconds, 3)
                                if store_cpu_seconds is not None and seconds > 0 else None)}


async def read_documents(collection: Any) -> list[RawBSONDocument]:
    """The documents of ``collection`` as the platform wrote them (``_id`` included), as the
    store's own BSON bytes: already built, nothing left to encode."""
    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return [doc async for doc in raw.find({}, batch_size=10_000)]


async def copy_indexes(source: Any, target: Any) -> list[str]:
    """Create on ``target`` the indexes ``source`` has (but ``_id``): the ceiling writes into a
    collection indexed like the platform's, so both pay the same index maintenance."""
    created = []
    for name, info in (await source.index_information()).items():
        if name != "_id_":
            options = {k: v for k, v in info.items() if k in ("unique", "sparse")}
            await target.create_index(list(info["key"]), name=name, **options)
            created.append(name)
    return created


async def insert_many_rate(collection: Any, documents: Sequence[RawBSONDocument], batch_size: int,
                           store_cpu: Callable[[], float | None]) -> dict[str, Any]:
    """Write ``documents`` with ``insert_many(ordered=False)`` in batches of ``batch_size``, one
    write at a time, every batch sliced off before the clock starts; only the writes are timed.
    ``store_cpu`` reads the store's CPU seconds, to report how busy the store was."""
    batches = [documents[start:start + batch_size] for start in range(0, len(documents), batch_size)]
    cpu0, t0 = store_cpu(), time.perf_counter()
    for batch in batches:
        await collection.insert_many(batch, ordered=False)
    seconds, cpu1 = time.perf_counter() - t0, store_cpu()
    return timing(len(documents), seconds, cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)


class BareConsumer:
    """An aio-pika consumer of a quorum queue like a tenant's, bound to ``routing_key`` on the
    ingest exchange, that acknowledges every message and does nothing else. It times the
    publish stamp (header ``timestamp_ms``) of the first message to its last acknowledgement."""

    def __init__(self, amqp_url: str, exchange: str, queue: str, routing_key: str, prefetch: int) -> None:
        self.amqp_url, self.exchange, self.queue, self.routing_key, self.prefetch = \
            amqp_url, exchange, queue, routing_key, prefetch
        self.count, self.first_published, self.last_ack = 0, 0.0, 0.0
        self._connection: Any = None
        self._queue: Any = None
        self._tag = ""
        self._expected = 0
        self._done = asyncio.Event()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if not self.first_published:
            stamp = (message.headers or {}).get("timestamp_ms")
            self.first_published = float(stamp) / 1000.0 if isinstance(stamp, int | float) else time.time()
        await message.ack()
        self.count += 1
        self.last_ack = time.time()
        if self.count >= self._expected:
            self._done.set()

    async def start(self, expected: int) -> None:
        """Declare the queue, connect and begin consuming; done after ``expected`` messages."""
        self._expected = expected
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(exchange, routing_key=self.routing_key)
        await channel.set_qos(prefetch_count=self.prefetch)
        self._queue, self._tag = queue, await queue.consume(self._on_message)

    async def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for every expected message, then delete the queue; the :func:`timing`."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
            await self._queue.cancel(self._tag)
            await self._queue.delete(if_unused=False, if_empty=False)
        finally:
            await self._connection.close()
        return timing(self.count, self.last_ack - self.first_published)
