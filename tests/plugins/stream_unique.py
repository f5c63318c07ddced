"""Test stream app: copies the record into ``codes``, which has a unique index on ``code``."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import Index, MessageContext, Target


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    return Target(collection="codes", indexes=(Index(keys=[("code", 1)], unique=True),))


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    return dict(record)
