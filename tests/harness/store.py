"""Reading back what the platform wrote: documents counted until they are all there."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.harness.wait import await_until

__all__ = ["wait_documents"]


async def wait_documents(collection: Any, expected: int, timeout: float, alive: Callable[[], bool] | None = None,
                         interval: float = 0.05) -> float:
    """Poll until ``collection`` holds ``expected`` documents; returns the wall-clock time seen."""
    async def enough() -> bool:
        return bool(await collection.estimated_document_count() >= expected)

    await await_until(enough, timeout, f"{expected} documents in {collection.full_name}", interval, alive)
    return time.time()
