"""App calls outside a load, bounded in time: a dry-run's, a replay's.

``run_bounded(fn, *args, timeout_s=...)`` runs ``fn(leased, *args)`` in a thread of its own;
``fn`` appends every session it leases to ``leased``. Past ``timeout_s`` — whatever the app was
doing: starting its worker, answering for its target, wrangling — those sessions are killed
(a worker's call ends at once; a thread runner's call is abandoned) and ``TimeoutError`` is
raised, so no request waits on a stuck app for longer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mysimbdp.apps.runner.pool import Runners
from mysimbdp.apps.runner.sessions import AppSession

__all__ = ["run_bounded", "release_now"]


async def run_bounded(fn: Callable[..., Any], *args: Any, timeout_s: float, name: str = "app") -> Any:
    """``fn(leased, *args)`` in a thread, at most ``timeout_s``; then its sessions are killed."""
    executor = ThreadPoolExecutor(1, thread_name_prefix=name)
    leased: list[AppSession] = []
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(executor, fn, leased, *args),
                                      timeout_s)
    except TimeoutError:
        for session in leased:
            session.kill()
        raise
    finally:
        executor.shutdown(wait=False)


def release_now(runners: Runners, session: AppSession, healthy: bool) -> None:
    """In the thread that used it: a session that failed or was stopped mid-call is killed, then
    every session given back."""
    if not healthy:
        session.kill()
    runners.release(session)
