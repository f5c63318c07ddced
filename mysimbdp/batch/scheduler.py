"""Fair scheduling of file loads: a global limit, per-tenant and per-route limits.

A waiting file gets a slot when the platform-wide limit, its tenant's limit and its route's
limit all allow it. When several files wait, the slot goes to the tenant running the fewest
files (then first come, first served), and no tenant may hold every global slot: so one
tenant's huge files never hold back another tenant's small file for longer than it takes
one slot to free up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

__all__ = ["FairScheduler"]


@dataclass
class _Waiter:
    tenant: str
    tenant_limit: int
    route: Hashable
    route_limit: int
    seq: int
    future: asyncio.Future[None] = field(repr=False)


class FairScheduler:
    """Grants load slots; use ``async with scheduler.slot(...)`` around a file's load."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.total = 0
        self.running: Counter[str] = Counter()
        self.route_running: Counter[Hashable] = Counter()
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def tenant_cap(self) -> int:
        """The most global slots one tenant may hold: all but one when there are several."""
        return max(1, self.slots - 1)

    @property
    def waiting(self) -> int:
        """Files waiting for a slot."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, tenant: str, tenant_limit: int, route: Hashable, route_limit: int) -> AsyncIterator[None]:
        """Wait for a slot for one file of ``tenant`` on ``route``; hold it inside the block."""
        waiter = _Waiter(tenant, tenant_limit, route, route_limit, next(self._seq),
                         asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._dispatch()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                self._release(waiter)
            raise
        try:
            yield
        finally:
            self._release(waiter)

    def _eligible(self, w: _Waiter) -> bool:
        return (self.running[w.tenant] < min(w.tenant_limit, self.tenant_cap)
                and self.route_running[w.route] < w.route_limit)

    def _dispatch(self) -> None:
        while self.total < self.slots:
            eligible = [w for w in self._waiters if self._eligible(w) and not w.future.cancelled()]
            if not eligible:
                return
            pick = min(eligible, key=lambda w: (self.running[w.tenant], w.seq))
            self._waiters.remove(pick)
            self.total += 1
            self.running[pick.tenant] += 1
            self.route_running[pick.route] += 1
            pick.future.set_result(None)

    def _release(self, w: _Waiter) -> None:
        self.total -= 1
        self.running[w.tenant] -= 1
        self.route_running[w.route] -= 1
        self._dispatch()
