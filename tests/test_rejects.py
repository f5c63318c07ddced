"""The one ``_rejects`` schema (``mysimbdp.store.rejects``): the same keys for a file's rejects
and a message's, record numbers and raw input apart, nothing dropped silently."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mysimbdp import tenants
from mysimbdp.config import Settings
from mysimbdp.store.rejects import FIELDS, REJECTS, reject_document
from mysimbdp.store.writes import RejectsRefused, RetryPolicy, write_rejects
from tests.batch_support import drop, wait_outcome
from tests.harness.wait import await_until
from tests.plugins.stream_support import ECHO_APPS, publish_raw, wait_consumers

Db = AsyncMongoClient[dict[str, Any]]
APPS = {"batch_plain": "tests.plugins.batch_apps", **ECHO_APPS}


async def test_batch_and_stream_rejects_have_the_same_keys(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], mongo: Db,
        amqp_url: str, tenant_id: str) -> None:
    """One tenant, a file with a malformed row and a message that is not JSON: both rejects
    have every key of the schema; the file's keeps its row number and raw line apart."""
    settings = settings_factory(extra_apps=APPS)
    tenants.write_profile(settings.tenants_dir, {
        "id": tenant_id, "batch": {"app": "batch_plain", "max_error_rate": 0.9},
        "stream": {"app": "stream_echo", "prefetch": 10, "batch_max_messages": 10, "batch_max_wait_ms": 50}})
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant_id, 1)
    drop(settings, tenant_id, "mixed.csv", "n,name\n1,a\n2,b,extra\n3,c\n")
    [entry] = await wait_outcome(mongo, tenant_id, "mixed.csv")
    assert entry["state"] == "committed"
    await publish_raw(amqp_url, tenant_id, [b"{not json"], ["nj"])
    rejects = mongo[f"tenant_{tenant_id}"][REJECTS]

    async def both() -> bool:
        return await rejects.count_documents({}) == 2
    await await_until(both, what="a file's reject and a message's")
    by_source = {doc["source"]: doc async for doc in rejects.find({})}
    assert set(by_source) == {"file", "stream"}
    file_reject, stream_reject = by_source["file"], by_source["stream"]
    assert list(file_reject) == list(stream_reject) == list(FIELDS)
    assert (file_reject["record_number"], file_reject["raw"], file_reject["kind"]) == (2, "2,b,extra", "parse")
    assert file_reject["record"] is None and file_reject["tenant"] == tenant_id and file_reject["message_id"] is None
    assert (stream_reject["kind"], stream_reject["raw"], stream_reject["message_id"]) == ("malformed", "{not json", "nj")
    assert stream_reject["record_number"] is None and stream_reject["file"] is None


def test_reject_document_has_every_key_and_refuses_unknown_ones() -> None:
    at = datetime.now(UTC)
    doc = reject_document(id="x:1", source="file", kind="parse", reason="r" * 5000, tenant="t", app="a", at=at,
                          record_number=1, raw="line")
    assert list(doc) == list(FIELDS) and len(doc["reason"]) == 2000 and doc["message_id"] is None
    with pytest.raises(TypeError, match="stage"):
        reject_document(id="x:1", source="file", kind="parse", reason="", tenant="t", app="a", at=at, stage="parse")


async def test_a_reject_the_store_refuses_goes_again_without_its_raw_input(mongo: Db, tenant_id: str) -> None:
    """A reject over the 16 MiB limit is written without ``record`` and ``raw``, saying why."""
    db = mongo[f"tenant_{tenant_id}"]
    at = datetime.now(UTC)
    huge = reject_document(id="stream:big", source="stream", kind="rejected", reason="too big to keep", tenant="t",
                           app="a", at=at, record={"x": "y" * (17 * 1024 * 1024)}, raw="z")
    small = reject_document(id="stream:small", source="stream", kind="rejected", reason="fine", tenant="t",
                            app="a", at=at, raw="{}")
    await write_rejects(db, [huge, small], RetryPolicy())
    kept = await db[REJECTS].find_one({"_id": "stream:big"})
    assert kept is not None and kept["record"] is None and kept["raw"] is None
    assert "16777216" in kept["dropped"] and kept["reason"] == "too big to keep" and list(kept) == list(FIELDS)
    assert (await db[REJECTS].find_one({"_id": "stream:small"}) or {}).get("raw") == "{}"


async def test_a_reject_the_store_refuses_even_slimmed_is_an_error_not_a_loss(mongo: Db, tenant_id: str) -> None:
    db = mongo[f"tenant_{tenant_id}"]
    unkeepable = reject_document(id="stream:r", source="stream", kind="rejected", reason="x" * 100, tenant="t",
                                 app="a", at=datetime.now(UTC), routing_key="k" * (17 * 1024 * 1024))
    with pytest.raises(RejectsRefused, match="even without their records"):
        await write_rejects(db, [unkeepable], RetryPolicy())


def test_a_workers_reject_is_conformed_to_the_schema() -> None:
    """Rejects made in an app's worker keep only the schema's keys; whose they are is the platform's say."""
    from mysimbdp.store.rejects import conform

    told = {"_id": "stream:m1", "kind": "rejected", "reason": "r" * 3000, "tenant": "someone-else", "extra": 1}
    doc = conform(told, source="stream", tenant="t", app="a")
    assert list(doc) == list(FIELDS) and doc["tenant"] == "t" and doc["_id"] == "stream:m1"
    assert "extra" not in doc and len(doc["reason"]) == 2000
