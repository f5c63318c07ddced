"""A plugin of test app ``layered`` (listed in its ``mysimbdp_plugins``): ordered by tryfirst/trylast.

Registered after the app's module, so pluggy would call these first; ``trylast`` on the stream
wrangle makes it the fallback instead.
"""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl


@hookimpl(tryfirst=True)
def mysimbdp_batch_wrangle(record: dict[str, Any]) -> dict[str, Any] | None:
    return {"by": "tryfirst"} if record.get("first") else None


@hookimpl(trylast=True)
def mysimbdp_stream_wrangle(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "by": "trylast"}
