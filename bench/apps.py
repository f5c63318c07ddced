"""Benchmark-only tenant apps, loaded into the daemon with ``MYSIMBDP_EXTRA_APPS``.

The daemon knows an app by the name it is loaded under, and a tenant uses only the hooks of
its own kind, so this one module serves as two apps:

``bench_slow`` (its stream hooks): a stream app whose wrangling costs ``SLOW_MS`` of waiting
per record (an app that calls out to something slow), so one consumer handles at most
``1000 / SLOW_MS`` messages a second: the load that makes the monitor scale consumers.

``bench_copy`` (its batch hooks): a batch app that returns each Arrow batch as it was read,
into ``flights`` with two indexes on columns of the file as read (:data:`COPY_TARGET`): the
platform's own cost of loading a CSV file, with no wrangling, beside the tools a user would
otherwise load it with (benchmark ``peers``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, Index, MessageContext, Target

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["SLOW_MS", "CAPACITY_PER_CONSUMER", "COPY_TARGET", "mysimbdp_stream_target", "mysimbdp_stream_wrangle",
           "mysimbdp_batch_target", "mysimbdp_batch_wrangle_table"]

SLOW_MS = 5.0
CAPACITY_PER_CONSUMER = 1000.0 / SLOW_MS  # messages per second one consumer can handle
#: The pass-through app's target: the flights app's two look-ups (by airport and time, by
#: flight and time) on the columns of the file as read (``time_hour``, where the flights app
#: indexes its own ``scheduled_departure``). The peers' collections get the same indexes.
COPY_TARGET = Target("flights", indexes=(
    Index([("origin", 1), ("time_hour", 1)]),
    Index([("carrier", 1), ("flight", 1), ("time_hour", 1)]),
))


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


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    """The flights app's collection and indexes (:data:`COPY_TARGET`)."""
    return COPY_TARGET


@hookimpl
def mysimbdp_batch_wrangle_table(table: pa.RecordBatch, context: BatchContext) -> pa.RecordBatch:
    """Every row as it was read: one document per CSV row, one field per column."""
    return table
