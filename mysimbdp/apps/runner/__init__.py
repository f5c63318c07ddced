"""Where tenant apps run: confined worker processes (default) or the daemon's threads.

See ``docs/architecture.md`` ("What an app can reach") for what each runner allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from mysimbdp.apps.runner.calls import AppError, RecordOut
from mysimbdp.apps.runner.pool import MAX_STUCK, Mode, Runners
from mysimbdp.apps.runner.sessions import AppSession, ProcessSession, ThreadSession, WorkerFailed

__all__ = ["AppRef", "AppError", "AppSession", "MAX_STUCK", "Mode", "ProcessSession", "RecordOut", "Runners",
           "ThreadSession", "WorkerFailed"]


@dataclass(frozen=True)
class AppRef:
    """A tenant app by name, and where it runs (the tenant profile's ``runner``)."""

    name: str
    mode: Mode = "process"
