"""A batch app stuck in an endless loop: the daemon must still stop."""

from __future__ import annotations

import time
from typing import Any

from mysimbdp import hookimpl


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any]) -> dict[str, Any]:
    while True:
        time.sleep(0.05)
