"""One peer's load of a CSV file into a collection, written as a user of that tool would.

Run by benchmark ``peers`` with the peers' own virtualenv (``bench/peers/venv.py``) as
``python -I load.py --loader pandas|pymongoarrow --uri URI --db DB --collection NAME --csv FILE
[--batch-size N]``. It imports only the standard library, pymongo, pandas, pyarrow and
pymongoarrow, never the platform. The interpreter's start, the imports and the connection to
the store come before the clock; the clock covers reading the file and writing it. Prints
one JSON line: ``rows`` written, ``seconds`` of the load, ``cpu_seconds`` of this process over
the same interval (``getrusage``), ``peak_rss_mb`` of this process (``ru_maxrss``, its whole
life) and the warnings raised while importing and while loading (counted, the first few kept).

- ``pandas``: ``pandas.read_csv``, missing values (NaN) turned into None (the store refuses a
  document holding NaN), ``to_dict("records")``, then ``insert_many(ordered=False)`` in
  batches of ``--batch-size`` documents.
- ``pymongoarrow``: ``pyarrow.csv.read_csv``, then ``pymongoarrow.api.write`` of the table
  (which cuts its own batches).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

Load = Callable[[Any, str, int], int]


def pandas_load() -> Load:
    """The pandas user's load (pandas imported now, before the clock)."""
    import pandas as pd

    def load(collection: Any, csv: str, batch_size: int) -> int:
        frame = pd.read_csv(csv)
        # NaN marks a missing value in pandas; the store refuses it ("Invalid JSON document")
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        for start in range(0, len(records), batch_size):
            collection.insert_many(records[start:start + batch_size], ordered=False)
        return len(records)

    return load


def pymongoarrow_load() -> Load:
    """The pymongoarrow user's load (pyarrow and pymongoarrow imported now, before the clock)."""
    import pyarrow.csv
    from pymongoarrow.api import write

    def load(collection: Any, csv: str, batch_size: int) -> int:
        table = pyarrow.csv.read_csv(csv)
        result = write(collection, table)
        return int(result.raw_result["insertedCount"])

    return load


LOADERS: dict[str, Callable[[], Load]] = {"pandas": pandas_load, "pymongoarrow": pymongoarrow_load}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--loader", choices=sorted(LOADERS), required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as at_import:
        warnings.simplefilter("default")
        import pymongo

        load = LOADERS[args.loader]()
    client: Any = pymongo.MongoClient(args.uri)
    try:
        client.admin.command("ping")
        collection = client[args.db][args.collection]
        with warnings.catch_warnings(record=True) as at_load:
            warnings.simplefilter("default")
            cpu0, t0 = _cpu(), time.perf_counter()
            rows = load(collection, args.csv, args.batch_size)
            seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    finally:
        client.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"loader": args.loader, "rows": rows, "seconds": round(seconds, 4),
                      "cpu_seconds": round(cpu, 4), "peak_rss_mb": round(peak_kib / 1024, 1),
                      "warnings": {"import": _summary(at_import), "load": _summary(at_load)}}), flush=True)
    return 0


def _summary(caught: list[warnings.WarningMessage]) -> dict[str, Any]:
    """How many warnings, and the first three of them."""
    return {"count": len(caught), "first": [f"{w.category.__name__}: {w.message}"[:300] for w in caught[:3]]}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
