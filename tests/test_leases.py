"""Named leases in ``mysimbdp.leases``: one holder at a time, taken over once it lapses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mysimbdp.cluster.leases import Leases
from mysimbdp.store.mongo import Store


@pytest.fixture
async def stores(mongo_uri: str, tmp_path: Path) -> AsyncIterator[list[Store]]:
    """Two clients of the store: two daemons."""
    pair = [Store(mongo_uri, tmp_path / "a"), Store(mongo_uri, tmp_path / "b")]
    for s in pair:
        await s.start()
    yield pair
    for s in pair:
        await s.stop()


async def test_one_holder_at_a_time_taken_over_when_it_lapses(stores: list[Store]) -> None:
    name = f"scale:{uuid.uuid4().hex}"
    a, b = Leases(stores[0], "a", 1.0), Leases(stores[1], "b", 1.0)
    held = await asyncio.gather(a.hold(name), b.hold(name))
    assert sorted(held) == [False, True]  # of two asking at once, exactly one
    first, second = (a, b) if held[0] else (b, a)
    assert await first.hold(name)  # renewed
    assert not await second.hold(name)
    assert await second.holder_of(name) == first.holder
    await asyncio.sleep(1.2)  # the holder stops renewing: the lease lapses
    assert await second.hold(name)
    assert not await first.hold(name)
    assert await first.holder_of(name) == second.holder


async def test_release_hands_over_at_once(stores: list[Store]) -> None:
    names = [f"scale:{uuid.uuid4().hex}" for _ in range(2)]
    a, b = Leases(stores[0], "a", 300), Leases(stores[1], "b", 300)
    for n in names:
        assert await a.hold(n)
    await a.release(names[0])
    assert await b.hold(names[0])
    assert not await b.hold(names[1])
    assert await a.release_all() >= 1
    assert await b.hold(names[1])
    assert await a.holder_of(names[1]) == "b"
