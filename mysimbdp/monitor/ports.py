"""What the monitor needs of the rest of the daemon, as protocols: it is handed these, never the
daemon, so its dependencies are the ones written here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase

from mysimbdp.tenants import TenantDirectory

__all__ = ["StreamControl", "HealthSource", "PlatformStore", "TenantDirectory"]

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

    async def scale(self, tenant: str, count: int, reason: str) -> tuple[int, int]:
        """Run ``count`` consumers for ``tenant``; ``(from, to)``."""
        ...
