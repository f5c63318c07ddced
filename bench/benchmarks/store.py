"""(13) What the embedded store writes: the platform's tuning of NX-27017 against two it could choose.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/store.md``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pyarrow import csv as pa_csv
from pymongo import AsyncMongoClient

from bench.apps import COPY_TARGET
from bench.benchmarks.batch import flights_data
from bench.cli import Session
from bench.data import DataFile
from bench.env import process_io
from bench.loads import BenchError
from bench.results import Result, metric_from_runs
from mysimbdp.batch.loader import id_prefix
from mysimbdp.config import BatchSettings
from mysimbdp.store.embedded import DEFAULT_TUNING, StoreTuning
from mysimbdp.store.mongo import EmbeddedMongo
from tests.harness.daemon import cpu_seconds
from tests.harness.stats import median

__all__ = ["NAME", "TITLE", "run", "TUNINGS", "documents"]

NAME = "store"
TITLE = "What the embedded store writes"
#: The platform's tuning (SQLite's page size and checkpoint interval, as NX-27017 ships them,
#: and a 64 MiB page cache), and the two changes the store lets it make to what is written:
#: a longer checkpoint interval and smaller pages.
TUNINGS: dict[str, StoreTuning] = {
    "platform": DEFAULT_TUNING,
    "checkpoint10k": replace(DEFAULT_TUNING, wal_autocheckpoint=10_000),
    "pages2k": replace(DEFAULT_TUNING, page_size=2048),
}
CONFIGS = tuple(TUNINGS)
DATABASE = "tenant_bench_store"  # one tenant's database, as the platform names it
QUERY = {"origin": "JFK"}  # by the first index (origin, time_hour)
WRITE_BATCH_SIZE = BatchSettings().write_batch_size


def documents(data: DataFile) -> list[RawBSONDocument]:
    """The file's rows as the platform writes them (one field per column as Arrow read it, and
    the ``_id`` ``<file hash prefix><record number>``), already encoded: the clock times the
    store, not the client's encoding."""
    digest = hashlib.sha256(data.path.read_bytes()).hexdigest()
    prefix, number, out = id_prefix(digest), 0, []
    for batch in pa_csv.read_csv(str(data.path)).to_batches():
        for row in batch.to_pylist():
            number += 1
            out.append(RawBSONDocument(bson.encode({"_id": f"{prefix}{number}", **row})))
    return out


def _page_size(path: Path) -> int | None:
    """The page size in an SQLite database file's header (bytes 16-17, big-endian; 1 is 65536)."""
    try:
        with path.open("rb") as f:
            header = f.read(18)
    except OSError:
        return None
    if len(header) < 18:
        return None
    value = int.from_bytes(header[16:18], "big")
    return 65536 if value == 1 else value


async def _count(cursor: Any) -> tuple[int, float]:
    """The documents ``cursor`` returns, iterated to the end, and the seconds it took."""
    n, t0 = 0, time.perf_counter()
    async for _ in cursor:
        n += 1
    return n, round(time.perf_counter() - t0, 4)


async def _load(session: Session, config: str, docs: list[RawBSONDocument]) -> dict[str, Any]:
    """A fresh store with ``config``'s tuning, the documents written into it, two reads; then
    the store stopped and its data dir removed."""
    tuning, rows = TUNINGS[config], len(docs)
    root = session.env.tmp(f"store-{config}")
    store = EmbeddedMongo(root / "data", root / "store.log", tuning=tuning)
    client: AsyncMongoClient[dict[str, Any]] | None = None
    await store.start()
    try:
        assert store.pid is not None
        pid = store.pid
        client = AsyncMongoClient(store.uri, tz_aware=True)
        collection = client[DATABASE][COPY_TARGET.collection]
        for index in COPY_TARGET.indexes:  # as the platform creates them (mysimbdp.store.writes)
            named: dict[str, Any] = {"name": index.name} if index.name else {}
            await collection.create_index(list(index.keys), unique=index.unique, **named)
        batches = [docs[start:start + WRITE_BATCH_SIZE] for start in range(0, rows, WRITE_BATCH_SIZE)]
        io0, cpu0, t0 = process_io(pid), cpu_seconds(pid), time.perf_counter()
        for batch in batches:
            await collection.insert_many(batch, ordered=False)
        seconds = time.perf_counter() - t0
        cpu1, io1 = cpu_seconds(pid), process_io(pid)
        io = {key: io1[key] - io0[key] for key in io0}
        files = {suffix: root / "data" / f"{DATABASE}.db{suffix}" for suffix in ("", "-wal")}
        disk = {suffix or "db": path.stat().st_size if path.exists() else 0 for suffix, path in files.items()}
        page_size = _page_size(files[""])
        count = await collection.count_documents({})
        if count != rows:
            raise BenchError(f"the {config} store holds {count} documents of the {rows} written")
        matched, query_s = await _count(collection.find(QUERY))
        scanned, scan_s = await _count(collection.find({}))
        if scanned != rows:
            raise BenchError(f"the {config} store's full scan returned {scanned} documents of {rows}")
    finally:
        if client is not None:
            await client.close()
        await store.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"config": config, "documents": rows, "seconds": round(seconds, 4),
            "docs_per_s": round(rows / seconds, 1), "store_cpu_seconds": round(cpu1 - cpu0, 4),
            "store_cpu_us_per_doc": round((cpu1 - cpu0) / rows * 1e6, 2), "io": io,
            "write_bytes_per_doc": round(io["write_bytes"] / rows, 1), "wchar_per_doc": round(io["wchar"] / rows, 1),
            "disk_bytes": disk, "disk_bytes_per_doc": round(sum(disk.values()) / rows, 1),
            "page_size_on_disk": page_size, "query_documents": matched, "query_s": query_s,
            "scan_s": scan_s}


