"""The embedded store's own process: NX-27017 with SQLite set up for bulk loads.

NX-27017 keeps each logical database in an SQLite file in WAL mode with ``synchronous =
NORMAL``, and writes each inserted document in a transaction of its own: every document
appends the pages it changed (the collection's table and each index) to the write-ahead log,
and every ``wal_autocheckpoint`` pages the log is copied into the database file and synced.
NX-27017 has no option for any of this; the platform sets, on every connection it opens
(:class:`StoreTuning`, measured by benchmark ``store``):

* **the page cache** (64 MiB, SQLite's default is 2 MiB), the counterpart of a real MongoDB's
  WiredTiger cache. Once an index outgrows the cache, inserts read its pages back from the
  OS and the store's CPU per document grows with the collection (by about 15 % over a 1 GB
  load with two secondary indexes, where 64 MiB kept it flat). SQLite allocates it as pages
  are used, so a small database costs no more;
* **the checkpoint interval and the page size** are options, left at SQLite's (a checkpoint
  every 1,000 pages of log, 4 KiB pages). Benchmark ``store`` measured the alternatives on
  flights.csv: a checkpoint every 10,000 pages wrote 9 % fewer bytes per document but no
  faster (0.98), and a power loss could take ten times as many acknowledged writes; 2 KiB
  pages wrote 25 % fewer bytes at the same speed, but a query by an index took a quarter
  longer. The store is bound by its CPU, not its disk, on the machines measured: neither is
  worth its cost.

An acknowledged write survives a crash of the store or the daemon, not a power loss:
``synchronous = NORMAL`` in WAL mode, as NX-27017 sets it; a power loss can take the writes
since the last checkpoint, at most ``wal_autocheckpoint`` pages of log (README, "What an
acknowledged record survives").

Run as ``python -m mysimbdp.store.embedded [--cache-mib N] [--page-size N]
[--wal-autocheckpoint N] <NX-27017 arguments>``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Any

from mysimbdp.compat import extend_neosqlite_connection_setup

__all__ = ["StoreTuning", "DEFAULT_TUNING", "configure_connections", "main"]


@dataclass(frozen=True)
class StoreTuning:
    """What the platform sets on each SQLite database of the embedded store."""

    cache_mib: int = 64  # page cache per database, in MiB
    page_size: int = 4096  # bytes per page of a database created from now on
    wal_autocheckpoint: int = 1000  # pages of write-ahead log between checkpoints
    journal_size_limit_mib: int = 8  # the log file is cut back to this after a checkpoint

    def args(self) -> list[str]:
        """The command-line options that give this tuning to :func:`main`."""
        return [arg for f in fields(self) for arg in (f"--{f.name.replace('_', '-')}", str(getattr(self, f.name)))]

    @classmethod
    def from_args(cls, args: list[str]) -> tuple[StoreTuning, list[str]]:
        """The tuning named in ``args`` (defaults for the others) and the remaining arguments."""
        values: dict[str, int] = {}
        rest = list(args)
        for f in fields(cls):
            option = f"--{f.name.replace('_', '-')}"
            if option in rest:
                i = rest.index(option)
                values[f.name] = int(rest[i + 1])
                del rest[i:i + 2]
        return cls(**values), rest


DEFAULT_TUNING = StoreTuning()


def _apply(tuning: StoreTuning, connection: Any) -> None:
    db = connection.db
    db.execute(f"PRAGMA cache_size = -{int(tuning.cache_mib) * 1024}")  # negative: KiB, not pages
    empty = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    if empty and db.execute("PRAGMA page_size").fetchone()[0] != tuning.page_size:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "memory":  # an in-memory database keeps its pages
            # a WAL database keeps its page size: leave WAL, rebuild the (empty) file, go back
            db.execute("PRAGMA journal_mode = DELETE")
            db.execute(f"PRAGMA page_size = {int(tuning.page_size)}")
            db.execute("VACUUM")
            db.execute(f"PRAGMA journal_mode = {mode}")
            if mode.lower() == "wal":
                db.execute("PRAGMA synchronous = NORMAL")  # as NX-27017 sets it for WAL
    db.execute(f"PRAGMA wal_autocheckpoint = {int(tuning.wal_autocheckpoint)}")
    db.execute(f"PRAGMA journal_size_limit = {int(tuning.journal_size_limit_mib) * 1024 * 1024}")


def configure_connections(tuning: StoreTuning) -> bool:
    """Make every database connection NX-27017 opens use ``tuning``.

    NX-27017 has no option for it: its connections' set-up is extended instead (the first
    tuning asked for stays). Returns False (and changes nothing) if the installed version
    sets up connections otherwise.
    """
    return extend_neosqlite_connection_setup(lambda connection: _apply(tuning, connection), "__mysimbdp_tuning__")


def main(argv: list[str] | None = None) -> None:
    """Set up the connections, then run NX-27017's own command line with the other arguments."""
    tuning, args = StoreTuning.from_args(list(sys.argv[1:] if argv is None else argv))
    configure_connections(tuning)
    from nx_27017.nx_27017 import main as serve

    sys.argv = [sys.argv[0], *args]
    serve()


if __name__ == "__main__":
    main()
