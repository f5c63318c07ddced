"""Test stream app for routing-key types: upper-cases ``v`` into collection ``shouting``."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import MessageContext, Target


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    return Target(collection="shouting")


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    return {"v": str(record.get("v", "")).upper()}
