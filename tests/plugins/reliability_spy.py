"""Reliability suite app ``rel_spy``: reports what the platform hands an app.

Every argument the hooks receive is walked (attributes, mappings, sequences) and the type
names found are stored in the document as ``_seen``; the isolation test asserts that no
database client, database or collection object is among them.
"""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, MessageContext


def _types(value: Any, seen: set[str], depth: int = 0) -> None:
    kind = type(value)
    seen.add(f"{kind.__module__}.{kind.__qualname__}")
    if depth > 4:
        return
    if isinstance(value, dict):
        for item in value.values():
            _types(item, seen, depth + 1)
    elif isinstance(value, list | tuple | set):
        for item in value:
            _types(item, seen, depth + 1)
    elif hasattr(value, "__dict__") or hasattr(value, "__slots__"):
        names = list(getattr(value, "__dict__", {})) + list(getattr(value, "__slots__", ()))
        for name in names:
            _types(getattr(value, name, None), seen, depth + 1)


def _spy(record: dict[str, Any], context: Any) -> dict[str, Any]:
    seen: set[str] = set()
    _types(record, seen)
    _types(context, seen)
    return {**record, "_seen": sorted(seen)}


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    return _spy(record, context)


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    return _spy(record, message)
