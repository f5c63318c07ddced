"""Test stream app ``monitor_slow``: correct but deliberately slow (``DELAY_S`` per record).

One consumer handles about ``1 / DELAY_S`` records per second, so a flood makes the tenant
fall behind until the monitor adds consumers (each consumer runs the app in its own thread).
"""

from __future__ import annotations

import time
from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import MessageContext, Target

DELAY_S = 0.02


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    return Target(collection="readings")


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    time.sleep(DELAY_S)
    return {"n": int(record["n"]), "value_x2": float(record["value"]) * 2}