async def run(session: Session, result: Result) -> None:
    """Both configurations in every repetition, the order alternating, each in a store of its own."""
    data = flights_data(session)
    session.say(f"{NAME}: reading {data.path.name} ({data.rows} rows)")
    docs = documents(data)
    runs: list[dict[str, Any]] = []
    for k in range(session.repeat):
        rep: dict[str, Any] = {"order": [CONFIGS[(k + i) % len(CONFIGS)] for i in range(len(CONFIGS))]}
        for config in rep["order"]:
            session.say(f"{NAME}: {k + 1}/{session.repeat}: {config}, {len(docs)} documents")
            rep[config] = await _load(session, config, docs)
            session.say(f"{NAME}:   {rep[config]['docs_per_s']:,.0f} documents/s, "
                        f"{rep[config]['write_bytes_per_doc']:,.0f} B written per document")
        runs.append(rep)
    result.settings = {"file": data.path.name, "rows": data.rows, "write_batch_size": WRITE_BATCH_SIZE,
                       "indexes": [list(index.keys) for index in COPY_TARGET.indexes], "query": QUERY,
                       "tunings": {config: asdict(tuning) for config, tuning in TUNINGS.items()}}
    _figures(result, runs)
    result.runs = runs


def _ratios(runs: list[dict[str, Any]], config: str, key: str) -> list[float]:
    """``config / platform`` of ``key`` in each repetition (where the platform's is not zero)."""
    return [r[config][key] / r["platform"][key] for r in runs if r["platform"][key]]


FIGURES = [  # key in a run, label, unit
    ("docs_per_s", "documents/s", "documents/s"),
    ("store_cpu_us_per_doc", "store CPU per document", "µs"),
    ("write_bytes_per_doc", "write_bytes per document", "B"),
    ("wchar_per_doc", "wchar per document", "B"),
    ("disk_bytes_per_doc", "database files (.db and -wal) per document", "B"),
    ("query_s", "query by the first index (origin JFK) read to the end", "s"),
    ("scan_s", "full scan read to the end", "s"),
]
RATIOS = ("docs_per_s", "write_bytes_per_doc", "query_s")


def _figures(result: Result, runs: list[dict[str, Any]]) -> None:
    for key, label, unit in FIGURES:
        for config in CONFIGS:
            result.add(metric_from_runs(f"{config}_{key}", f"{config}: {label}", [r[config][key] for r in runs], unit))
        if key in RATIOS:
            for config in CONFIGS[1:]:
                result.add(metric_from_runs(f"ratio_{config}_{key}", f"{config} / platform, {label}",
                                            _ratios(runs, config, key), "", None, "median of the per-repetition ratios"))
    for config in CONFIGS:
        tuning, wchar = TUNINGS[config], median([r[config]["wchar_per_doc"] for r in runs])
        if wchar:
            pages = tuning.page_size * tuning.wal_autocheckpoint
            result.notes.append(
                f"{config}: a checkpoint every {tuning.wal_autocheckpoint:,} pages of {tuning.page_size:,} B is "
                f"{pages / 2**20:.1f} MiB of log, about {pages / wchar:,.0f} documents at {wchar:,.0f} B of wchar per "
                "document (page_size × wal_autocheckpoint / wchar per document; wchar also counts the checkpoints' "
                "copies into the database file, so the log holds somewhat more documents than that)")
