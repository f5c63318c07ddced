"""Benchmarks of mysimbdp: the platform against the ceilings of the same servers, in one run.

Run ``python -m bench`` (``make bench``); results go to ``bench/results/<name>.json`` and
``python -m bench.report`` turns them into ``docs/benchmarks.md``. See ``docs/benchmarks.md``
for what each benchmark measures and how.
"""

from __future__ import annotations

__all__: list[str] = []
