"""Test stream app: copies the record, adds ``seen_by``; rejects ``{"bad": true}``, fails on ``{"boom": true}``.

Quality is the record's ``q`` field when present; a record with ``{"hang": s}`` makes the
app sleep ``s`` seconds (to exceed ``app_timeout_s``); ``{"skip": true}`` is skipped (None);
``{"headers": true}`` keeps the message's headers and timestamp in the document.
"""

from __future__ import annotations

import time
from typing import Any

from mysimbdp import Reject, hookimpl
from mysimbdp.apps import MessageContext, Target


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    return Target(collection="events")


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any] | None:
    if record.get("bad"):
        raise Reject(f"record {message.index} is marked bad")
    if record.get("boom"):
        raise RuntimeError("boom")
    if record.get("hang"):
        time.sleep(float(record["hang"]))
    if record.get("skip"):
        return None
    if record.get("headers"):
        return {**record, "message_headers": message.headers, "message_timestamp": message.timestamp}
    return {**record, "seen_by": "stream_echo", "routing_key": message.routing_key}


@hookimpl
def mysimbdp_stream_quality(document: dict[str, Any], message: MessageContext) -> float | None:
    q = document.get("q")
    return float(q) if q is not None else None
