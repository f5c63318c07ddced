"""The platform's default plugin: what a hook answers when the app does not say.

Registered in every app's plugin manager like any plugin, with ``trylast=True``, so an app's
own implementation is asked first and these answer only when it returns None (or there is
none). This is the one place the defaults live; hooks without a default
(the wrangle hooks, ``mysimbdp_batch_check``, ``mysimbdp_stream_quality``) are absent here on
purpose: their None has a meaning of its own (skip the record, valid, no score).
"""

from __future__ import annotations

from typing import Any

from mysimbdp.apps.contract import BatchContext, Target
from mysimbdp.apps.hookspecs import hookimpl

__all__ = ["NAME", "mysimbdp_batch_target", "mysimbdp_stream_target", "mysimbdp_batch_columns"]

#: The name the default plugin is registered under in each app's plugin manager.
NAME = "mysimbdp.defaults"


@hookimpl(trylast=True)
def mysimbdp_batch_target(tenant: str) -> Target:
    """Collection ``records``, no extra index."""
    return Target()


@hookimpl(trylast=True)
def mysimbdp_stream_target(tenant: str) -> Target:
    """Collection ``records``, no extra index."""
    return Target()


@hookimpl(trylast=True)
def mysimbdp_batch_columns(context: BatchContext) -> dict[str, Any]:
    """No declared column types: every column keeps the type inferred from the first block."""
    return {}
