"""What the monitor needs of the rest of the daemon, as protocols: it is handed these, never the
daemon, so its dependencies are the ones written here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase

from mysimbdp.tenants import TenantDirectory

__all__ = ["StreamControl", "HealthSource", "PlatformStore", "TenantDirectory", "LeaseHolder", "InstanceDirectory"]

HealthSource = Callable[[], dict[str, Any]]  # the daemon's health report (``/health``)


class PlatformStore(Protocol):
    """Where the monitor keeps the reports (:class:`mysimbdp.store.mongo.Store`)."""

    @property
    def platform_db(self) -> AsyncDatabase[dict[str, Any]]:
        """The platform's database (valid once the store started)."""
        ...


class StreamControl(Protocol):
    """The part of the stream manager the monitor and the metrics use."""

    def consumer_count(self, tenant: str) -> int:
        """Consumers running for ``tenant`` now."""
        ...

    async def queue_depth(self, tenant: str) -> int | None:
        """Messages ready in the tenant's queue; None if unknown."""
        ...

    def health(self) -> dict[str, object]:
        """Includes ``tenants``: per tenant its ``state`` (``running``, ``stopped``, ``failed``)."""
        ...

    def is_running(self, tenant: str) -> bool:
        """Whether the tenant's stream runs here (started, even with 0 consumers)."""
        ...

    def bounds(self, tenant: str) -> tuple[int, int]:
        """The tenant's ``(min_consumers, max_consumers)``."""
        ...

    async def scale(self, tenant: str, count: int, reason: str, *, decided_by: str | None = None,
                    share: bool = False) -> tuple[int, int]:
        """Run ``count`` consumers for ``tenant`` (with ``share``: 0 to ``max_consumers``); ``(from, to)``."""
        ...

    async def start_tenant(self, tenant: str, reason: str, *, count: int | None = None,
                           decided_by: str | None = None) -> tuple[int, int]:
        """Start the tenant's stream with ``count`` consumers; ``(from, to)``."""
        ...

    async def stop_tenant(self, tenant: str, reason: str, *, decided_by: str | None = None) -> tuple[int, int]:
        """Stop the tenant's consumers; ``(from, 0)``."""
        ...

    def admit_with(self, admission: Callable[[str, int], Awaitable[int]]) -> None:
        """Bound the consumers a tenant starts with as its stream comes up here."""
        ...


class LeaseHolder(Protocol):
    """Named leases held by this instance (:class:`mysimbdp.cluster.leases.Leases`)."""

    async def hold(self, name: str) -> bool:
        """Take or renew ``name``; True if this instance holds it now."""
        ...

    async def release(self, name: str) -> None:
        """Give ``name`` up at once (if held)."""
        ...

    async def holder_of(self, name: str) -> str | None:
        """Who holds ``name`` now (None when nobody does)."""
        ...


class InstanceDirectory(Protocol):
    """The instances sharing the store (:class:`mysimbdp.cluster.instances.InstanceRegistry`)."""

    @property
    def id(self) -> str:
        """This instance's id."""
        ...

    async def live(self) -> list[dict[str, Any]]:
        """The live instances' heartbeat documents (``consumers``: ``{tenant: n}``), by id."""
        ...

    async def live_ids(self) -> list[str]:
        """The live instances' ids, sorted, this one among them."""
        ...
