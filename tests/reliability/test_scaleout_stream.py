"""Guarantee 7, proof 4: two daemons consume one tenant's stream; one decides its scaling.

Two ``mysimbdpd`` (instances ``a`` and ``b``, :class:`~tests.harness.cluster.Cluster`: one
private store, the shared broker, a 3 s lease, a 1 s heartbeat) serve a tenant whose stream
does not start by itself (``autostart = false``, at most 4 consumers):

1. a flood waits in the queue; ``POST /tenants/<t>/stream/start`` on ``a`` starts the stream
   on every instance (the decision's state), with one consumer in all;
2. the backlog and the waiting time breach the rules: the monitor holding the tenant's scale
   lease decides one scale-up, to ``max_consumers`` (``scale_up_step = 3``), and each instance
   runs its share (2 + 2): exactly one ``monitor.scaled``, from one instance, and every
   ``stream.consumers.changed`` it caused names that instance in ``decided_by``;
3. the rest of the messages flow at a steady rate and the deciding instance is SIGKILLed
   midway: the survivor takes the lease over, shares the total again and runs all of it.

Throughout, the tenant's queue is asked for its consumer count (a passive declare: the
broker's own count, every 50 ms): it never exceeds ``max_consumers``. At the end every
message the broker confirmed is one document or one ``_rejects`` entry (the checker).

``make test`` publishes 8,000 messages (about 15 s); ``make reliability`` 100,000 (about 95 s).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pymongo import AsyncMongoClient

from mysimbdp import tenants
from mysimbdp.stream.topology import queue_name
from tests.harness.cluster import Cluster
from tests.harness.publish import Publisher, message_keys
from tests.harness.wait import await_until
from tests.reliability.checker import tally
from tests.reliability.harness import suite_settings
from tests.reliability.results import record

pytestmark = pytest.mark.slow

GUARANTEE = "7. several daemons, one store"
MAX_CONSUMERS = 4
STREAM = {"app": "rel_echo", "min_consumers": 1, "max_consumers": MAX_CONSUMERS, "prefetch": 200,
          "batch_max_messages": 100, "batch_max_wait_ms": 100, "delivery_limit": 50,
          "report_interval_s": 0.5, "autostart": False}
# one scale-up, to the bound at once (no second one is possible), no scale-down while the test runs
# (a consumer empties a queue of thousands within a second or two: the first evaluation that
# sees the backlog after the start decides)
MONITOR = {"max_queue_depth": 100, "max_avg_ingest_ms": 1000, "breaches_before_alert": 1,
           "scale_up_step": 3, "cooldown_s": 0, "idle_reports_before_scale_down": 1000}
_PLACEHOLDER_URI = "mongodb://127.0.0.1:1/"  # the cluster's store replaces it


class ConsumerSampler:
    """The broker's consumer count of the tenant's queue, sampled until stopped."""

    def __init__(self, amqp_url: str, tenant: str) -> None:
        self.amqp_url, self.queue = amqp_url, queue_name(tenant)
        self.samples: list[int] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        connection = await aio_pika.connect(self.amqp_url)
        try:
            channel = await (await connection.channel()).get_underlay_channel()
            while not self._stop.is_set():
                try:
                    result = await channel.queue_declare(self.queue, passive=True)
                    self.samples.append(int(result.consumer_count or 0))
                except Exception:  # no queue yet: that closes the channel
                    channel = await (await connection.channel()).get_underlay_channel()
                await asyncio.sleep(0.05)
        finally:
            await connection.close()

    def stop(self) -> None:
        self._stop.set()


def _http(cluster: Cluster, instance: str, method: str, path: str) -> dict[str, Any]:
    import json
    import urllib.request

    request = urllib.request.Request(cluster[instance].url + path, method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {cluster.admin_token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


async def _settle(uri: str, tenant: str, want: int, timeout: float = 180.0) -> list[str]:
    """Every document's and reject's key, once all ``want`` are there and nothing more arrives."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=2000)
    db = client[f"tenant_{tenant}"]
    deadline, last, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    try:
        while True:
            found = [str(d["key"]) async for d in db["records"].find({}, {"key": 1}) if "key" in d]
            found += [str(d["message_id"]) async for d in db["_rejects"].find({}, {"message_id": 1})
                      if "message_id" in d]
            if len(found) != last:
                last, stable_since = len(found), time.monotonic()
            if (len(set(found)) >= want and time.monotonic() - stable_since > 2.0) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.3)
    finally:
        await client.close()


