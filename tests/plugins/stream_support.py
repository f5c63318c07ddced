"""Helpers of the stream tests: tenant profiles, raw publishing, waiting for consumers and topology."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from mysimbdp import tenants
from mysimbdp.config import Settings
from tests.harness.wait import await_until

__all__ = ["ECHO_APPS", "write_profile", "publish_raw", "wait_consumers", "wait_stream_ready"]

ECHO_APPS = {"stream_echo": "tests.plugins.stream_echo"}


def write_profile(settings: Settings, tenant: str, app: str = "stream_echo", runner: str = "process",
                  **stream: Any) -> Path:
    """Write ``<tenants>/<tenant>.toml`` with a ``[stream]`` section (small, fast batches by default)."""
    values: dict[str, Any] = {"app": app, "min_consumers": 1, "max_consumers": 4, "prefetch": 100,
                              "batch_max_messages": 50, "batch_max_wait_ms": 50, "report_interval_s": 1.0}
    values.update(stream)
    return tenants.write_profile(settings.tenants_dir, {"id": tenant, "runner": runner, "stream": values})


async def publish_raw(amqp_url: str, key: str, bodies: Iterable[bytes | dict[str, Any] | list[Any]],
                      ids: Iterable[str | None] | None = None, exchange: str = "mysimbdp.ingest") -> int:
    """Publish each body (dicts and lists as JSON) with confirms; returns how many were confirmed."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        ex = await channel.get_exchange(exchange, ensure=False)
        bodies = list(bodies)
        id_list = list(ids) if ids is not None else [f"m{i}" for i in range(len(bodies))]
        waits = []
        for body, mid in zip(bodies, id_list, strict=True):
            raw = body if isinstance(body, bytes) else orjson.dumps(body)
            waits.append(ex.publish(aio_pika.Message(raw, message_id=mid), key))
        await asyncio.gather(*waits)
        return len(waits)
    finally:
        await connection.close()


async def wait_consumers(daemon: Any, tenant: str, count: int, timeout: float = 30.0) -> None:
    """Wait until the stream manager runs ``count`` consumers for ``tenant``."""
    async def check() -> bool:
        return bool(daemon.stream.consumer_count(tenant) == count)
    await await_until(check, timeout, f"{count} consumers for {tenant}")


async def wait_stream_ready(daemon: Any, tenant: str, timeout: float = 30.0) -> None:
    """Wait until the broker is connected and the tenant's queue is declared."""
    async def check() -> bool:
        return await daemon.stream.queue_depth(tenant) is not None
    await await_until(check, timeout, f"the stream topology of {tenant}")
