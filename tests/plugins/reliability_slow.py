"""Reliability suite app ``rel_slow``: correct but slow, ``DELAY_S`` seconds per record."""

from __future__ import annotations

import time
from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, MessageContext

DELAY_S = 0.05


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    time.sleep(DELAY_S)
    return dict(record)


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    time.sleep(DELAY_S)
    return dict(record)
