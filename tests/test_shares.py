"""One scaling decision per tenant across instances: the split and the admission as plain
functions; the decision, the shares and the cluster-wide bound with two instances' followers
on the real store (the stream managers are small in-memory stand-ins that count consumers)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mysimbdp.cluster.leases import Leases
from mysimbdp.events import Event, EventBus
from mysimbdp.events.catalog import MonitorShareWaiting
from mysimbdp.monitor.shares import ClusterScaling, ScaleDecision, admissible, split

TENANT = "acme"
MAX = 4


# ---- pure --------------------------------------------------------------------------------

def test_split_shares_the_total_first_instances_first() -> None:
    assert split(5, ["b", "a", "c"]) == {"a": 2, "b": 2, "c": 1}
    assert split(2, ["b", "a", "c"]) == {"a": 1, "b": 1, "c": 0}
    assert split(0, ["a", "b"]) == {"a": 0, "b": 0}
    assert split(3, []) == {}
    assert split(-1, ["a"]) == {"a": 0}
    assert sum(split(7, [f"i{n}" for n in range(5)]).values()) == 7


def test_split_is_the_same_whatever_the_order_or_repeats() -> None:
    assert split(7, ["c", "a", "b", "a"]) == split(7, ["a", "b", "c"])


def test_admissible_shrinks_at_once_and_grows_only_into_room() -> None:
    assert admissible(share=1, running=3, others=9, total=4) == 1  # shrink whatever the others run
    assert admissible(share=2, running=0, others=2, total=4) == 2  # room enough
    assert admissible(share=2, running=0, others=3, total=4) == 1  # part of it
    assert admissible(share=2, running=1, others=4, total=4) == 1  # none: keeps what it runs
    assert admissible(share=2, running=2, others=5, total=4) == 2


def test_a_decision_reads_leniently() -> None:
    d = ScaleDecision.from_doc({"_id": "t", "state": "running", "total": "x", "shares": [
        {"instance": "a", "consumers": 2}, {"instance": 3}, "odd", {"instance": "b", "consumers": True}]})
    assert d.total == 0 and d.shares == {"a": 2, "b": 0} and d.share_of("a") == 2 and d.share_of("z") == 0
    stopped = ScaleDecision.from_doc({"_id": "t", "state": "stopped", "total": 3, "shares": [
        {"instance": "a", "consumers": 3}]})
    assert stopped.share_of("a") == 0


# ---- on the store ------------------------------------------------------------------------

@dataclass
class Stream:
    """What the followers drive: a consumer count per tenant, within [min, max] of the total."""

    counts: dict[str, int] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    changes: list[tuple[int, int, str, str | None]] = field(default_factory=list)

    def consumer_count(self, tenant: str) -> int:
        return self.counts.get(tenant, 0)

    async def queue_depth(self, tenant: str) -> int | None:
        return 0

    def health(self) -> dict[str, object]:
        return {"up": True}

    def is_running(self, tenant: str) -> bool:
        return tenant in self.running

    def bounds(self, tenant: str) -> tuple[int, int]:
        return 1, MAX

    async def scale(self, tenant: str, count: int, reason: str, *, decided_by: str | None = None,
                    share: bool = False) -> tuple[int, int]:
        assert share and 0 <= count <= MAX and tenant in self.running
        return self._set(tenant, count, reason, decided_by)

    async def start_tenant(self, tenant: str, reason: str, *, count: int | None = None,
                           decided_by: str | None = None) -> tuple[int, int]:
        self.running.add(tenant)
        return self._set(tenant, 1 if count is None else count, reason, decided_by)

    async def stop_tenant(self, tenant: str, reason: str, *, decided_by: str | None = None) -> tuple[int, int]:
        self.running.discard(tenant)
        return self._set(tenant, 0, reason, decided_by)

    def _set(self, tenant: str, count: int, reason: str, decided_by: str | None) -> tuple[int, int]:
        before = self.counts.get(tenant, 0)
        self.counts[tenant] = count
        if count != before:
            self.changes.append((before, count, reason, decided_by))
        return before, count


class Registry:
    """The instances' heartbeats, shared by the instances of one test; each heartbeat says what
    the instance's stream ran when it last beat (:meth:`beat`)."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.beats: dict[str, dict[str, int]] = {}

    def beat(self) -> None:
        self.beats = {i: dict(s.counts) for i, s in self.streams.items()}

    def view(self, instance: str) -> Instances:
        return Instances(instance, self)

    def total(self) -> int:
        return sum(s.consumer_count(TENANT) for s in self.streams.values())


