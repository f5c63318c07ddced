"""Reliability suite app ``rel_echo``: passes records through, keyed, for counting.

Batch and stream: the document keeps the record's ``key`` (what the checker counts) and
records where it came from. A record whose key starts with ``reject`` is turned down with
:class:`mysimbdp.Reject`, so the suite also counts records that end in ``_rejects``.
"""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, MessageContext
from mysimbdp.errors import Reject


def _check(record: dict[str, Any]) -> None:
    if str(record.get("key", "")).startswith("reject"):
        raise Reject(f"key {record.get('key')!r} is marked for rejection")


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    _check(record)
    return {**record, "file": context.file}


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    _check(record)
    return {**record, "message_id": message.message_id, "index": message.index}