async def test_two_daemons_one_scaling_decision_and_a_kill(tmp_path: Path, amqp_url: str, full: bool) -> None:
    tenant, seed = f"sout{uuid.uuid4().hex[:8]}", random.randrange(1 << 30)
    rng = random.Random(seed)
    messages = 100_000 if full else 8_000
    flood = messages // 2
    template = suite_settings(tmp_path, _PLACEHOLDER_URI, amqp_url)
    tenants.write_profile(template.tenants_dir, {"id": tenant, "name": "scale-out stream", "stream": STREAM,
                                                 "monitor": MONITOR})
    cluster = Cluster(tmp_path / "cluster", template, n=2)
    await asyncio.to_thread(cluster.start)
    sampler = ConsumerSampler(amqp_url, tenant)
    sampling = asyncio.create_task(sampler.run())
    publisher = Publisher(amqp_url, template.stream.exchange, tenant, window=256)
    keys = message_keys(tenant, messages)
    killed = ""
    try:
        # both instances follow the tenant (each said so in mysimbdp.scaling) before the flood
        scaling = cluster.client["mysimbdp"]["scaling"]

        def both_follow() -> bool:
            doc = scaling.find_one({"_id": tenant}) or {}
            return {e.get("instance") for e in doc.get("running") or []} == {"a", "b"}
        await await_until(lambda: asyncio.to_thread(both_follow), 30, "both instances following the tenant", 0.2)

        # 1. the flood waits; one start starts the stream everywhere
        await publisher.publish(keys[:flood], rate=20_000.0)
        started = await asyncio.to_thread(_http, cluster, "a", "POST", f"/tenants/{tenant}/stream/start")
        assert started["total"] == 1 and started["decided_by"] == "a", started

        # 2. one scale-up, decided once, carried out by both
        def scaled() -> list[tuple[str, dict[str, Any]]]:
            return cluster.events("monitor.scaled", tenant=tenant)
        await await_until(lambda: scaled() or None, 60, "the monitor's scale-up", 0.2)

        def running(instance: str) -> int:
            changes = cluster[instance].log.find("stream.consumers.changed", tenant=tenant)
            return changes[-1]["to"] if changes else 0
        await await_until(lambda: running("a") == 2 and running("b") == 2 or None, 60,
                          "both instances running their share (2 + 2)", 0.2)

        # 3. the rest flows; the deciding instance is killed midway
        deciding = (cluster.client["mysimbdp"]["leases"].find_one({"_id": f"scale:{tenant}"}) or {}).get("holder")
        assert deciding in ("a", "b")
        survivor = "b" if deciding == "a" else "a"

        async def kill_midway() -> None:
            nonlocal killed
            await asyncio.sleep(rng.uniform(0.3, 0.6) * (messages - flood) / 1500.0)
            await asyncio.to_thread(cluster.kill, deciding)
            killed = deciding
        await asyncio.gather(publisher.publish(keys[flood:], rate=1500.0), kill_midway())
        await await_until(lambda: running(survivor) == MAX_CONSUMERS or None, 60,
                          f"{survivor} running the whole total after {deciding} went", 0.2)
        found = await _settle(cluster.store.uri, tenant, len(publisher.acknowledged))
    finally:
        sampler.stop()
        await asyncio.gather(sampling, return_exceptions=True)
        await publisher.close()
        crashes = cluster.crashes()
        await asyncio.to_thread(cluster.close)

    t = tally(publisher.acknowledged, found, publisher.indeterminate)
    ups = [(i, e) for i, e in cluster.events("monitor.scaled", tenant=tenant) if e["to"] > e["from"]]
    peak = max(sampler.samples, default=0)
    record(GUARANTEE, "stream: two daemons consuming one tenant, the deciding one SIGKILLed midway",
           "test_two_daemons_one_scaling_decision_and_a_kill", injected=1, checked=t.acknowledged, lost=t.lost,
           duplicated=t.duplicated, unexpected=t.unexpected, crashes=crashes,
           note=f"seed {seed}, {t.indeterminate} indeterminate; consumers at most {peak} of max_consumers "
                f"{MAX_CONSUMERS} ({len(sampler.samples)} samples); {len(ups)} scale-up decision(s)")
    assert t.ok, f"seed {seed}: {t}"
    assert crashes == 0 and killed
    # the cluster never ran more than max_consumers, and did run all of them
    assert peak == MAX_CONSUMERS, sampler.samples[-50:]
    # one scale-up for the tenant, decided by one instance, carried out by both under its name
    assert len(ups) == 1, ups
    decider, up = ups[0]
    assert (up["from"], up["to"]) == (1, MAX_CONSUMERS) and up["decided_by"] == decider
    carried = [(i, e) for i, e in cluster.events("stream.consumers.changed", tenant=tenant)
               if str(e.get("reason", "")).startswith("monitor scale-up")]
    assert {i for i, _ in carried} == {"a", "b"}, carried
    assert {e["decided_by"] for _, e in carried} == {decider}
    # the survivor took the decision over: it shared the total again under its own name
    taken = [e for _, e in cluster.events("stream.consumers.changed", tenant=tenant)
             if e.get("decided_by") == survivor and "instances changed" in str(e.get("reason"))]
    assert taken and taken[-1]["to"] == MAX_CONSUMERS, taken
