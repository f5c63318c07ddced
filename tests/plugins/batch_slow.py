"""Test batch app that takes about 1 ms per record, so a test can kill the daemon mid-file."""

from __future__ import annotations

import time
from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    time.sleep(0.001)
    return {"n": int(record["n"])}
