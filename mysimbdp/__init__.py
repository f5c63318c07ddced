"""mysimbdp: a multi-tenant big-data ingestion platform.

Tenant apps import :data:`hookimpl` to implement the hooks declared in
:mod:`mysimbdp.apps.hookspecs`, and :class:`Reject` to turn down a single record.
"""

from __future__ import annotations

import pluggy

from mysimbdp.errors import Reject

__all__ = ["__version__", "hookimpl", "Reject"]

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("mysimbdp")
