"""Benchmark-only tenant apps, loaded into the daemon with ``MYSIMBDP_EXTRA_APPS``.

``bench_slow``: a stream app whose wrangling costs ``SLOW_MS`` of waiting per record (an
app that calls out to something slow), so one consumer handles at most ``1000 / SLOW_MS``
messages a second: the load that makes the monitor scale consumers.
"""

from __future__ import annotations

import time
from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import MessageContext, Target

__all__ = ["SLOW_MS", "CAPACITY_PER_CONSUMER", "mysimbdp_stream_target", "mysimbdp_stream_wrangle"]

SLOW_MS = 5.0
CAPACITY_PER_CONSUMER = 1000.0 / SLOW_MS  # messages per second one consumer can handle


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    """Readings go to ``readings``, like the weather app's."""
    return Target("readings")


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    """Wait ``SLOW_MS``, then keep the record with its publish time."""
    time.sleep(SLOW_MS / 1000.0)
    return {"station": record.get("origin"), "time_hour": record.get("time_hour"),
            "received_at": message.timestamp}
