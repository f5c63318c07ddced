"""The thirteen benchmarks, in the order ``python -m bench`` runs them.

Each module has ``NAME``, ``TITLE`` and ``async run(session, result)``, which fills the
:class:`bench.results.Result` (metrics with their targets, raw runs, notes).
"""

from __future__ import annotations

from types import ModuleType

from bench.benchmarks import (
    batch,
    console,
    cpu,
    drain,
    fairness,
    insert_one,
    memory,
    peers,
    scaleout,
    scaling,
    store,
    stream,
    upload,
)

__all__ = ["BENCHMARKS"]

BENCHMARKS: dict[str, ModuleType] = {m.NAME: m for m in (batch, cpu, memory, stream, fairness, scaling, insert_one,
                                                   upload, scaleout, console, drain, peers, store)}
