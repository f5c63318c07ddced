"""Fair scheduling: global, per-tenant and per-route limits; the least-busy tenant goes first."""

from __future__ import annotations

import asyncio

from mysimbdp.batch.scheduler import FairScheduler


async def _hold(s: FairScheduler, tenant: str, limit: int, route: str, route_limit: int,
                started: list[str], release: asyncio.Event, label: str) -> None:
    async with s.slot(tenant, limit, (tenant, route), route_limit):
        started.append(label)
        await release.wait()


async def test_one_tenant_never_takes_every_slot_and_waiters_are_served_fairly() -> None:
    s = FairScheduler(3)
    release = asyncio.Event()
    started: list[str] = []
    tasks = [asyncio.create_task(_hold(s, "big", 10, "r", 10, started, release, f"big{i}")) for i in range(5)]
    await asyncio.sleep(0)
    assert started == ["big0", "big1"], "a tenant holds at most slots - 1"
    tasks.append(asyncio.create_task(_hold(s, "small", 1, "r", 1, started, release, "small0")))
    await asyncio.sleep(0)
    assert started[-1] == "small0" and s.total == 3
    release.set()
    await asyncio.gather(*tasks)
    assert s.total == 0 and s.waiting == 0 and sorted(started) == sorted(["big0", "big1", "big2", "big3", "big4", "small0"])


async def test_tenant_and_route_limits() -> None:
    s = FairScheduler(8)
    release = asyncio.Event()
    started: list[str] = []
    tasks = [asyncio.create_task(_hold(s, "t", 3, "heavy", 1, started, release, f"h{i}")) for i in range(2)]
    tasks += [asyncio.create_task(_hold(s, "t", 3, "light", 5, started, release, f"l{i}")) for i in range(4)]
    await asyncio.sleep(0)
    assert started == ["h0", "l0", "l1"], "route heavy runs one at a time, the tenant three"
    release.set()
    await asyncio.gather(*tasks)
    assert len(started) == 6


async def test_cancelled_waiter_leaves_no_trace() -> None:
    s = FairScheduler(1)
    release = asyncio.Event()
    started: list[str] = []
    holder = asyncio.create_task(_hold(s, "a", 1, "r", 1, started, release, "a"))
    waiter = asyncio.create_task(_hold(s, "b", 1, "r", 1, started, release, "b"))
    await asyncio.sleep(0)
    assert s.waiting == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert s.waiting == 0
    release.set()
    await holder
    assert s.total == 0 and started == ["a"]
