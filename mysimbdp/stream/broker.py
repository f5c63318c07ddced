"""The connection to RabbitMQ (the messagingsystem of the reference design).

The daemon keeps one robust connection. If the broker is unreachable at start-up the
daemon does not fail: the connection is retried with exponential backoff, ``/health``
reports the broker down, and the parts that do not need it keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from mysimbdp.events import EventBus
from mysimbdp.events.catalog import (
    BrokerCallbackFailed,
    BrokerClosed,
    BrokerConnected,
    BrokerDisconnected,
    BrokerReconnected,
    BrokerUnavailable,
)

__all__ = ["Broker"]

ConnectedCallback = Callable[[AbstractRobustConnection], Coroutine[Any, Any, None]]


class Broker:
    """Connects in the background; :attr:`connection` is set once the broker answered."""

    name = "broker"

    def __init__(self, url: str, retry_max_s: float = 30.0, *, bus: EventBus) -> None:
        self.events = bus.emitter("broker")
        self.url = url
        self.retry_max_s = retry_max_s
        self.connection: AbstractRobustConnection | None = None
        self.reason: str | None = "not connected yet"
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._callbacks: list[ConnectedCallback] = []

    @property
    def up(self) -> bool:
        """Whether the connection is open now."""
        return self.connection is not None and not self.connection.is_closed

    def on_connected(self, callback: ConnectedCallback) -> None:
        """Run ``callback(connection)`` once the first connection is made (or now, if it is)."""
        self._callbacks.append(callback)
        if self.connection is not None:
            asyncio.get_running_loop().create_task(callback(self.connection))

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._task = asyncio.create_task(self._connect_loop(), name="broker.connect")

    async def stop(self) -> None:
        """Stop connecting and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.connection is not None:
            connection, self.connection = self.connection, None
            # our own close is not a disconnection: nothing to warn about
            connection.close_callbacks.discard(self._on_close)
            await connection.close()
            self.events.emit(BrokerClosed())
        self.reason = "stopped"

    async def _connect_loop(self) -> None:
        delay = 0.5
        while self.connection is None:
            try:
                connection = await aio_pika.connect_robust(self.url, timeout=5, client_properties={"connection_name": "mysimbdpd"})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.reason = f"{type(exc).__name__}: {exc}"[:300]
                self.events.emit(BrokerUnavailable(reason=self.reason, retry_in_s=round(delay, 1)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            self.connection = connection
            self.reason = None
            connection.close_callbacks.add(self._on_close)
            connection.reconnect_callbacks.add(self._on_reconnect)
            self.connected.set()
            self.events.emit(BrokerConnected())
            for callback in list(self._callbacks):
                try:
                    await callback(connection)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.events.emit(BrokerCallbackFailed(error=str(exc)))

    def _on_close(self, _conn: object, exc: BaseException | None = None) -> None:
        self.reason = f"connection lost: {exc}" if exc else "connection closed"
        self.events.emit(BrokerDisconnected(reason=self.reason))

    def _on_reconnect(self, _conn: object) -> None:
        self.reason = None
        self.events.emit(BrokerReconnected())

    def health(self) -> dict[str, object]:
        """``{"up": bool, "reason": ...}``."""
        return {"up": self.up, "reason": None if self.up else self.reason}
