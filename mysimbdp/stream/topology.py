"""The broker topology of stream ingestion: names, routing keys and their declaration.

Shared by every tenant: one durable topic exchange (``settings.stream.exchange``,
``mysimbdp.ingest``). Dedicated to each tenant with a ``[stream]`` section:

* queue ``mysimbdp.<tenant>``: a quorum queue with ``x-delivery-limit`` (the profile's
  ``delivery_limit``), bound to routing keys ``<tenant>`` and ``<tenant>.*``;
* dead-letter exchange and queue ``mysimbdp.<tenant>.dead``: where a message goes once it
  was delivered more than ``delivery_limit`` times without being acknowledged
  (dead-lettering ``at-least-once``, so the move itself loses nothing).

Quorum queues with at-least-once dead-lettering need RabbitMQ 3.10 or later: an older broker
refuses the queue's arguments and :func:`declare_tenant` raises :class:`QueueRefused`.
"""

from __future__ import annotations

import re
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, ExchangeType
from aiormq.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed

from mysimbdp.errors import MysimbdpError
from mysimbdp.events import Emitter
from mysimbdp.events.catalog import StreamTopologyDeclared, StreamTopologyMismatch
from mysimbdp.tenants import StreamProfile

__all__ = [
    "queue_name", "dead_name", "routing_key", "binding_keys", "type_of", "queue_arguments",
    "routing_key_regex", "declare_exchange", "declare_tenant", "passive_depth", "QueueRefused",
    "MIN_RABBITMQ",
]

MIN_RABBITMQ = "3.10"  # quorum queues (3.8) with x-dead-letter-strategy at-least-once (3.10)


class QueueRefused(MysimbdpError):
    """The broker refused to create the tenant's queue with its arguments."""


def queue_name(tenant: str) -> str:
    """The tenant's ingest queue, ``mysimbdp.<tenant>``."""
    return f"mysimbdp.{tenant}"


def dead_name(tenant: str) -> str:
    """The tenant's dead-letter exchange and queue, ``mysimbdp.<tenant>.dead``."""
    return f"mysimbdp.{tenant}.dead"


def routing_key(tenant: str, type_: str | None = None) -> str:
    """``<tenant>`` or ``<tenant>.<type>``: the key a tenant publishes with."""
    return f"{tenant}.{type_}" if type_ else tenant


def binding_keys(tenant: str) -> tuple[str, str]:
    """The keys the tenant's queue is bound with on the topic exchange."""
    return (tenant, f"{tenant}.*")


def type_of(tenant: str, key: str) -> str | None:
    """The ``<type>`` part of a routing key ``<tenant>.<type>`` (None for plain ``<tenant>``)."""
    prefix = tenant + "."
    return key[len(prefix):] if key.startswith(prefix) else None


def routing_key_regex(tenant: str) -> str:
    """The regex of the routing keys a tenant's broker user may publish with (topic permission)."""
    return rf"^{re.escape(tenant)}(\.[^.]+)?$"


def queue_arguments(tenant: str, profile: StreamProfile) -> dict[str, Any]:
    """Arguments of the tenant's quorum queue."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": profile.delivery_limit,
        "x-dead-letter-exchange": dead_name(tenant),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
    }


async def declare_exchange(connection: AbstractConnection, exchange: str) -> None:
    """Declare the shared durable topic exchange (idempotent)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
    finally:
        await channel.close()


async def declare_tenant(connection: AbstractConnection, exchange: str, tenant: str,
                         profile: StreamProfile, events: Emitter) -> None:
    """Declare the tenant's queue, dead-letter exchange and queue, and the bindings.

    Idempotent. A queue declared earlier with other arguments (e.g. a changed
    ``delivery_limit``) is kept as it is and a ``stream.topology.mismatch`` warning says so:
    RabbitMQ cannot change a queue's arguments in place.
    """
    channel = await connection.channel(publisher_confirms=False)
    try:
        ex = await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(dead_name(tenant), ExchangeType.FANOUT, durable=True)
        dead = await channel.declare_queue(dead_name(tenant), durable=True,
                                           arguments={"x-queue-mode": "lazy"})
        await dead.bind(dlx, routing_key="")
        try:
            queue = await channel.declare_queue(queue_name(tenant), durable=True,
                                                arguments=queue_arguments(tenant, profile))
        except ChannelPreconditionFailed as exc:
            await channel.close()
            channel = await connection.channel(publisher_confirms=False)
            ex = await channel.get_exchange(exchange, ensure=False)
            try:
                queue = await channel.declare_queue(queue_name(tenant), passive=True)
            except ChannelNotFoundEntity:  # no queue to keep: the broker refuses the arguments
                raise QueueRefused(
                    f"the broker refused queue {queue_name(tenant)!r}: {exc}; it must support quorum queues "
                    f"with at-least-once dead-lettering (RabbitMQ {MIN_RABBITMQ} or later)") from None
            events.emit(StreamTopologyMismatch(tenant=tenant, queue=queue_name(tenant), error=str(exc),
                                               hint="delete the queue to apply the new arguments"))
        for key in binding_keys(tenant):
            await queue.bind(ex, routing_key=key)
    finally:
        if not channel.is_closed:
            await channel.close()
    events.emit(StreamTopologyDeclared(tenant=tenant, queue=queue_name(tenant), dead_letter=dead_name(tenant),
                                       delivery_limit=profile.delivery_limit))


async def passive_depth(channel: aio_pika.abc.AbstractChannel, tenant: str) -> int:
    """Messages ready in the tenant's queue (not counting delivered, unacknowledged ones)."""
    underlay = await channel.get_underlay_channel()
    result = await underlay.queue_declare(queue_name(tenant), passive=True)
    return int(result.message_count or 0)
