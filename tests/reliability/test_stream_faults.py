"""Guarantee 2: every message the broker confirmed to the publisher ends as exactly one
document or one ``_rejects`` entry, through faults injected while messages flow.

Faults: the daemon SIGKILLed and restarted; RabbitMQ stopped and started (a private node);
the store SIGKILLed and restarted (a private NX-27017). Publishing runs at a steady rate
while a second task injects the fault ``rounds`` times at random moments. Some messages are
rejected by the app and some are not JSON, so both outcomes are counted.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from tests.harness.daemon import Daemon
from tests.harness.publish import Publisher, message_keys
from tests.reliability.checker import Tally, tally
from tests.reliability.faults import RabbitNode, StoreServer
from tests.reliability.harness import suite_settings, write_tenant
from tests.reliability.results import record

GUARANTEE = "2. stream no loss, no duplicates"
STREAM_PROFILE = {
    "app": "rel_echo", "min_consumers": 2, "max_consumers": 4, "prefetch": 200,
    "batch_max_messages": 100, "batch_max_wait_ms": 100,
    # kills redeliver what was in flight; a high limit keeps repeated crashes from
    # dead-lettering good messages (the delivery limit is for poison messages)
    "delivery_limit": 50,
}


async def _found(client: AsyncMongoClient[dict[str, Any]], tenant: str) -> list[str]:
    db = client[f"tenant_{tenant}"]
    docs = [str(d["key"]) async for d in db["records"].find({}, {"key": 1}) if "key" in d]
    rejects = [str(d["message_id"]) async for d in db["_rejects"].find({}, {"message_id": 1})
               if "message_id" in d]
    return docs + rejects


async def _settle(client: AsyncMongoClient[dict[str, Any]], tenant: str, want: int,
                  timeout: float = 120.0) -> list[str]:
    """Read back until every acknowledged message is accounted for and nothing more arrives."""
    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while True:
        try:
            found = await _found(client, tenant)
        except Exception:  # the store may be restarting
            await asyncio.sleep(0.5)
            continue
        if len(found) != last:
            last, stable_since = len(found), time.monotonic()
        if len(set(found)) >= want and time.monotonic() - stable_since > 2.0:
            return found
        if time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.3)


async def _scenario(*, runner: Daemon, tenant: str, publish_url: str, read_uri: str,
                    inject: Callable[[], Awaitable[None]], rounds: int, messages: int,
                    seed: int) -> tuple[Tally, Publisher]:
    rng = random.Random(seed)
    keys = message_keys(tenant, messages)
    publisher = Publisher(publish_url, runner.settings.stream.exchange, tenant)

    async def faults() -> None:
        for _ in range(rounds):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            await inject()

    try:
        await asyncio.gather(publisher.publish(keys, rate=300.0), faults())
    finally:
        await publisher.close()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(read_uri, serverSelectionTimeoutMS=2000)
    try:
        found = await _settle(client, tenant, len(publisher.acknowledged))
    finally:
        await client.close()
    return tally(publisher.acknowledged, found, publisher.indeterminate), publisher


def _record(fault: str, test: str, t: Tally, injected: int, crashes: int, seed: int) -> None:
    record(GUARANTEE, fault, test, injected=injected, checked=t.acknowledged, lost=t.lost,
           duplicated=t.duplicated, unexpected=t.unexpected, crashes=crashes,
           note=f"seed {seed}, {t.indeterminate} indeterminate")


def _seed() -> int:
    """``MYSIMBDP_RELIABILITY_SEED`` replays a run (the seed is in each row's note)."""
    return int(os.environ.get("MYSIMBDP_RELIABILITY_SEED", random.randrange(1 << 30)))


async def test_daemon_sigkill_mid_stream(tmp_path: Path, mongo_uri: str, amqp_url: str,
                                         rounds: int, full: bool) -> None:
    tenant, seed = f"skill{uuid.uuid4().hex[:8]}", _seed()
    settings = suite_settings(tmp_path, mongo_uri, amqp_url)
    write_tenant(settings, tenant, stream=STREAM_PROFILE)
    runner = Daemon(settings)
    await asyncio.to_thread(runner.start)

    async def inject() -> None:
        await asyncio.to_thread(runner.kill)
        await asyncio.to_thread(runner.start)

    try:
        t, _ = await _scenario(runner=runner, tenant=tenant, publish_url=amqp_url, read_uri=mongo_uri,
                               inject=inject, rounds=rounds, messages=3000 if full else 1200, seed=seed)
        crashes = runner.crashes + (0 if runner.alive() else 1)
    finally:
        await asyncio.to_thread(runner.stop)
    _record("daemon SIGKILLed mid-stream, then restarted", "test_daemon_sigkill_mid_stream",
            t, runner.kills, crashes, seed)
    assert t.ok, f"seed {seed}: {t}"
    assert runner.kills == rounds and crashes == 0


async def test_rabbitmq_stopped_and_started_mid_stream(tmp_path: Path, mongo_uri: str,
                                                      rabbit_node: RabbitNode, rounds: int,
                                                      full: bool) -> None:
    tenant, seed = f"rstop{uuid.uuid4().hex[:8]}", _seed()
    settings = suite_settings(tmp_path, mongo_uri, rabbit_node.amqp_url, retry_max_s=2.0,
                              stream={"management_url": rabbit_node.management_url})
    write_tenant(settings, tenant, stream=STREAM_PROFILE)
    runner = Daemon(settings)
    await asyncio.to_thread(runner.start)
    restarts = 0

    async def inject() -> None:
        # In turn: RabbitMQ stopped inside its node (connections closed, listeners gone), then
        # the whole node stopped (the Erlang VM exits) and started again from its data.
        nonlocal restarts
        if restarts % 2 == 0:
            await asyncio.to_thread(rabbit_node.stop_app)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(rabbit_node.start_app)
        else:
            await asyncio.to_thread(rabbit_node.shutdown)
            await asyncio.to_thread(rabbit_node.start)
        restarts += 1

    try:
        t, publisher = await _scenario(runner=runner, tenant=tenant, publish_url=rabbit_node.amqp_url,
                                       read_uri=mongo_uri, inject=inject, rounds=rounds,
                                       messages=3000 if full else 1200, seed=seed)
        crashes = 0 if runner.alive() else 1
    finally:
        await asyncio.to_thread(runner.stop)
    _record("RabbitMQ stopped and started mid-stream (the application and the whole node, in turn)",
            "test_rabbitmq_stopped_and_started_mid_stream",
            t, restarts, crashes, seed)
    assert t.ok, f"seed {seed}: {t} (publisher reconnects: {publisher.reconnects})"
    assert crashes == 0


async def test_store_killed_and_restarted_mid_stream(tmp_path: Path, amqp_url: str,
                                                    store_server: StoreServer, rounds: int,
                                                    full: bool) -> None:
    tenant, seed = f"mkill{uuid.uuid4().hex[:8]}", _seed()
    settings = suite_settings(tmp_path, store_server.uri, amqp_url)
    write_tenant(settings, tenant, stream=STREAM_PROFILE)
    runner = Daemon(settings)
    await asyncio.to_thread(runner.start)
    kills = 0

    async def inject() -> None:
        nonlocal kills
        await asyncio.to_thread(store_server.kill)
        kills += 1
        await asyncio.sleep(1.0)
        await asyncio.to_thread(store_server.start)

    try:
        t, _ = await _scenario(runner=runner, tenant=tenant, publish_url=amqp_url, read_uri=store_server.uri,
                               inject=inject, rounds=rounds, messages=3000 if full else 1200, seed=seed)
        crashes = 0 if runner.alive() else 1
    finally:
        await asyncio.to_thread(runner.stop)
    _record("store SIGKILLed and restarted mid-stream", "test_store_killed_and_restarted_mid_stream",
            t, kills, crashes, seed)
    assert t.ok, f"seed {seed}: {t}"
    assert crashes == 0
