"""(12) Against the tools a user would otherwise pick: the same CSV loaded with pandas, pymongoarrow and the platform.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/peers.md``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bson import Int64, ObjectId

from bench.apps import COPY_TARGET
from bench.benchmarks.batch import FIRST_FILE_ROWS, WRITE_BATCH_SIZE, first_file, flights_data
from bench.cli import Session
from bench.data import DataFile
from bench.env import REPO
from bench.loads import (
    BATCH_SETTINGS,
    FLIGHTS_COLLECTION,
    BenchDaemon,
    BenchError,
    batch_profile,
    load_file,
)
from bench.peers.venv import LOAD_SCRIPT, PEERS_VENV, ensure_venv, requirements, versions
from bench.results import Result, Target, metric_from_runs

__all__ = ["NAME", "TITLE", "run", "LOADERS"]

NAME = "peers"
TITLE = "Against pandas and pymongoarrow"
TARGET = Target(">=", 1.0)
#: The three loaders; repetition k starts with the k-th (mod 3) and goes round.
LOADERS = ("pandas", "pymongoarrow", "mysimbdp")
PEERS = LOADERS[:2]
APP = "bench_copy"  # bench.apps: the batch app that returns each Arrow batch as read
PANDAS_BATCH = 1000  # documents per insert_many of the pandas load
IO_KEYS = ("write_bytes", "wchar")


def _order(k: int) -> list[str]:
    return [*LOADERS[k % 3:], *LOADERS[:k % 3]]


def _store_io(env: Any, before: dict[str, int] | None, rows: int) -> dict[str, Any]:
    """The store's I/O since ``before`` (``env.store_io()``), and its bytes per document."""
    after = env.store_io()
    delta = {k: after[k] - before[k] for k in after} if before and after else None
    out: dict[str, Any] = {"store_io": delta}
    for key in IO_KEYS:
        out[f"store_{key}_per_doc"] = round(delta[key] / rows, 1) if delta is not None and rows else None
    return out


def _share(cpu0: float | None, cpu1: float | None, seconds: float) -> float | None:
    return round((cpu1 - cpu0) / seconds, 3) if cpu0 is not None and cpu1 is not None and seconds > 0 else None


async def _indexes(collection: Any) -> dict[str, list[Any]]:
    """The collection's indexes but ``_id``: name -> keys."""
    return {name: list(info["key"]) for name, info in (await collection.index_information()).items()
            if name != "_id_"}


async def _peer(session: Session, python: Path, loader: str, k: int, data: DataFile) -> dict[str, Any]:
    """One load by a peer, in a child process of the peers' virtualenv, into a fresh database."""
    env = session.env
    collection = env.db(f"bench_peers_{env.run_id}_{loader}{k}")[FLIGHTS_COLLECTION]
    for index in COPY_TARGET.indexes:  # as the platform creates them (mysimbdp.store.writes)
        await collection.create_index(list(index.keys), unique=index.unique,
                                      **({"name": index.name} if index.name else {}))
    argv = [str(python), "-I", str(LOAD_SCRIPT), "--loader", loader, "--uri", env.mongo_uri,
            "--db", collection.database.name, "--collection", collection.name, "--csv", str(data.path),
            "--batch-size", str(PANDAS_BATCH)]
    io0, cpu0, t0 = env.store_io(), env.store_cpu(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), session.scale.timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"the {loader} load did not end within {session.scale.timeout_s:.0f}s") from None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"the {loader} load exited {proc.returncode}: {err.decode(errors='replace')[-600:]}")
    child = json.loads(out.decode().strip().splitlines()[-1])
    seconds, rows = float(child["seconds"]), int(child["rows"])
    # the store works for the child only between its clock's start and end: its CPU over the
    # whole child's life is its CPU during the load
    figures = {"store_cpu_share": _share(cpu0, env.store_cpu(), seconds), **_store_io(env, io0, rows)}
    count = await collection.count_documents({})
    if rows != data.rows or count != data.rows:
        raise BenchError(f"the {loader} load wrote {rows} rows and the collection holds {count}, of {data.rows}")
    return {"loader": loader, "rows": rows, "seconds": seconds, "records_per_s": round(rows / seconds, 1),
            "wall_seconds": round(wall, 3), "cpu_seconds": child["cpu_seconds"],
            "cpu_us_per_record": round(child["cpu_seconds"] / rows * 1e6, 2), "peak_rss_mb": child["peak_rss_mb"],
            **figures, "indexes": await _indexes(collection), "warnings": child["warnings"],
            "stderr": err.decode(errors="replace")[-600:] or None, "database": collection.database.name}


