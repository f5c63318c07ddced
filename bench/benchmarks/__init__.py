"""The eight benchmarks, in the order ``python -m bench`` runs them.

Each module has ``NAME``, ``TITLE`` and ``async run(session, result)``, which fills the
:class:`bench.results.Result` (metrics with their targets, raw runs, notes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import ModuleType

from bench.benchmarks import batch, cpu, fairness, insert_one, memory, scaling, stream, upload
from bench.results import Result
from bench.session import Session

__all__ = ["BENCHMARKS", "Runner"]

Runner = Callable[[Session, Result], Awaitable[None]]

BENCHMARKS: dict[str, ModuleType] = {m.NAME: m for m in (batch, cpu, memory, stream, fairness, scaling, insert_one,
                                                   upload)}
