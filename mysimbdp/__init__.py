"""mysimbdp: a multi-tenant big-data ingestion platform.

The plugin API for tenant apps, in one import: :data:`hookimpl` marks an app's
implementations of the hooks declared in :mod:`mysimbdp.apps.hookspecs`; :class:`Target` and
:class:`Index` say where its documents go; :class:`BatchContext` and :class:`MessageContext`
are what its wrangle hooks receive; :class:`Reject` turns down a single record. See
``docs/plugins.md``. (Importing this stays light: no pyarrow, no runner.)
"""

from __future__ import annotations

from mysimbdp.apps.contract import BatchContext, Index, MessageContext, Target
from mysimbdp.apps.hookspecs import hookimpl
from mysimbdp.errors import Reject

__all__ = ["__version__", "hookimpl", "Reject", "Target", "Index", "BatchContext", "MessageContext"]

__version__ = "0.1.0"
