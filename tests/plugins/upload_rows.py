"""A test batch app for the upload tests: every CSV/JSON Lines record becomes one document."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, Target


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    return Target(collection="rows")


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    return {**record, "file": context.file}