async def _platform(session: Session, daemon: BenchDaemon, tenant: str, data: DataFile) -> dict[str, Any]:
    """The small first file (starts the tenant's app worker, not measured), then ``data``."""
    env, timeout = session.env, session.scale.timeout_s
    first = await load_file(daemon, tenant, first_file(session), timeout)
    io0 = env.store_io()
    load = await load_file(daemon, tenant, data, timeout)
    figures = {"store_cpu_share": load.to_json()["store_cpu_share"], **_store_io(env, io0, load.records)}
    collection = env.db(f"tenant_{tenant}")[FLIGHTS_COLLECTION]
    return {"loader": "mysimbdp", "rows": load.records, "seconds": round(load.seconds, 4),
            "records_per_s": round(load.rate, 1), "wall_seconds": round(load.seconds, 3),
            "cpu_seconds": round(load.cpu_seconds, 4), "cpu_us_per_record": round(load.cpu_us_per_record, 2),
            "peak_rss_mb": round(load.peak_rss_mb, 1), **figures, "indexes": await _indexes(collection),
            "platform_seconds": round(load.platform_seconds, 3), "first_file": first.to_json(),
            "database": collection.database.name}


def _bson_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "bool"), (Int64, "long"), (int, "int"), (float, "double"), (str, "string"),
                       (datetime, "date"), (ObjectId, "objectId")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


async def _first_documents(session: Session, run: dict[str, Any], data: DataFile) -> dict[str, Any]:
    """The document of the file's first row in each loader's collection, and its field types."""
    with open(data.path, encoding="utf-8", newline="") as f:
        first = next(csv.DictReader(f))
    query = {"carrier": first["carrier"], "flight": int(first["flight"]), "origin": first["origin"],
             "month": int(first["month"]), "day": int(first["day"]), "sched_dep_time": int(first["sched_dep_time"])}
    out: dict[str, Any] = {}
    for loader in LOADERS:
        doc = await session.env.db(run[loader]["database"])[FLIGHTS_COLLECTION].find_one(query)
        out[loader] = {"document": doc, "types": {k: _bson_type(v) for k, v in (doc or {}).items()}}
    return out


def _type_differences(documents: dict[str, Any]) -> list[str]:
    """``field: type (loaders), type (loaders)`` for each field whose type is not the same for all."""
    fields = sorted({f for d in documents.values() for f in d["types"]}, key=lambda f: (f != "_id", f))
    lines = []
    for field in fields:
        kinds: dict[str, list[str]] = {}
        for loader, d in documents.items():
            kinds.setdefault(d["types"].get(field, "absent"), []).append(loader)
        if len(kinds) > 1:
            lines.append(f"`{field}` " + ", ".join(f"{kind} ({', '.join(who)})" for kind, who in kinds.items()))
    return lines


def _ratio(runs: Sequence[dict[str, Any]], peer: str) -> list[float]:
    return [r["mysimbdp"]["records_per_s"] / r[peer]["records_per_s"] for r in runs if r[peer]["records_per_s"]]


