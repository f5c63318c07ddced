"""Publishing messages: through faults, knowing which the broker confirmed; or with the tenants' tool.

:class:`Publisher` (the reliability suite's) gives each message a unique key, used as its
``message_id`` and in its body, and keeps trying a message until the broker confirms it or
the time budget runs out, reconnecting when the connection drops. A message confirmed on any
attempt is *acknowledged*; one sent but never confirmed is *indeterminate*.

:class:`PublishTool` (the benchmarks') runs ``mysimbdp publish``, the tool tenants use, as
a child process: what it reaches is part of what the benchmarks measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, DeliveryMode

__all__ = ["Publisher", "PublishTool", "message_body", "message_keys"]


def message_keys(prefix: str, n: int) -> list[str]:
    """``n`` keys; every 40th is rejected by ``rel_echo`` and every 97th is sent as non-JSON."""
    return [f"{prefix}-raw-{i:06d}" if i % 97 == 13 else f"reject-{prefix}-{i:06d}" if i % 40 == 7
            else f"{prefix}-{i:06d}" for i in range(n)]


def message_body(key: str) -> bytes:
    """The JSON body of a key, or a body that is not JSON for the ``-raw-`` keys."""
    if "-raw-" in key:
        return b"this is not JSON: " + key.encode()
    return orjson.dumps({"key": key, "payload": "x" * 32})


@dataclass
class Publisher:
    """Publishes keys to ``exchange`` with routing key ``routing_key`` on ``url``."""

    url: str
    exchange: str
    routing_key: str
    window: int = 64
    acknowledged: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    reconnects: int = 0
    _connection: AbstractConnection | None = None
    _channel: AbstractChannel | None = None
    _exchange: AbstractExchange | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _ensure(self, deadline: float) -> AbstractExchange:
        async with self._lock:
            while self._exchange is None or self._channel is None or self._channel.is_closed:
                if time.monotonic() > deadline:
                    raise TimeoutError("could not reconnect to the broker")
                await self.close()
                try:
                    self._connection = await aio_pika.connect(self.url, timeout=5)
                    self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                    self._exchange = await self._channel.get_exchange(self.exchange, ensure=True)
                    self.reconnects += 1
                except Exception:
                    self._exchange = None
                    await asyncio.sleep(0.5)
            return self._exchange

    async def _publish_one(self, key: str, deadline: float) -> None:
        message = aio_pika.Message(message_body(key), message_id=key, delivery_mode=DeliveryMode.PERSISTENT,
                                   content_type="application/json")
        while time.monotonic() < deadline:
            try:
                exchange = await self._ensure(deadline)
                self.attempted.add(key)
                await asyncio.wait_for(exchange.publish(message, self.routing_key, mandatory=True), 10)
            except Exception:
                self._exchange = None if self._channel is None or self._channel.is_closed else self._exchange
                await asyncio.sleep(0.2)
                continue
            self.acknowledged.add(key)
            return

    async def publish(self, keys: list[str], rate: float, budget_s: float = 120.0) -> None:
        """Publish every key at about ``rate`` per second, at most ``window`` awaiting confirms."""
        deadline = time.monotonic() + budget_s
        slots = asyncio.Semaphore(self.window)
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []

        async def one(key: str) -> None:
            try:
                await self._publish_one(key, deadline)
            finally:
                slots.release()

        for i, key in enumerate(keys):
            await slots.acquire()
            tasks.append(asyncio.create_task(one(key)))
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*tasks)

    @property
    def indeterminate(self) -> set[str]:
        """Sent at least once, never confirmed."""
        return self.attempted - self.acknowledged

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()


@dataclass
class PublishTool:
    """``mysimbdp publish --tenant T --amqp-url U --id-prefix P [--rate R] FILE`` as a child process."""

    amqp_url: str
    tenant: str
    file: Path
    id_prefix: str
    rate: float | None = None
    started: float = 0.0  # wall-clock time of the launch
    output: str = ""
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Launch the tool (no platform configuration is needed to publish)."""
        cmd = [sys.executable, "-c", "from mysimbdp.cli import main; main()", "publish", "--tenant", self.tenant,
               "--amqp-url", self.amqp_url, "--id-prefix", self.id_prefix,
               *(["--rate", f"{self.rate:g}"] if self.rate else []), str(self.file)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYSIMBDP_")}
        env["MYSIMBDP_CONFIG_DIR"] = str(self.file.parent)
        self.started = time.time()
        self.proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.STDOUT)

    async def wait(self, timeout: float) -> str:
        """Wait for the tool to finish; its summary line. Raises if it failed or took too long."""
        assert self.proc is not None
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            raise TimeoutError(f"mysimbdp publish did not finish within {timeout:.0f}s") from None
        self.output = out.decode(errors="replace").strip()
        if self.proc.returncode != 0:
            raise RuntimeError(f"mysimbdp publish exited with {self.proc.returncode}: {self.output[-500:]}")
        return self.output.splitlines()[-1] if self.output else ""