@dataclass
class Instances:
    id: str
    registry: Registry

    async def live(self) -> list[dict[str, Any]]:
        return [{"_id": i, "consumers": self.registry.beats.get(i, {})} for i in sorted(self.registry.streams)]

    async def live_ids(self) -> list[str]:
        return sorted({*self.registry.streams, self.id})


@dataclass
class Platform:
    platform_db: Any


@pytest.fixture
async def platform(mongo: AsyncMongoClient[dict[str, Any]]) -> Any:
    name = f"shares_{uuid.uuid4().hex[:8]}"
    yield Platform(mongo[name])
    await mongo.drop_database(name)


def instance(platform: Platform, registry: Registry, name: str,
             seen: list[Event]) -> tuple[ClusterScaling, Stream]:
    stream = Stream()
    registry.streams[name] = stream
    bus = EventBus()
    bus.subscribe(seen.append)
    scaling = ClusterScaling(store=platform, leases=Leases(platform, name, 30.0), instances=registry.view(name),
                             stream=stream, bus=bus, stopping=asyncio.Event())
    return scaling, stream


async def test_one_leader_shares_the_total_and_the_cluster_never_runs_more(platform: Platform) -> None:
    registry, seen = Registry(), []
    a, sa = instance(platform, registry, "a", seen)
    b, sb = instance(platform, registry, "b", seen)
    assert await a.lead(TENANT) and not await b.lead(TENANT)
    assert await a.deciding(TENANT) == "a"
    # both say they serve the tenant before anything is decided
    assert await a.follow(TENANT) is None and await b.follow(TENANT) is None
    assert await a.decision(TENANT) is None

    before, after, decision = await a.set_total(TENANT, 3, "monitor scale-up: test")
    assert decision.shares == {"a": 2, "b": 1} and decision.decided_by == "a" and decision.version == 1
    assert (before, after) == (0, 2)  # a's share at once (a starts its stream for it)
    registry.beat()
    assert await b.follow(TENANT) == (0, 1)
    assert sb.changes == [(0, 1, "monitor scale-up: test", "a")]
    assert registry.total() == 3

    # b goes: a holds the whole total once the decision is shared again
    del registry.streams["b"]
    registry.beat()
    decision = await a.reshare(TENANT, decision, 1, MAX)
    assert decision.shares == {"a": 3} and "gone: b" in decision.reason
    assert await a.follow(TENANT) == (2, 3)

    # b comes back while a runs all 3: it waits until a shrank, the total is never exceeded
    registry.streams["b"] = sb
    sb.counts[TENANT] = 0
    registry.beat()
    await b.follow(TENANT)  # b says it serves the tenant (its old share is gone)
    decision = await a.reshare(TENANT, decision, 1, MAX)
    assert decision.shares == {"a": 2, "b": 1}
    assert await b.follow(TENANT) == (0, 0)
    assert any(isinstance(e, MonitorShareWaiting) and e.others == 3 for e in seen)
    assert registry.total() <= 3
    assert await a.follow(TENANT) == (3, 2)
    registry.beat()
    assert await b.follow(TENANT) == (0, 1)
    assert registry.total() == 3


async def test_a_follower_does_not_grow_on_a_stale_heartbeat_of_the_other(platform: Platform) -> None:
    """a grew (its heartbeat still says 0): b's reservation sees a's entry in ``running``."""
    registry, seen = Registry(), []
    a, sa = instance(platform, registry, "a", seen)
    b, sb = instance(platform, registry, "b", seen)
    await a.follow(TENANT)
    await b.follow(TENANT)
    registry.beat()
    await a.set_total(TENANT, 4, "operator: scale")
    assert sa.consumer_count(TENANT) == 2
    # b (still 0) goes on to run 2; then the leader gives a all 4 as if b had gone, while b's
    # heartbeat still says 0: a must count b's running entry and wait
    assert await b.follow(TENANT) == (0, 2)
    await a.collection.update_one({"_id": TENANT}, {"$set": {"shares": [{"instance": "a", "consumers": 4}]}})
    assert await a.follow(TENANT) == (2, 2)
    assert registry.total() == 4


