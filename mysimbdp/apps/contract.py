"""The public types of the plugin API: what the platform hands tenant apps and takes back.

:class:`Target` and :class:`Index` (what a target hook returns), :class:`BatchContext` and
:class:`MessageContext` (what the wrangle hooks receive). Tenant code imports them from
:mod:`mysimbdp` (or :mod:`mysimbdp.apps`); see ``docs/plugins.md``. How the platform calls
an app's hooks is internal: :mod:`mysimbdp.apps.app`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Target", "Index", "BatchContext", "MessageContext"]


@dataclass(frozen=True)
class Index:
    """An index to create on the target collection: ``keys`` as ``[(field, 1 | -1), ...]``."""

    keys: Sequence[tuple[str, int]]
    unique: bool = False
    name: str | None = None


@dataclass(frozen=True)
class Target:
    """Where an app's documents are written inside the tenant's own database."""

    collection: str = "records"
    indexes: Sequence[Index] = ()


@dataclass(frozen=True)
class BatchContext:
    """The file a batch app is wrangling records of."""

    tenant: str
    app: str
    file: str
    sha256: str
    format: str


@dataclass
class MessageContext:
    """The message a stream app is wrangling a record of."""

    tenant: str
    app: str
    routing_key: str
    message_id: str
    timestamp: datetime | None
    index: int = 0
    headers: dict[str, Any] = field(default_factory=dict)
