"""Declaring a tenant's topology on the real RabbitMQ: a queue kept as it is, a queue refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from mysimbdp.events import EventBus
from mysimbdp.logs import write_event
from mysimbdp.stream import topology
from mysimbdp.stream.topology import QueueRefused, dead_name, declare_tenant, queue_name
from mysimbdp.tenants import StreamProfile

EXCHANGE = "mysimbdp.ingest"

EVENTS = EventBus(write_event).emitter("stream")


@pytest.fixture
async def connection(amqp_url: str, tenant_id: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    conn = await aio_pika.connect(amqp_url)
    yield conn
    channel = await conn.channel()
    for queue in (queue_name(tenant_id), dead_name(tenant_id)):
        await channel.queue_delete(queue)
    await channel.exchange_delete(dead_name(tenant_id))
    await conn.close()


async def test_a_queue_declared_with_other_arguments_is_kept_and_said_so(
        connection: aio_pika.abc.AbstractConnection, tenant_id: str) -> None:
    await declare_tenant(connection, EXCHANGE, tenant_id, StreamProfile(app="x", delivery_limit=5), EVENTS)
    with capture_logs() as events:
        await declare_tenant(connection, EXCHANGE, tenant_id, StreamProfile(app="x", delivery_limit=9), EVENTS)
    mismatch = [e for e in events if e["event"] == "stream.topology.mismatch"]
    assert mismatch and "x-delivery-limit" in mismatch[0]["error"]
    assert any(e["event"] == "stream.topology.declared" for e in events)


async def test_a_broker_refusing_the_queue_arguments_is_an_error_naming_why(
        connection: aio_pika.abc.AbstractConnection, tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a broker without at-least-once dead-lettering (before 3.10) does with the queue's
    arguments, made here with one no RabbitMQ allows on a quorum queue."""
    original = topology.queue_arguments

    def refused(tenant: str, profile: StreamProfile) -> dict[str, Any]:
        return {**original(tenant, profile), "x-max-priority": 5}

    monkeypatch.setattr(topology, "queue_arguments", refused)
    with capture_logs() as events, pytest.raises(QueueRefused) as info:
        await declare_tenant(connection, EXCHANGE, tenant_id, StreamProfile(app="x"), EVENTS)
    message = str(info.value)
    assert "PRECONDITION_FAILED" in message and "x-max-priority" in message and "RabbitMQ 3.10" in message
    assert not any(e["event"] == "stream.topology.mismatch" for e in events)
