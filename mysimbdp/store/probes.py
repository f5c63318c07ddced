"""Probes of where a store behaves differently from MongoDB.

The platform runs on any MongoDB and, without ``MYSIMBDP_MONGO_URI``, on the embedded
NX-27017 (SQLite). Analysts who query their data directly (pymongo, mongosh) can get other
answers from the embedded store than MongoDB would give. Each :class:`Probe` here asks one
such question of a store in a scratch collection and compares the answer with MongoDB's
documented one. ``mysimbdp store check`` runs them against whichever store is configured;
``tests/test_store_probes.py`` pins what the embedded store answers, so that a release of it
that fixes one is noticed. The README lists the differences.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bson.int64 import Int64
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

__all__ = ["Probe", "ProbeResult", "PROBES", "run_probes", "SCRATCH_PREFIX"]

#: Scratch collections are named ``<prefix><random>`` in the database the probes are given
#: and dropped at the end.
SCRATCH_PREFIX = "_store_check_"

Collection = AsyncCollection[dict[str, Any]]


@dataclass(frozen=True)
class Probe:
    """One question: ``ask`` answers it on a collection holding :data:`_DOCS`; ``mongodb`` is
    MongoDB's answer."""

    name: str
    question: str
    mongodb: str
    ask: Callable[[Collection], Awaitable[str]]


@dataclass(frozen=True)
class ProbeResult:
    """What the store answered, beside MongoDB's answer."""

    name: str
    question: str
    mongodb: str
    store: str

    @property
    def same(self) -> bool:
        """Whether the store answered as MongoDB does."""
        return self.store == self.mongodb

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {"probe": self.name, "question": self.question, "mongodb": self.mongodb, "store": self.store,
                "same": self.same}


#: ``x`` explicitly null (1), missing (2), an int32 (3), an int64 (4), a double (5).
_DOCS: list[dict[str, Any]] = [{"_id": 1, "x": None}, {"_id": 2}, {"_id": 3, "x": 5},
                               {"_id": 4, "x": Int64(2**40)}, {"_id": 5, "x": 2.5}]


def _ids(docs: list[dict[str, Any]]) -> str:
    return str(sorted(d["_id"] for d in docs))


async def _count_null(col: Collection) -> str:
    return str(await col.count_documents({"x": None}))


async def _find_null(col: Collection) -> str:
    return _ids([d async for d in col.find({"x": None})])


async def _ne_null(col: Collection) -> str:
    return _ids([d async for d in col.find({"x": {"$ne": None}})])


def _type(alias: str) -> Callable[[Collection], Awaitable[str]]:
    async def ask(col: Collection) -> str:
        return _ids([d async for d in col.find({"x": {"$type": alias}})])
    return ask


async def _distinct_id(col: Collection) -> str:
    return str(sorted(await col.distinct("_id")))


def _stored(value: float) -> Callable[[Collection], Awaitable[str]]:
    async def ask(col: Collection) -> str:
        await col.insert_one({"_id": "special", "x": value})
        found = await col.find_one({"_id": "special"})
        got = found.get("x") if found else None
        return "stored as NaN" if isinstance(got, float) and math.isnan(got) else f"stored as {got!r}"
    return ask


PROBES: tuple[Probe, ...] = (
    Probe("count_null", "count_documents({'x': None}) of [x: null, no x, 5, 2**40, 2.5]", "2", _count_null),
    Probe("find_null", "find({'x': None}) ids", "[1, 2]", _find_null),
    Probe("ne_null", "find({'x': {'$ne': None}}) ids", "[3, 4, 5]", _ne_null),
    Probe("type_int", "find({'x': {'$type': 'int'}}) ids", "[3]", _type("int")),
    Probe("type_long", "find({'x': {'$type': 'long'}}) ids", "[4]", _type("long")),
    Probe("type_double", "find({'x': {'$type': 'double'}}) ids", "[5]", _type("double")),
    Probe("distinct_id", "distinct('_id')", "[1, 2, 3, 4, 5]", _distinct_id),
    Probe("nan", "insert a document holding a NaN double", "stored as NaN", _stored(math.nan)),
    Probe("infinity", "insert a document holding an infinite double", "stored as inf", _stored(math.inf)),
)


def _first_words(exc: PyMongoError) -> str:
    """The error's message without pymongo's ``, full error: {...}`` tail."""
    return str(exc).split(", full error")[0].splitlines()[0][:160] if str(exc) else ""


async def run_probes(db: AsyncDatabase[dict[str, Any]],
                     probes: tuple[Probe, ...] = PROBES) -> list[ProbeResult]:
    """Ask every probe in its own scratch collection of ``db`` (dropped afterwards). A probe the
    store refuses answers ``refused: <error>``."""
    results = []
    for probe in probes:
        col = db[f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"]
        try:
            await col.insert_many([dict(d) for d in _DOCS])
            answer = await probe.ask(col)
        except PyMongoError as exc:
            answer = f"refused: {type(exc).__name__}: {_first_words(exc)}"
        finally:
            try:
                await col.drop()
            except PyMongoError:
                pass
        results.append(ProbeResult(probe.name, probe.question, probe.mongodb, answer))
    return results
