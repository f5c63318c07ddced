"""Tenant apps: the plugin contract (:mod:`.hookspecs`, :mod:`.contract`), their discovery
(:mod:`.plugins`) and the runner that calls them in confined workers (:mod:`.runner`).

Tenant code imports the public types from here or from :mod:`mysimbdp`.
"""

from __future__ import annotations

from mysimbdp.apps.contract import (
    BATCH_HOOKS,
    STREAM_HOOKS,
    App,
    BatchContext,
    Index,
    MessageContext,
    Target,
)

__all__ = ["Target", "Index", "BatchContext", "MessageContext", "App", "BATCH_HOOKS", "STREAM_HOOKS"]
