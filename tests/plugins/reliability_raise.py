"""Reliability suite app ``rel_raise``: fails on every record with an unexpected error."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, MessageContext


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    raise RuntimeError("rel_raise fails on every record")


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    raise RuntimeError("rel_raise fails on every record")
