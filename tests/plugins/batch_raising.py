"""Test batch app that raises on every record: every record goes to ``_rejects``."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    raise KeyError("no_such_field")
