"""The schema history (``mysimbdp.store.schemas``) against the real store: a hostile tenant's
field names are kept as values, cut, bounded, and recorded once."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from mysimbdp.store.contracts import MAX_FIELDS, MAX_NAME, Contract, check_document
from mysimbdp.store.schemas import SchemaHistory


class _Store:
    """The store as the history uses it: a platform database of the test's own."""

    def __init__(self, db: Any) -> None:
        self.platform_db = db


async def test_hostile_field_names_are_values_cut_bounded_and_recorded_once(
        mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str) -> None:
    db_name = f"test_schemas_{tenant_id}"
    history = SchemaHistory(store=_Store(mongo[db_name]))
    contract = Contract(on_violation="evolve", fields={"id": "int"})
    long_name = "x" * 1000
    doc = {"id": 1, "$where": "sleep(1000)", "a.b": 2, long_name: True, "": 0.5, "\u0000nul": None}
    checked = check_document(contract, doc)
    assert checked.document is not None
    evolved = {name: {kind} for name, kind in checked.evolved.items()}
    assert long_name[:MAX_NAME] in evolved and long_name not in evolved
    try:
        await history.record(tenant_id, "batch", evolved, "f.jsonl", contract.fields)
        stored = await mongo[db_name]["schemas"].find_one({"_id": f"{tenant_id}:batch"})
        assert stored is not None and stored["version"] == 1
        # names are values of "name" and "field", never keys: "$where" and "a.b" stay as they came
        assert set(stored) == {"_id", "tenant", "scope", "version", "fields", "history", "updated_at"}
        names = {f["name"] for f in stored["fields"]}
        assert {"$where", "a.b", long_name[:MAX_NAME]} <= names and all(len(n) <= MAX_NAME for n in names)
        assert {h["field"] for h in stored["history"]} == names
        # the same fields again: nothing new, no new version
        await history.record(tenant_id, "batch", evolved, "g.jsonl", contract.fields)
        again = await mongo[db_name]["schemas"].find_one({"_id": f"{tenant_id}:batch"})
        assert again is not None and again["version"] == 1 and len(again["history"]) == len(stored["history"])
        # a flood of new fields: the schema stops at MAX_FIELDS names
        flood = {f"f{i}": {"int"} for i in range(MAX_FIELDS + 100)}
        await history.record(tenant_id, "batch", flood, "h.jsonl", contract.fields)
        bounded = await mongo[db_name]["schemas"].find_one({"_id": f"{tenant_id}:batch"})
        assert bounded is not None and len(bounded["fields"]) == MAX_FIELDS
    finally:
        await mongo.drop_database(db_name)
