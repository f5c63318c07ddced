"""Test app with a bug its tenant fixes: until :data:`FIXED` is set, a record whose ``v`` is
``"bad"`` is rejected (files and stream alike). Runs in threads (``runner = "thread"``), so a
test can fix it in place, as a tenant would install the fixed version."""

from __future__ import annotations

from typing import Any

from mysimbdp import Reject, hookimpl
from mysimbdp.apps import BatchContext, MessageContext, Target

FIXED = {"on": False}


def _wrangle(record: dict[str, Any]) -> dict[str, Any] | None:
    if record.get("v") == "bad" and not FIXED["on"]:
        raise Reject("v is 'bad' (the app's bug)")
    if record.get("v") == "skip":
        return None
    return {**record, "fixed": FIXED["on"]}


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    return Target(collection="items")


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any] | None:
    return _wrangle(record)


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    return Target(collection="events")


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any] | None:
    return _wrangle(record)