async def test_stop_and_start_reach_every_instance(platform: Platform) -> None:
    registry, seen = Registry(), []
    a, sa = instance(platform, registry, "a", seen)
    b, sb = instance(platform, registry, "b", seen)
    await a.follow(TENANT)
    await b.follow(TENANT)
    await b.set_total(TENANT, 2, "operator: scale")
    registry.beat()
    await a.follow(TENANT)
    assert registry.total() == 2
    _, _, stopped = await a.set_state(TENANT, "stopped", 0, "operator: stop")
    assert stopped.state == "stopped" and not sa.is_running(TENANT)
    await b.follow(TENANT)
    assert not sb.is_running(TENANT) and registry.total() == 0
    assert sb.changes[-1] == (1, 0, "operator: stop", "a")
    registry.beat()  # till b's heartbeat says it stopped, a would wait for room
    assert (await a.set_state(TENANT, "running", 1, "operator: start"))[:2] == (0, 1)
    await b.follow(TENANT)
    assert sa.is_running(TENANT) and sb.is_running(TENANT) and registry.total() == 1


async def test_a_draining_instance_gives_its_lease_up_and_follows_no_more(platform: Platform) -> None:
    registry, seen = Registry(), []
    a, _ = instance(platform, registry, "a", seen)
    b, _ = instance(platform, registry, "b", seen)
    assert await a.lead(TENANT)
    a._stopping.set()
    await a.release_all()
    assert not await a.lead(TENANT)
    assert await b.lead(TENANT)
    assert await a.follow(TENANT) is None


async def test_an_instance_that_leaves_gets_no_share(platform: Platform) -> None:
    registry, seen = Registry(), []
    a, _ = instance(platform, registry, "a", seen)
    b, _ = instance(platform, registry, "b", seen)
    await a.follow(TENANT)
    await b.follow(TENANT)
    assert await a.members(TENANT) == ["a", "b"]
    await b.leave(TENANT)
    assert await a.members(TENANT) == ["a"]
    _, _, decision = await a.set_total(TENANT, 2, "operator: scale")
    assert decision.shares == {"a": 2}


async def test_a_total_outside_the_edited_bounds_is_brought_within_them(platform: Platform) -> None:
    registry, seen = Registry(), []
    a, sa = instance(platform, registry, "a", seen)
    b, sb = instance(platform, registry, "b", seen)
    await a.follow(TENANT)
    await b.follow(TENANT)
    _, _, decision = await a.set_total(TENANT, 4, "operator: scale")
    registry.beat()
    await b.follow(TENANT)
    assert registry.total() == 4
    # max_consumers went down to 2: the leader publishes a total within it, the followers shrink
    decision = await a.reshare(TENANT, decision, 1, 2)
    assert decision.total == 2 and decision.shares == {"a": 1, "b": 1} and "bounds [1, 2]" in decision.reason
    assert await a.follow(TENANT) == (2, 1) and await b.follow(TENANT) == (2, 1)
    # again: the reason says why once, not every earlier move
    del registry.streams["b"]
    decision = await a.reshare(TENANT, decision, 1, 2)
    assert decision.reason.count("instances changed") == 1 and decision.reason.endswith("operator: scale")


async def test_a_stream_coming_up_starts_only_what_the_decision_leaves_room_for(platform: Platform) -> None:
    registry, seen = Registry(), []
    a, sa = instance(platform, registry, "a", seen)
    assert await a.admit(TENANT, 1) == 1  # nothing decided yet: as a lone daemon
    await a.follow(TENANT)
    await a.set_total(TENANT, MAX, "operator: scale")
    assert sa.consumer_count(TENANT) == MAX
    # b joins and its stream comes up (autostart): the decision gave it no share yet
    b, sb = instance(platform, registry, "b", seen)
    registry.beat()
    assert await b.admit(TENANT, 1) == 0
    # once shared (2 + 2) b may start its share only as a shrinks
    await b.follow(TENANT)
    await a.reshare(TENANT, (await a.decision(TENANT)) or pytest.fail("no decision"), 1, MAX)
    assert await b.admit(TENANT, 3) == 0
    await a.follow(TENANT)
    registry.beat()
    assert await b.admit(TENANT, 3) == 2


