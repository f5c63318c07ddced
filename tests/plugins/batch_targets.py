"""Test batch app whose target collection depends on the tenant: the id's last ``-`` part names
it (``-dash``: ``bad-name``, a name MongoDB accepts and the embedded store refuses; ``-rejects``:
``_rejects``); any other tenant writes to ``items``. Records are kept as they are."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, Target

TARGETS = {"dash": "bad-name", "rejects": "_rejects"}


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    return Target(TARGETS.get(tenant.rsplit("-", 1)[-1], "items"))


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any] | None:
    return dict(record)
