"""The embedded store's own process: NX-27017 with a page cache sized for bulk loads.

NX-27017 keeps each logical database in an SQLite file and opens it with SQLite's default
page cache of 2 MiB. Bulk loads update the collection's table and every index on each
insert; once an index outgrows that cache, inserts read its pages back from the OS and the
store's CPU per document grows with the collection (by about 15 % over a 1 GB load with two
secondary indexes, where 64 MiB kept it flat). A larger cache, the counterpart of a real
MongoDB's WiredTiger cache, keeps an index's working set in memory; SQLite allocates it as
pages are used, so a small database costs no more than before.

Run as ``python -m mysimbdp.store.embedded [--cache-mib N] <NX-27017 arguments>``.
"""

from __future__ import annotations

import sys
from typing import Any

from mysimbdp.compat import extend_neosqlite_connection_setup

__all__ = ["DEFAULT_CACHE_MIB", "configure_page_cache", "main"]

#: SQLite page cache of each of the store's databases, in MiB.
DEFAULT_CACHE_MIB = 64


def configure_page_cache(mib: int) -> bool:
    """Make every database connection NX-27017 opens use a page cache of ``mib`` MiB.

    NX-27017 has no option for it: its connections' set-up is extended instead (the first
    size asked for stays). Returns False (and changes nothing) if the installed version sets
    up connections otherwise.
    """
    def cache(connection: Any) -> None:
        connection.db.execute(f"PRAGMA cache_size = -{int(mib) * 1024}")  # negative: KiB, not pages

    return extend_neosqlite_connection_setup(cache, "__mysimbdp_cache__")


def main(argv: list[str] | None = None) -> None:
    """Configure the page cache, then run NX-27017's own command line with the other arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    mib = DEFAULT_CACHE_MIB
    if "--cache-mib" in args:
        i = args.index("--cache-mib")
        mib = int(args[i + 1])
        del args[i:i + 2]
    configure_page_cache(mib)
    from nx_27017.nx_27017 import main as serve

    sys.argv = [sys.argv[0], *args]
    serve()


if __name__ == "__main__":
    main()
