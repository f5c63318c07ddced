"""Counters of one consumer: batch figures, the per-second commit summary, rates.

The ``stream.report`` window is :class:`mysimbdp.monitor.reports.ReportWindow`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchStats", "CommitSummary", "RateMeter"]

@dataclass
class BatchStats:
    """What one flushed batch did."""

    messages: int = 0
    documents: int = 0
    rejected: int = 0
    duplicates: int = 0
    bytes: int = 0
    seconds: float = 0.0
    ingest_ms: list[float] = field(default_factory=list)  # message timestamp -> committed write


class CommitSummary:
    """Batches committed since the last ``stream.batch.committed`` event (one per second at most)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Start a new summary."""
        self.batches = self.messages = self.documents = self.rejected = 0
        self.duplicates = self.bytes = 0
        self.seconds = 0.0
        self.oldest_latency_ms: float | None = None

    def add(self, batch: BatchStats) -> None:
        """Count one committed batch."""
        self.batches += 1
        self.messages += batch.messages
        self.documents += batch.documents
        self.rejected += batch.rejected
        self.duplicates += batch.duplicates
        self.bytes += batch.bytes
        self.seconds += batch.seconds
        if batch.ingest_ms:
            worst = max(batch.ingest_ms)
            if self.oldest_latency_ms is None or worst > self.oldest_latency_ms:
                self.oldest_latency_ms = worst

    def take(self) -> dict[str, Any] | None:
        """The event fields, or None when nothing was committed; clears the summary."""
        if not self.batches:
            return None
        fields = {"batches": self.batches, "messages": self.messages, "documents": self.documents,
                  "rejected": self.rejected, "duplicates": self.duplicates, "bytes": self.bytes,
                  "seconds": round(self.seconds, 4),
                  "oldest_latency_ms": None if self.oldest_latency_ms is None else round(self.oldest_latency_ms, 1)}
        self.clear()
        return fields


class RateMeter:
    """Events per second over the last ``span`` seconds (one-second buckets)."""

    def __init__(self, span: int = 10) -> None:
        self.span = span
        self._buckets: deque[tuple[int, int]] = deque()

    def add(self, count: int, now: float | None = None) -> None:
        """Count ``count`` events now."""
        second = int(now if now is not None else time.monotonic())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + count)
        else:
            self._buckets.append((second, count))
        self._trim(second)

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.span:
            self._buckets.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events per second, averaged over the span."""
        second = int(now if now is not None else time.monotonic())
        self._trim(second)
        return sum(c for _, c in self._buckets) / self.span
