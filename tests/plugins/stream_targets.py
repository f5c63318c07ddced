"""Test stream app whose target collection depends on the tenant: the id's last ``-`` part
names it (``-rejects``: ``_rejects``, ``-system``: ``system.x``, ``-dash``: ``bad-name``, a
name MongoDB accepts and the embedded store refuses); any other tenant writes to ``events``."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import MessageContext, Target

TARGETS = {"rejects": "_rejects", "system": "system.x", "dash": "bad-name"}


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    return Target(collection=TARGETS.get(tenant.rsplit("-", 1)[-1], "events"))


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any] | None:
    return dict(record)