async def test_the_monitors_total_does_not_undo_a_stop(platform: Platform) -> None:
    """A stop published after the monitor looked: its scale-up leaves the decision stopped."""
    registry, seen = Registry(), []
    a, sa = instance(platform, registry, "a", seen)
    await a.set_state(TENANT, "running", 1, "tenant: start")
    await a.set_state(TENANT, "stopped", 0, "tenant: stop")
    before, after, decision = await a.set_total(TENANT, 3, "monitor scale-up: backlog", unless_stopped=True)
    assert (before, after, decision.state) == (0, 0, "stopped")
    assert (await a.decision(TENANT) or pytest.fail("no decision")).state == "stopped"
    assert sa.consumer_count(TENANT) == 0
    _, _, decision = await a.set_total(TENANT, 2, "operator: scale")  # an operator's total still starts it
    assert decision.state == "running"


async def test_instances_coming_up_together_stay_within_max_consumers(platform: Platform) -> None:
    """Before any decision: the first to come up reserves what it starts under max_consumers,
    the next only the room left (it used to start its minimum all the same)."""
    registry, seen = Registry(), []
    a, sa = instance(platform, registry, "a", seen)
    b, sb = instance(platform, registry, "b", seen)
    assert await a.admit(TENANT, MAX - 1) == MAX - 1
    sa.running.add(TENANT)
    sa.counts[TENANT] = MAX - 1
    assert await b.admit(TENANT, 2) == 1  # from a's entry in running, before its heartbeat says so
    registry.beat()
    c, _ = instance(platform, registry, "c", seen)
    assert await c.admit(TENANT, 1) == 0
    assert await a.decision(TENANT) is None  # reservations are no decision
    assert [e for e in seen if isinstance(e, MonitorShareWaiting)]


# ---- one daemon: the operator endpoints write the decision -----------------------------------

async def test_operators_set_the_decision_and_status_shows_it(
        start_daemon: Any, settings_factory: Any, http: Any, tenant_id: str,
        mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    from tests.conftest import ADMIN_TOKEN
    from tests.plugins.stream_support import ECHO_APPS, wait_stream_ready, write_profile

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    settings = settings_factory(extra_apps=ECHO_APPS)
    write_profile(settings, tenant_id, autostart=False, min_consumers=1, max_consumers=3)
    rd = await start_daemon(settings)
    me = rd.daemon.instance_id
    base = f"{rd.url}/tenants/{tenant_id}/stream"
    await wait_stream_ready(rd.daemon, tenant_id)
    async with http.post(base + "/start", headers=admin) as resp:
        started = await resp.json()
    assert started["total"] == 1 and started["share"] == 1 and started["decided_by"] == me, started
    async with http.put(base + "/consumers", headers=admin, json={"count": 2}) as resp:
        assert (await resp.json())["total"] == 2
    async with http.get(base, headers=admin) as resp:
        cluster = (await resp.json())["cluster"]
    assert cluster["instance"] == me and cluster["share"] == 2
    assert cluster["decision"]["total"] == 2 and cluster["decision"]["shares"] == {me: 2}
    assert cluster["decision"]["reason"] == "operator: scale" and cluster["decision"]["state"] == "running"
    async with http.post(base + "/stop", headers=admin) as resp:
        assert (await resp.json())["to"] == 0
    doc = await mongo["mysimbdp"]["scaling"].find_one({"_id": tenant_id})
    assert doc is not None and doc["state"] == "stopped" and doc["decided_by"] == me
    # a stopped decision holds: the monitor's evaluations do not start the stream again
    await rd.daemon.monitor.evaluate_tenant(tenant_id)
    assert not rd.daemon.stream.is_running(tenant_id)
