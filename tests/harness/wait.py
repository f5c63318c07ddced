"""One way to wait: poll a condition until it holds, with a deadline and a message saying what failed;
and the documents the platform writes, counted until they are all there."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_until", "await_until", "wait_documents", "DaemonExited"]


class DaemonExited(RuntimeError):
    """The process waited on exited before the condition held."""


def _check_deadline(deadline: float, timeout: float, what: str, alive: Callable[[], bool] | None,
                    where: str) -> None:
    if alive is not None and not alive():
        raise DaemonExited(f"the process exited while waiting for {what}{where}")  # the daemon, or the store
    if time.monotonic() > deadline:
        raise TimeoutError(f"waited {timeout:.0f}s for {what}{where}")


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "the condition", interval: float = 0.2,
               alive: Callable[[], bool] | None = None, where: str = "") -> Any:
    """Call ``check`` until it returns something truthy, and return that.

    Raises :class:`TimeoutError` after ``timeout`` seconds, or :class:`DaemonExited` as soon as
    ``alive`` says the process that should make it true is gone; both messages name ``what``
    and ``where`` (e.g. "; see <log>").
    """
    deadline = time.monotonic() + timeout
    while not (value := check()):
        _check_deadline(deadline, timeout, what, alive, where)
        time.sleep(interval)
    return value


async def await_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "the condition",
                      interval: float = 0.2,
                      alive: Callable[[], bool] | None = None, where: str = "") -> Any:
    """:func:`wait_until` for the event loop; ``check`` may be a plain or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        _check_deadline(deadline, timeout, what, alive, where)
        await asyncio.sleep(interval)


async def wait_documents(collection: Any, expected: int, timeout: float, alive: Callable[[], bool] | None = None,
                         interval: float = 0.05) -> float:
    """Poll until ``collection`` holds ``expected`` documents; returns the wall-clock time seen."""
    async def enough() -> bool:
        return bool(await collection.estimated_document_count() >= expected)

    await await_until(enough, timeout, f"{expected} documents in {collection.full_name}", interval, alive)
    return time.time()