async def run(session: Session, result: Result) -> None:
    """The three loaders in every repetition, the order turning round, each into a fresh database."""
    env, data = session.env, flights_data(session)
    python, built_s = await ensure_venv(session.say)
    peer_versions = await versions(python)
    tenants = [env.new_tenant("pr") for _ in range(session.repeat)]
    profiles = [{**p, "batch": {**p["batch"], "app": APP}} for p in map(batch_profile, tenants)]
    runs: list[dict[str, Any]] = []
    async with BenchDaemon(env, NAME, tenants=profiles, batch=BATCH_SETTINGS, extra_apps={APP: "bench.apps"}) as daemon:
        for k, tenant in enumerate(tenants):
            rep: dict[str, Any] = {"order": _order(k)}
            for loader in rep["order"]:
                session.say(f"{NAME}: {k + 1}/{session.repeat}: {loader}, {data.rows} rows")
                rep[loader] = (await _platform(session, daemon, tenant, data) if loader == "mysimbdp"
                               else await _peer(session, python, loader, k, data))
                session.say(f"{NAME}:   {rep[loader]['records_per_s']:,.0f} records/s")
            if len({json.dumps(rep[loader]["indexes"], sort_keys=True) for loader in LOADERS}) != 1:
                raise BenchError(f"the collections are not indexed alike: { {x: rep[x]['indexes'] for x in LOADERS} }")
            if k == 0:
                rep["first_row_documents"] = await _first_documents(session, rep, data)
            for loader in LOADERS:
                await env.drop(rep[loader]["database"])
            runs.append(rep)
    result.settings = {"file": data.path.name, "rows": data.rows, "bytes": data.bytes, "loaders": list(LOADERS),
                       "pandas_batch_size": PANDAS_BATCH, "platform_write_batch_size": WRITE_BATCH_SIZE,
                       "platform_app": f"{APP} (bench.apps: the Arrow batch unchanged)",
                       "first_file_rows": FIRST_FILE_ROWS, "indexes": list(runs[0]["mysimbdp"]["indexes"]),
                       "peers_requirements": requirements(), "peers_versions": peer_versions,
                       "peers_venv": str(PEERS_VENV.relative_to(REPO)) if PEERS_VENV.is_relative_to(REPO)
                       else str(PEERS_VENV), **({"peers_venv_built_s": built_s} if built_s is not None else {})}
    _figures(result, runs)
    result.runs = runs


def _figures(result: Result, runs: list[dict[str, Any]]) -> None:
    for loader in LOADERS:
        result.add(metric_from_runs(f"{loader}_records_per_s", f"{loader}, records/s",
                                    [r[loader]["records_per_s"] for r in runs], "records/s"))
    for peer in PEERS:
        result.add(metric_from_runs(f"ratio_{peer}", f"mysimbdp / {peer}, records/s", _ratio(runs, peer), "", TARGET,
                                    "median of the per-repetition ratios"))
    for loader in LOADERS:
        result.add(metric_from_runs(f"cpu_us_per_record_{loader}", f"own CPU per record, {loader}" + (
            " (daemon + app worker)" if loader == "mysimbdp" else " (the child process)"),
            [r[loader]["cpu_us_per_record"] for r in runs], "µs"))
    for key, label, unit, scale in [
            ("store_cpu_{}_pct", "store CPU during the {} load", "% of a core", 100.0),
            ("store_write_bytes_per_doc_{}", "store write_bytes per document, {}", "B", 1.0),
            ("store_wchar_per_doc_{}", "store wchar per document, {}", "B", 1.0)]:
        field = {"store_cpu_{}_pct": "store_cpu_share"}.get(key, key.removesuffix("_{}"))
        for loader in LOADERS:  # the store's figures exist only for a store started by the run
            values = [scale * r[loader][field] for r in runs if r[loader][field] is not None]
            if values:
                result.add(metric_from_runs(key.format(loader), label.format(loader), values, unit))
    documents = runs[0].get("first_row_documents")
    if documents:
        differences = _type_differences(documents)
        if differences:
            result.notes.append("the first row's document, as read back from the store, differs by loader: "
                                + "; ".join(differences))
    for peer in PEERS:
        imported = max(r[peer]["warnings"]["import"]["count"] for r in runs)
        if imported:
            first = runs[0][peer]["warnings"]["import"]["first"][:1]
            result.notes.append(f"{peer} warned {imported} times on import, e.g. {first[0] if first else '?'}")
