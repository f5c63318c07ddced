"""Reliability suite app ``rel_hang``: blocks on every record (a hung tenant app).

It sleeps in the calling thread, as a real app stuck in I/O or a loop would, for
``HANG_S`` seconds: long past any per-record or per-batch timeout the suite configures.
"""

from __future__ import annotations

import time
from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, MessageContext

HANG_S = 120.0


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    time.sleep(HANG_S)
    return dict(record)


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    time.sleep(HANG_S)
    return dict(record)
