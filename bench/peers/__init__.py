"""The tools benchmark ``peers`` compares the platform with, kept apart from the platform.

:mod:`bench.peers.venv` builds their own virtualenv (pandas and pymongoarrow pin other
versions of pyarrow than the platform's); ``bench/peers/load.py`` is the script that virtualenv
runs, one load per process, and that imports nothing of the platform.
"""

from __future__ import annotations

__all__: list[str] = []
