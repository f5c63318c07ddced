"""Batch ingestion: staging watcher, constraints, streaming readers, loader and manager."""

from __future__ import annotations

__all__: list[str] = []
