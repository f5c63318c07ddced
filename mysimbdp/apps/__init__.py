"""Tenant apps: the plugin contract (:mod:`.hookspecs`, :mod:`.contract`), the platform's
defaults (:mod:`.defaults`), one app's plugin manager (:mod:`.app`), their discovery
(:mod:`.plugins`) and the runner that calls them in confined workers (:mod:`.runner`).

Tenant code imports the public types from :mod:`mysimbdp` (or from here, as before).
"""

from __future__ import annotations

from mysimbdp.apps.app import BATCH_HOOKS, STREAM_HOOKS, App
from mysimbdp.apps.contract import BatchContext, Index, MessageContext, Target

__all__ = ["Target", "Index", "BatchContext", "MessageContext", "App", "BATCH_HOOKS", "STREAM_HOOKS"]
